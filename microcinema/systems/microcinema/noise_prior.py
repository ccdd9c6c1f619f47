"""Noise priors: what the diffusion noise is made of, in training and at the start of sampling.

Small pure functions, used by the training tasks (the noise that corrupts the data and is the regression
target) and by the pipelines (the initial latent's mean, passed as ``init_mean`` to
:func:`microcinema.core.samplers.sample`). Latent videos are ``(B, C, F, h, w)``.

* **Appearance Noise Prior** (MicroCinema section 3.3, eq. 3 and appendix B): training noise
  ``eps_i = lambda * z_c + n_i`` for every frame ``i`` with the same key-frame latent ``z_c`` and
  ``n_i ~ N(0, I)``; at inference the initial latent is drawn from ``N((lambda + gamma) z_c, I)`` and the
  ODE sampler is unchanged. ``lambda = gamma = 0`` is exactly plain diffusion. The paper's best setting is
  ``lambda = 0.03, gamma = 0.02``. For the temporal interpolation model the condition is a per-frame latent
  video (first and last frame interpolated); the same formula is applied frame by frame.
* **Hidden motion at the top noise levels** (an extension, not in the papers): for ``t >= start`` the
  training input carries the key frame, not the clip, as its signal, and the target is the noise that takes
  that input to the clip (:func:`hide_motion_at_high_noise`). It makes training match sampling, whose first
  latent holds the key frame and no motion.
"""

from __future__ import annotations

import torch
from torch import Tensor

from microcinema.core.diffusion import add_noise, alphas_cumprod_of, timestep_coefficients
from microcinema.core.errors import check

#: MicroCinema's best setting (paper Fig. 5).
DEFAULT_LAMBDA = 0.03
DEFAULT_GAMMA = 0.02


def _as_condition_video(condition: Tensor, num_frames: int) -> Tensor:
    """A key-frame latent ``(B, C, h, w)`` repeated to ``(B, C, F, h, w)``; a latent video is returned as is."""
    if condition.ndim == 4:
        return condition.unsqueeze(2).expand(-1, -1, num_frames, -1, -1)
    check(condition.ndim == 5 and condition.shape[2] in (1, num_frames),
          f"condition must be (B, C, h, w) or (B, C, F, h, w) with F in (1, {num_frames}), got {tuple(condition.shape)}")
    return condition.expand(-1, -1, num_frames, -1, -1)


def appearance_noise(condition: Tensor, noise: Tensor, lam: float = DEFAULT_LAMBDA) -> Tensor:
    """Training noise of the Appearance Noise Prior, eq. 3: ``lambda * z_c + n`` for every frame.

    ``condition``: key-frame latent ``(B, C, h, w)`` (or a per-frame condition ``(B, C, F, h, w)``);
    ``noise``: unit Gaussian ``(B, C, F, h, w)``. The result both corrupts the clean latents
    (``z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps``, eq. 4) and is the regression target (eq. 5).
    """
    check(lam >= 0, f"lambda must be >= 0, got {lam}")
    check(noise.ndim == 5, f"noise must be a latent video (B, C, F, h, w), got shape {tuple(noise.shape)}")
    if lam == 0:
        return noise
    return noise + lam * _as_condition_video(condition, noise.shape[2]).to(noise.dtype)


def appearance_init_mean(condition: Tensor, num_frames: int, lam: float = DEFAULT_LAMBDA,
                         gamma: float = DEFAULT_GAMMA) -> Tensor:
    """Mean of the initial latent at inference, appendix B: ``(lambda + gamma) * [z_c, ..., z_c]``.

    Pass it as ``init_mean`` to :func:`~microcinema.core.samplers.sample` (which scales it like the noise).
    ``gamma`` strengthens the prior beyond what training used, for more consistent videos (paper Fig. 5).
    """
    check(lam >= 0 and gamma >= 0, f"lambda and gamma must be >= 0, got {lam}, {gamma}")
    return (lam + gamma) * _as_condition_video(condition, num_frames)


def hide_motion_at_high_noise(z0: Tensor, condition: Tensor, noise: Tensor, timesteps: Tensor, start: int | None,
                              scheduler: object = None) -> tuple[Tensor, Tensor]:
    """Training input ``z_t`` and epsilon target where, for ``t >= start``, the signal in ``z_t`` is the
    condition (the key frame repeated) instead of the clip ``z0``:

        ``z_t = sqrt(abar) z_c + sqrt(1 - abar) eps``,  target ``(z_t - sqrt(abar) z0) / sqrt(1 - abar)``
        ``    = eps + sqrt(abar / (1 - abar)) (z_c - z0)``,

    so the clean sample implied by a perfect prediction is still ``z0`` (the loss is the usual one, on a
    different input). Below ``start`` (everywhere when ``start`` is None) it is the forward process,
    ``add_noise(z0, eps, t)`` and target ``eps``.

    Why: SD's schedule ends at ``abar_999 = 0.0047``, not 0, so at training even ``t = 999`` leaves a faint
    ``0.07 z0``: the whole motion, readable summed over an object. A model learns to read where the object is
    going from that leak instead of from the text. Sampling starts from noise around the key frame
    (:func:`appearance_init_mean`), which has no motion to read. This removes the leak's motion, not the leak
    (the key frame's signal stays, as at sampling); zero-terminal-SNR schedules (Lin et al. 2024) remove the
    leak altogether but need v-prediction and a new schedule. An extension beyond the paper, used by the
    embedded base model (what it changed there: ``docs/history.md``).
    """
    key = _as_condition_video(condition, z0.shape[2]).to(z0.dtype) if start is not None else None
    return replace_signal_at_high_noise(z0, key, noise, timesteps, start, scheduler)


def replace_signal_at_high_noise(z0: Tensor, replacement: Tensor | None, noise: Tensor, timesteps: Tensor,
                                 start: int | None, scheduler: object = None) -> tuple[Tensor, Tensor]:
    """The core of :func:`hide_motion_at_high_noise`: for ``t >= start``
    the signal in ``z_t`` is ``replacement`` (broadcastable to ``z0``) instead of ``z0``, and the epsilon target
    is the noise that takes that input to ``z0`` (``eps + sqrt(abar / (1 - abar)) (replacement - z0)``), so a
    perfect prediction still implies ``z0``. Below ``start`` (everywhere when ``start`` is None) it is the
    forward process and target ``eps``."""
    check(noise.shape == z0.shape, f"noise shape {tuple(noise.shape)} differs from z0 shape {tuple(z0.shape)}")
    if start is None:
        return add_noise(z0, noise, timesteps, scheduler), noise
    a, b = timestep_coefficients(timesteps, alphas_cumprod_of(scheduler), z0)
    replacement = replacement.to(z0.dtype).expand_as(z0)
    hide = (timesteps.to(z0.device) >= start).view(-1, *[1] * (z0.ndim - 1))
    z_t = a * torch.where(hide, replacement, z0) + b * noise
    target = torch.where(hide, noise + (a / b) * (replacement - z0), noise)
    return z_t, target
