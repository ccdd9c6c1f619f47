"""Noise priors: what the diffusion noise is made of, in training and at the start of sampling.

Small pure functions, used by the training tasks (the noise that corrupts the data and is the regression
target) and by the pipelines (the initial latent's mean, passed as ``init_mean`` to
:func:`microcinema.samplers.sample`). Latent videos are ``(B, C, F, h, w)``.

* **Appearance Noise Prior** (MicroCinema section 3.3, eq. 3 and appendix B): training noise
  ``eps_i = lambda * z_c + n_i`` for every frame ``i`` with the same key-frame latent ``z_c`` and
  ``n_i ~ N(0, I)``; at inference the initial latent is drawn from ``N((lambda + gamma) z_c, I)`` and the
  ODE sampler is unchanged. ``lambda = gamma = 0`` is exactly plain diffusion. The paper's best setting is
  ``lambda = 0.03, gamma = 0.02``. For the temporal interpolation model the condition is a per-frame latent
  video (first and last frame interpolated); the same formula is applied frame by frame.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .errors import check

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

    Pass it as ``init_mean`` to :func:`~microcinema.samplers.sample` (which scales it like the noise).
    ``gamma`` strengthens the prior beyond what training used, for more consistent videos (paper Fig. 5).
    """
    check(lam >= 0 and gamma >= 0, f"lambda and gamma must be >= 0, got {lam}, {gamma}")
    return (lam + gamma) * _as_condition_video(condition, num_frames)
