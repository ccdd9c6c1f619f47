"""MicroCinema's temporal interpolation (x4 frame rate, section 3.1): the condition the interpolation model is fed
and how its clips are joined with the base frames.

The interpolation model generates 5-frame clips at 8 fps between two adjacent base frames (2 fps); AppearNet gets
the latents linearly interpolated between the two (:func:`interpolation_condition`), and the clips' three middle
frames go between the pair (:func:`join_clips`): 9 base frames -> 33.
"""

from __future__ import annotations

import torch
from einops import rearrange

#: 5-frame interpolation clips: 3 new frames between each pair of base frames.
INTERPOLATION_FACTOR = 4


def interpolation_condition(first: torch.Tensor, last: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The interpolation model's condition: latents linearly interpolated from ``first`` to ``last`` (section 3.1)."""
    w = torch.linspace(0, 1, num_frames, device=first.device, dtype=first.dtype).view(1, 1, -1, 1, 1)
    return (1 - w) * first.unsqueeze(2) + w * last.unsqueeze(2)


def join_clips(latents: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """Base latents (B, C, F, h, w) and the interpolation model's clips ((B (F - 1)), C, 5, h, w) between each
    adjacent pair -> (B, C, 4 (F - 1) + 1, h, w): the base frames, and the clips' three middle frames between."""
    middle = rearrange(clips[:, :, 1:-1], "(b f) c m h w -> b c f m h w", b=latents.shape[0])
    pieces = []
    for k in range(latents.shape[2] - 1):
        pieces += [latents[:, :, k:k + 1], middle[:, :, k]]
    pieces.append(latents[:, :, -1:])
    return torch.cat(pieces, dim=2)


def clip_starts(num_joined_frames: int) -> range:
    """First frame of each interpolation clip in a joined video of ``num_joined_frames`` frames."""
    return range(0, num_joined_frames - 1, INTERPOLATION_FACTOR)


__all__ = ["INTERPOLATION_FACTOR", "clip_starts", "interpolation_condition", "join_clips"]
