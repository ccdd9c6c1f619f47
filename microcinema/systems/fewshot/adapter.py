"""The few-shot adapter file: only the trained parameters, with the metadata to use them (DESIGN.md section 7).

One safetensors file holding exactly :meth:`~microcinema.systems.fewshot.inflation.FewShotVideoUNet.
trainable_state_dict` (section 3.2's parameters: a few MB for the embedded base) and, in the safetensors
header's string metadata, :class:`AdapterMetadata` as JSON under the key ``"microcinema_fewshot"`` (plus a few
flat keys for tools that only list metadata): the base model (name and fingerprint, see
:mod:`microcinema.systems.fewshot.base`), the frames, size and fps it was tuned at, the attention kind, the noise
prior and its alpha, the steps and learning rate, the captions. Written atomically.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from microcinema.core.errors import MicroCinemaError, check

#: The safetensors metadata key that marks an adapter and holds its metadata as JSON.
METADATA_KEY = "microcinema_fewshot"
ADAPTER_FORMAT = "microcinema-fewshot-adapter"
ADAPTER_VERSION = 1


@dataclass
class AdapterMetadata:
    """What an adapter was tuned on and how (all JSON-serialisable)."""

    base: str  # "embedded" or the base folder as given
    base_fingerprint: str
    attention: str
    num_frames: int
    height: int
    width: int
    fps: float
    noise: str
    noise_alpha: float
    steps: int
    memory_nonlinearity: str = "tanh"
    learning_rate: float | None = None
    batch_size: int | None = None
    ema_decay: float | None = None
    seed: int | None = None
    prediction_type: str = "epsilon"
    num_clips: int | None = None
    captions: list[str] = field(default_factory=list)
    trainable_parameters: int | None = None
    created: str = ""
    format: str = ADAPTER_FORMAT
    version: int = ADAPTER_VERSION

    def describe(self) -> str:
        """One line: what the adapter is for."""
        return (f"{self.attention} attention, {self.num_frames} frames at {self.fps:g} fps, {self.height}x{self.width}, "
                f"{self.noise} noise (alpha {self.noise_alpha:g}), {self.steps} steps on base {self.base} "
                f"[{self.base_fingerprint}]")


def save_adapter(path: str | os.PathLike, state_dict: dict[str, Tensor], metadata: AdapterMetadata,
                 dtype: torch.dtype | None = None) -> Path:
    """Write the adapter (``state_dict``'s tensors, cast to ``dtype`` when given) atomically; returns the path."""
    from safetensors.torch import save_file

    path = Path(path)
    check(path.suffix == ".safetensors", f"an adapter is a .safetensors file, got {path}")
    check(bool(state_dict), "the adapter has no parameters")
    if not metadata.created:
        metadata.created = time.strftime("%Y-%m-%d %H:%M:%S")
    tensors = {k: (v.detach().to("cpu", dtype) if dtype is not None and v.is_floating_point() else v.detach().cpu())
               .contiguous() for k, v in state_dict.items()}
    header = {METADATA_KEY: json.dumps(asdict(metadata)), "format": "pt", "base": metadata.base,
              "base_fingerprint": metadata.base_fingerprint, "attention": metadata.attention}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        os.chmod(tmp, 0o644)  # a file to share, not a private one
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise MicroCinemaError(f"cannot write the adapter {path}: {error.strerror or error}") from None
    return path


def read_adapter_metadata(path: str | os.PathLike) -> AdapterMetadata:
    """The metadata of an adapter file (reads the header only)."""
    from safetensors import safe_open

    path = Path(path)
    check(path.is_file(), f"adapter not found: {path} (give a .safetensors file written by microcinema fewshot train)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except Exception as error:  # safetensors raises its own error types for a file that is not safetensors
        raise MicroCinemaError(f"{path} is not a safetensors file ({str(error).splitlines()[0] if str(error) else type(error).__name__}); "
                               "give an adapter written by microcinema fewshot train") from None
    check(METADATA_KEY in header, f"{path} is a safetensors file but not a few-shot adapter (no '{METADATA_KEY}' "
                                  "metadata); give an adapter written by microcinema fewshot train")
    try:
        raw = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError:
        raise MicroCinemaError(f"{path}: the adapter metadata is not valid JSON") from None
    check(isinstance(raw, dict), f"{path}: the adapter metadata is not a JSON object")
    known = {f.name for f in fields(AdapterMetadata)}
    try:
        version: int | None = int(raw.get("version", 0))
    except (TypeError, ValueError, OverflowError):  # not a number: no version this microcinema reads
        version = None
    check(raw.get("format") == ADAPTER_FORMAT and version is not None and version <= ADAPTER_VERSION,
          f"{path}: adapter format {raw.get('format')!r} version {raw.get('version')!r} is not one this microcinema "
          f"reads ({ADAPTER_FORMAT} <= {ADAPTER_VERSION})")
    try:
        return AdapterMetadata(**{k: v for k, v in raw.items() if k in known})
    except TypeError as error:
        raise MicroCinemaError(f"{path}: incomplete adapter metadata ({error})") from None


def load_adapter(path: str | os.PathLike) -> tuple[dict[str, Tensor], AdapterMetadata]:
    """``(state_dict, metadata)`` of an adapter file."""
    from safetensors.torch import load_file

    metadata = read_adapter_metadata(path)
    return load_file(str(path)), metadata


def check_adapter_fits(metadata: AdapterMetadata, fingerprint: str, base_name: str, *,
                       height: int | None = None, width: int | None = None, source: str = "the adapter") -> None:
    """One-line errors for an adapter used on another base (fingerprint) or at another size than it was tuned at."""
    check(metadata.base_fingerprint == fingerprint,
          f"{source} was tuned on base {metadata.base!r} (fingerprint {metadata.base_fingerprint}), not on "
          f"{base_name!r} (fingerprint {fingerprint}); load it onto its own base model")
    for name, want, got in (("height", metadata.height, height), ("width", metadata.width, width)):
        check(got is None or got == want,
              f"{source} was tuned at {metadata.height}x{metadata.width} pixels, not at {name} {got}; "
              f"generate at {metadata.height}x{metadata.width}")


def adapter_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Metadata, size on disk and parameter count of an adapter file (for a CLI's listing)."""
    state, metadata = load_adapter(path)
    return {**asdict(metadata), "file_bytes": Path(path).stat().st_size,
            "parameters": int(sum(v.numel() for v in state.values())), "tensors": len(state)}


__all__ = ["ADAPTER_FORMAT", "ADAPTER_VERSION", "METADATA_KEY", "AdapterMetadata", "adapter_summary",
           "check_adapter_fits", "load_adapter", "read_adapter_metadata", "save_adapter"]
