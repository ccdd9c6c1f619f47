"""Shared test fixtures. Tests never touch the network: the hub is set offline before any HF import,
and sockets may only connect to loopback addresses (a test that tries anything else fails loudly)."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import ipaddress  # noqa: E402
import socket  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex


def _check_address(sock: socket.socket, address) -> None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    host = str(address[0])
    try:
        local = ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        local = host == "localhost"
    if not local:
        raise RuntimeError(f"tests must not use the network (tried to connect to {address!r})")


def _guarded_connect(self, address):
    _check_address(self, address)
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    _check_address(self, address)
    return _real_connect_ex(self, address)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory) -> Path:
    """A tiny random ``StableDiffusionPipeline`` (SD 2.1 layout) saved as a diffusers folder."""
    from microcinema.testing import make_tiny_sd_pipeline

    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd") / "sd21", sd21_layout=True)


@pytest.fixture(scope="session")
def tiny_sd15_path(tmp_path_factory) -> Path:
    """The same with SD 1.x's U-Net layout (conv projections, scalar ``attention_head_dim``)."""
    from microcinema.testing import make_tiny_sd_pipeline

    return make_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny_sd") / "sd15", sd21_layout=False)


@pytest.fixture(scope="session")
def minilm_encoder():
    """The real pretrained all-MiniLM-L6-v2 encoder, loaded once (shared: its cache persists across
    tests, so call ``clear_cache()`` before counting computations)."""
    from microcinema.core.text_encoders import MiniLMTextEncoder

    return MiniLMTextEncoder()
