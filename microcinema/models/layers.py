"""Small building blocks shared by the video models: zero initialisation and sinusoidal frame positions."""

from __future__ import annotations

import math

import torch
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the last layer of a residual branch) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def gcd_groups(channels: int, groups: int) -> int:
    """The largest GroupNorm group count <= ``groups`` that divides ``channels``' (their gcd)."""
    return math.gcd(channels, groups)


def frame_position_encoding(num_frames: int, channels: int, device: torch.device, dtype: torch.dtype,
                            centred: bool = False) -> torch.Tensor:
    """Sinusoidal encoding ``(F, C)`` of the frame index (the transformer's, as for timesteps); ``centred``:
    of the offset from the centre frame, ``i - (F - 1) / 2`` (0 for the key frame and for images)."""
    positions = torch.arange(num_frames, device=device, dtype=torch.float32)
    if centred:
        positions = positions - (num_frames - 1) / 2
    return get_timestep_embedding(positions, channels, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype)
