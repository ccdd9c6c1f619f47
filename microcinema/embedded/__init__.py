"""The embedded tiny model family: weights shipped in the package, the configs that trained them, and the
saved pipeline settings (:mod:`microcinema.embedded.presets`) that switch on the family's own tricks.

``weights/<name>/`` holds each model as a diffusers folder (fp16 safetensors) with ``training.json`` (the exact
command, config and evaluation numbers); ``configs/<name>.yaml`` is the one config that reproduces it.
"""

from __future__ import annotations

from pathlib import Path

from microcinema.core.errors import MicroCinemaError

EMBEDDED_DIR = Path(__file__).resolve().parent
#: Shipped weights of the embedded tiny family (diffusers folder layout, fp16 safetensors).
WEIGHTS_DIR = EMBEDDED_DIR / "weights"
#: One training config per shipped model (``microcinema train NAME --config NAME``).
CONFIG_DIR = EMBEDDED_DIR / "configs"


def embedded_path(name: str) -> Path:
    """Folder of a shipped model (``vae``, ``t2i``, ...); a clear error if it is not in this install."""
    path = WEIGHTS_DIR / name
    if not (path / "config.json").exists():
        raise MicroCinemaError(f"the embedded {name!r} weights are missing from {WEIGHTS_DIR}; "
                               f"train them with `microcinema train {name} --config {name} --export {path}` or pass a model path")
    return path
