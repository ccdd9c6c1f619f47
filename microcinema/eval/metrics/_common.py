"""Plumbing shared by the feature extractors: weights from a local file, user inputs to float tensors.

Pixel conventions (the project's, see :func:`microcinema.core.video_io.to_uint8_frames`): ``uint8`` arrays are
channels-last (``(..., H, W, 3)``, numpy or torch); floating tensors are channels-first
(``(..., 3, H, W)``) with values in ``[-1, 1]``. Everything handed to a network is float ``[-1, 1]``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microcinema.core.errors import MicroCinemaError, check

PathLike = Union[str, os.PathLike]
ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray], Sequence[torch.Tensor]]
#: One clip (4-D), a batch of clips (5-D) or a list of clips (lengths may differ).
Clips = ArrayLike

WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


# --------------------------------------------------------------------------------------------- weights


def resolve_weights(weights: PathLike | None, allow_random: bool, what: str, expected: str) -> Path | None:
    """The weights file to load, or ``None`` for a random network (only with ``allow_random=True``)."""
    if weights is None:
        check(allow_random, f"{what}: no weights given; pass weights=<path to {expected}> "
                            f"(random weights only with allow_random=True, for tests)")
        return None
    path = Path(weights).expanduser()
    check(path.is_file(), f"{what}: weights file {path} not found; need {expected}")
    check(path.suffix.lower() in WEIGHT_SUFFIXES,
          f"{what}: {path.name} is not a state dict file; need {expected} ({', '.join(WEIGHT_SUFFIXES)})")
    return path


def load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    """A ``name -> tensor`` dict from ``.safetensors`` or a torch pickle (loaded with ``weights_only=True``).

    A checkpoint that wraps the weights (``{"state_dict": ...}`` or ``{"model": ...}``) is unwrapped and a
    ``module.`` prefix (DataParallel) is dropped.
    """
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, a full pickled model, a TorchScript archive, ...
        raise MicroCinemaError(f"{what}: cannot read weights {path}: {type(exc).__name__}: {exc}") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    check(isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()),
          f"{what}: {path} does not hold a state dict (a mapping of parameter names to tensors)")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def load_into(model: nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    """Load ``state`` into ``model``; every parameter must be there with the right shape.

    BatchNorm's ``num_batches_tracked`` counters (absent from older exports) are not required.
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
             for k in own if k in state and state[k].shape != own[k].shape]

    def head(names: list[str]) -> str:
        return ", ".join(names[:3]) + (f" (+{len(names) - 3} more)" if len(names) > 3 else "")

    problems = [f"{label}: {head(names)}" for label, names in
                (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if names]
    check(not problems, f"{what}: {path} does not match the architecture; " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def random_init(model: nn.Module, seed: int) -> None:
    """Deterministic variance-preserving random weights (He init; BatchNorm at identity), for tests.

    PyTorch's default conv init shrinks activations layer by layer, which in a 50-layer network leaves
    features at float round-off scale; He-normal keeps them O(1) so distances between feature sets mean
    something even without trained weights.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
                if module.bias is not None:
                    module.bias.zero_()


def default_device(device: str | torch.device | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --------------------------------------------------------------------------------------------- inputs


def stack_batch(x: ArrayLike, what: str) -> np.ndarray | torch.Tensor:
    """A list/tuple of equally shaped clips or images stacked into one array; arrays pass through."""
    if isinstance(x, (list, tuple)):
        check(len(x) > 0, f"{what}: got an empty list")
        shapes = {tuple(item.shape) for item in x}
        check(len(shapes) == 1, f"{what}: items of a list must share one shape, got {sorted(shapes)}")
        return torch.stack(list(x)) if isinstance(x[0], torch.Tensor) else np.stack(x)
    return x


def check_pixels(x: ArrayLike, lead: str, what: str) -> np.ndarray | torch.Tensor:
    """Validate a batch of pixels: ``uint8 (lead..., H, W, 3)`` or float torch ``(lead..., 3, H, W)``.

    ``lead`` names the leading dims, e.g. ``"N, T"`` for videos or ``"N"`` for images. Returns the
    (stacked) batch unconverted, so callers can convert it chunk by chunk with :func:`to_float`.
    """
    ndim = len(lead.split(",")) + 3
    allowed = f"uint8 ({lead}, H, W, 3) numpy/torch or float torch ({lead}, 3, H, W) in [-1, 1]"
    x = stack_batch(x, what)
    check(isinstance(x, (np.ndarray, torch.Tensor)), f"{what}: got {type(x).__name__}; allowed: {allowed}")
    if isinstance(x, torch.Tensor) and x.is_floating_point():
        check(x.ndim == ndim and x.shape[-3] == 3,
              f"{what}: float tensor of shape {tuple(x.shape)}; allowed: {allowed}")
    else:
        check(x.dtype in (np.uint8, torch.uint8) and x.ndim == ndim and x.shape[-1] == 3,
              f"{what}: {x.dtype} array of shape {tuple(x.shape)}; allowed: {allowed}")
    check(min(x.shape) > 0, f"{what}: empty batch of shape {tuple(x.shape)}")
    return x


def to_float(chunk: np.ndarray | torch.Tensor, what: str) -> torch.Tensor:
    """A chunk of a checked batch as float32 channels-first ``(..., 3, H, W)`` in ``[-1, 1]``."""
    if isinstance(chunk, torch.Tensor) and chunk.is_floating_point():
        x = chunk.detach().to("cpu", torch.float32)
        check(bool(torch.isfinite(x).all()) and float(x.abs().max()) <= 2.0,
              f"{what}: float pixels must be in [-1, 1] (got NaN/inf or range "
              f"{x.min().item():.3g}..{x.max().item():.3g}; 0..255 data must be uint8)")
        return x.clamp(-1, 1)
    x = torch.as_tensor(np.asarray(chunk)) if isinstance(chunk, np.ndarray) else chunk.cpu()
    return rearrange(x.float() / 127.5 - 1.0, "... h w c -> ... c h w").contiguous()


def clip_list(videos: Clips) -> list[np.ndarray | torch.Tensor]:
    """One clip (4-D), a batch (5-D) or a list of clips as a list of clips (each checked by its user)."""
    if isinstance(videos, (np.ndarray, torch.Tensor)):
        check(videos.ndim in (4, 5), f"videos: need one clip (4-D) or a batch (5-D), got shape {tuple(videos.shape)}")
        return [videos] if videos.ndim == 4 else list(videos)
    check(isinstance(videos, (list, tuple)) and len(videos) > 0,
          "videos: need a clip, a batch or a non-empty list of clips")
    return list(videos)


def resize_short_side_center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(B, C, H, W)`` so the shorter side is ``size``, then the central ``size x size``.

    Bilinear without antialiasing (as the FVD reference's ``tf.image.resize_bilinear``), with PyTorch's
    half-pixel centres (``align_corners=False``, as the PyTorch FVD ports; TF1's legacy resize samples
    without them, a sub-pixel difference). For square inputs this is the reference's plain resize.
    """
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False)
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[..., top:top + size, left:left + size]


def chunks(n: int, batch_size: int) -> list[slice]:
    check(batch_size >= 1, f"batch_size must be >= 1, got {batch_size}")
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def progress(items: Sequence, desc: str, unit: str = "batch"):
    """A progress bar over ``items`` (closed when done); silent for a single item."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit, leave=False, disable=len(items) < 2)
