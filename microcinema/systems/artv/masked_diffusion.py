"""The Masked Diffusion Model (ART-V, section 3.2, eq. 5-7).

The noise prediction is split into a *static* part, computed from the reference frame without any network,
and a *dynamic* part, predicted by the main network; a second, small network predicts a one-channel mask
``m`` in ``[0, 1]`` that mixes them (eq. 7)::

    eps_hat = m * eps_static + (1 - m) * eps_dynamic

The paper approximates the static noise as ``y_ref - y_t``; we use the exact form (DESIGN.md, ART-V)::

    eps_static = (y_t - sqrt(abar_t) * y_ref) / sqrt(1 - abar_t)

under which ``m = 1`` reproduces the reference: the clean sample implied by ``eps_static``,
``(y_t - sqrt(1 - abar_t) eps_static) / sqrt(abar_t)``, is ``y_ref`` exactly.

The mask network here (:func:`make_mask_unet`) is a diffusers ``UNet2DModel`` on the channel concatenation
of the noisy latent and the references (the previous frame, whose copy the static noise is, and the one
before, so that it can see where things move), with the timestep through its time embedding; its last conv
is zero-initialised with bias ``init_bias`` (``m = sigmoid(init_bias)`` everywhere at the start; the paper's
network is randomly initialised). The paper's mask network is its noise network's architecture at smaller
width (Table 2: 64 vs 320 channels), also fed the text and anchor; ours sees no text or anchor: the mask
says *where* the reference can be copied, a local decision.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from torch import Tensor

from microcinema.core.diffusion import alphas_cumprod_of, append_dims, sigmas_from_alphas_cumprod
from microcinema.core.errors import check

__all__ = ["alphas_cumprod_at", "static_noise", "combine", "x0_from_eps", "default_mask_channels",
           "make_mask_unet", "predict_mask"]


def alphas_cumprod_at(t: Tensor | float, alphas_cumprod: Any = None) -> Tensor:
    """``abar`` at (possibly fractional) timesteps ``t`` (float64, on ``t``'s device, ``t``'s shape).

    Integer steps read the schedule; between steps ``sigma = sqrt((1 - abar) / abar)`` is interpolated
    linearly in ``log sigma``, as :class:`~microcinema.core.diffusion.VPDenoiser` does, so ``abar_t`` is the
    exact ``1 / (1 + sigma^2)`` of the level the samplers' VP input ``x / sqrt(1 + sigma^2)`` was scaled for.
    """
    t = torch.as_tensor(t)
    device = t.device
    ac = alphas_cumprod_of(alphas_cumprod)
    log_sigmas = sigmas_from_alphas_cumprod(ac).log()
    tt = t.detach().to("cpu", torch.float64).clamp(0, ac.numel() - 1)
    low = tt.floor().long().clamp(max=ac.numel() - 2)
    w = tt - low
    sigma = ((1 - w) * log_sigmas[low] + w * log_sigmas[low + 1]).exp()
    abar = torch.where(tt == tt.round(), ac[tt.round().long()], 1 / (1 + sigma**2))
    return abar.to(device)


def _coefficients(abar_t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    abar = torch.as_tensor(abar_t, dtype=torch.float64, device=like.device)
    if abar.ndim == 0:
        abar = abar.expand(like.shape[0])
    check(abar.shape == (like.shape[0],), f"alphas_cumprod_t must be a scalar or have shape ({like.shape[0]},), "
          f"got {tuple(abar.shape)}")
    check(bool(((abar > 0) & (abar < 1)).all()), "alphas_cumprod_t must lie strictly between 0 and 1")
    return append_dims(abar.sqrt(), like.ndim), append_dims((1 - abar).sqrt(), like.ndim)


def static_noise(y_t: Tensor, y_ref: Tensor, alphas_cumprod_t: Tensor | float) -> Tensor:
    """``eps_static = (y_t - sqrt(abar_t) y_ref) / sqrt(1 - abar_t)``: the noise under which ``y_t`` is the
    reference ``y_ref`` noised to level ``t`` (section 3.2, exact form). Computed in float64 then cast back."""
    check(y_t.shape == y_ref.shape, f"static noise: y_t {tuple(y_t.shape)} and y_ref {tuple(y_ref.shape)} differ")
    a, b = _coefficients(alphas_cumprod_t, y_t)
    return ((y_t.double() - a * y_ref.double()) / b).to(y_t.dtype)


def x0_from_eps(y_t: Tensor, eps: Tensor, alphas_cumprod_t: Tensor | float) -> Tensor:
    """The clean sample a noise prediction implies: ``(y_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)`` (DDPM)."""
    a, b = _coefficients(alphas_cumprod_t, y_t)
    return ((y_t.double() - b * eps.double()) / a).to(y_t.dtype)


def combine(m: Tensor, eps_static: Tensor, eps_dynamic: Tensor) -> Tensor:
    """``m * eps_static + (1 - m) * eps_dynamic`` (eq. 7); ``m`` broadcasts over channels (``(B, 1, H, W)``)."""
    return m * eps_static + (1 - m) * eps_dynamic


def default_mask_channels(block_out_channels: list[int] | tuple[int, ...]) -> list[int]:
    """The mask network's widths from the noise network's: a fifth, rounded to a multiple of 8, at least 8
    (SD 2.1's 320/640/1280/1280 give the paper's 64/128/256/256, its Table 2)."""
    return [max(8, int(round(c / 5 / 8)) * 8) for c in block_out_channels]


def make_mask_unet(in_channels: int, block_out_channels: list[int] | tuple[int, ...], *, layers_per_block: int = 2,
                   norm_num_groups: int = 8, sample_size: int | None = None, init_bias: float = 0.0) -> UNet2DModel:
    """The mask network: a plain-conv ``UNet2DModel`` (``DownBlock2D`` / ``UpBlock2D``, self-attention in the
    mid block) with one output channel, zero-initialised last conv with bias ``init_bias``."""
    channels = [int(c) for c in block_out_channels]
    check(len(channels) >= 1 and all(c > 0 and c % norm_num_groups == 0 for c in channels),
          f"mask network widths must be positive multiples of mask_norm_num_groups={norm_num_groups}, got {channels}")
    n = len(channels)
    net = UNet2DModel(sample_size=sample_size, in_channels=in_channels, out_channels=1,
                      down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n,
                      block_out_channels=tuple(channels), layers_per_block=layers_per_block,
                      norm_num_groups=norm_num_groups, attention_head_dim=norm_num_groups)
    torch.nn.init.zeros_(net.conv_out.weight)  # zero-init: the mask starts at sigmoid(init_bias) everywhere
    torch.nn.init.constant_(net.conv_out.bias, float(init_bias))
    return net


def predict_mask(mask_unet: UNet2DModel, y_t: Tensor, t: Tensor, refs: Tensor) -> Tensor:
    """``m = sigmoid(mask_unet([y_t, refs...], t))``, shape ``(B, 1, H, W)``; ``refs`` is ``(B, R, C, H, W)``."""
    x = torch.cat([y_t, refs.flatten(1, 2)], dim=1)
    return torch.sigmoid(mask_unet(x, t).sample)
