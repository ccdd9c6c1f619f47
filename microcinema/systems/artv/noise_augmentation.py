"""Noise augmentation of the conditioning frames (ART-V, section 3.3).

In training the references and the anchor are corrupted by the forward process (DDPM, the paper's eq. 3) at a
level ``s`` drawn uniformly from the integers ``[0, T_max]`` (``T_max = 550``); at inference a fixed level
``t_test = 200`` is used. The level is a condition of the network: its embedding is added to the timestep
embedding (``UNet2DConditionModel(class_embed_type="timestep")`` with ``class_labels = s``, see
:class:`~microcinema.systems.artv.model.ARTVModel`). One level per sample, shared by the references and the
anchor (the network sees one level embedding). Level 0 is the schedule's first step, not an exactly clean
frame (``sqrt(abar_0) ~ 0.9996``).

Pure functions: randomness comes in through a ``generator`` or as explicit noise tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from microcinema.core.diffusion import add_noise, alphas_cumprod_of
from microcinema.core.errors import check

__all__ = ["MAX_TRAIN_LEVEL", "INFERENCE_LEVEL", "sample_levels", "inference_levels", "check_levels", "augment"]

#: ``T_max``: the highest training corruption level (section 3.3).
MAX_TRAIN_LEVEL = 550
#: ``t_test``: the corruption level at inference (section 3.3, validated by the paper's ablation in 4.2).
INFERENCE_LEVEL = 200


def sample_levels(batch_size: int, generator: torch.Generator | None = None, max_level: int = MAX_TRAIN_LEVEL,
                  device: torch.device | str | None = None) -> Tensor:
    """Training levels: ``batch_size`` integers uniform in ``[0, max_level]`` (both ends included), drawn from
    ``generator`` on its device (torch's global RNG without one), moved to ``device``."""
    check(isinstance(max_level, int) and max_level >= 0, f"max_level must be an integer >= 0, got {max_level!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    levels = torch.randint(0, max_level + 1, (batch_size,), generator=generator, device=gen_device)
    return levels.to(device) if device is not None else levels


def inference_levels(batch_size: int, level: int = INFERENCE_LEVEL, device: torch.device | str | None = None) -> Tensor:
    """The fixed inference level for a batch: ``(batch_size,)`` long tensor of ``level``."""
    check(isinstance(level, int) and not isinstance(level, bool) and level >= 0,
          f"reference noise level must be an integer >= 0, got {level!r}")
    return torch.full((batch_size,), level, dtype=torch.long, device=device)


def check_levels(levels: Tensor, batch_size: int, num_train_timesteps: int) -> Tensor:
    """``levels`` as a ``(batch_size,)`` long tensor (a scalar is broadcast), each in ``[0, T)``."""
    levels = torch.as_tensor(levels)
    if levels.ndim == 0:
        levels = levels.expand(batch_size)
    check(levels.shape == (batch_size,), f"ref_level must be a scalar or have shape ({batch_size},), "
          f"got {tuple(levels.shape)}")
    check(not levels.is_floating_point() or bool((levels == levels.round()).all()),
          "ref_level must hold integer noise levels")
    levels = levels.long()
    check(bool(((levels >= 0) & (levels < num_train_timesteps)).all()),
          f"ref_level must lie in [0, {num_train_timesteps}), got {levels.tolist()}")
    return levels


def augment(latents: Tensor, levels: Tensor, noise: Tensor, alphas_cumprod: Any = None) -> Tensor:
    """Corrupt ``latents`` (any rank, batch first) at per-sample ``levels`` with ``noise``:
    ``sqrt(abar_s) y + sqrt(1 - abar_s) noise`` (the forward process, eq. 3). ``alphas_cumprod``: the
    schedule (a scheduler or its ``alphas_cumprod``; default SD's)."""
    ac = alphas_cumprod_of(alphas_cumprod)
    levels = check_levels(levels, latents.shape[0], ac.numel())
    return add_noise(latents, noise, levels.to(latents.device), ac)
