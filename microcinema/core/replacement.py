"""Known frames pinned during sampling: the replacement method (Ho et al. 2022, "Video Diffusion Models",
section 3.1; the same idea as SDEdit/RePaint-style inpainting in time).

A wrapper over one :data:`~microcinema.core.diffusion.EpsModel`: at every step the frames whose clean latent is
known are shown to the model as that latent noised to the current level, ``sqrt(abar_t) z_known +
sqrt(1 - abar_t) eps_known`` with one fixed ``eps_known`` per run, and the noise prediction returned for those
frames is the noise that makes the sampler's own state there denoise to ``z_known``, ``(z_t - sqrt(abar_t)
z_known) / sqrt(1 - abar_t)``. The x0 estimate of any sampler is then ``z_known`` at those frames at every step,
so a schedule ending at sigma = 0 returns them exactly (DDIM, ending at t = 0, returns them at t = 0's noise
level, as for every frame), while the other frames are denoised next to an on-distribution noisy copy of the
known ones.

MicroCinema uses it for its key frame (the centre frame of stage two): ``MicroCinemaPipeline(...,
pin_key_frame=True)``. With the Appearance Noise Prior the known frames' noise follows the training noise,
``eps_known = n + lambda z_c`` (section 3.3, eq. 3), so the pinned frame looks like the frames the model saw in
training. This is sampling only; the model is unchanged.

:func:`mean_anchor_eps_model` imposes a weaker kind of known information the same way: only each frame's spatial
mean (its palette), for the interpolation model's in-between frames (``MicroCinemaPipeline(interp_anchor_means=True)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from microcinema.core.diffusion import EpsModel, VPDenoiser
from microcinema.core.errors import check


def _abar_at(schedule: VPDenoiser, t: Tensor, like: Tensor) -> Tensor:
    """``abar`` at the samplers' (possibly fractional) timesteps ``t``, interpolated as ``schedule`` does, shaped
    ``(B, 1, ...)`` to broadcast over ``like``."""
    sigma = schedule.t_to_sigma(t.detach().cpu().to(torch.float64))
    abar = (1.0 / (1.0 + sigma**2)).to(device=like.device, dtype=like.dtype)
    return abar.reshape(-1, *([1] * (like.ndim - 1)))


def replacement_eps_model(eps_model: EpsModel, known: Tensor, mask: Tensor, known_noise: Tensor,
                          alphas_cumprod: object = None) -> EpsModel:
    """Wrap ``eps_model`` so the frames where ``mask`` is true follow the forward process of ``known``.

    ``known``: clean latents ``(B, C, F, h, w)`` (values outside ``mask`` are ignored); ``mask``: bool,
    broadcastable to it (e.g. ``(1, 1, F, 1, 1)``); ``known_noise``: the fixed noise of the known frames, same
    shape as ``known``. Timesteps may be fractional (the samplers' continuous ``t``): ``abar_t`` is
    interpolated as :class:`~microcinema.core.diffusion.VPDenoiser` does.
    """
    check(known.shape == known_noise.shape,
          f"known latents {tuple(known.shape)} and their noise {tuple(known_noise.shape)} must have one shape")
    try:
        torch.broadcast_shapes(mask.shape, known.shape)
    except RuntimeError as err:
        raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to the latents {tuple(known.shape)}") from err
    schedule = VPDenoiser(eps_model, alphas_cumprod)

    def wrapped(z_t: Tensor, t: Tensor) -> Tensor:
        abar = _abar_at(schedule, t, z_t)
        noised_known = abar.sqrt() * known + (1 - abar).sqrt() * known_noise
        eps = eps_model(torch.where(mask, noised_known, z_t), t)
        to_known = (z_t - abar.sqrt() * known) / (1 - abar).sqrt()  # the sampler's state there -> x0 = z_known
        return torch.where(mask, to_known.to(eps.dtype), eps)

    return wrapped


def mean_anchor_eps_model(eps_model: EpsModel, target_mean: Tensor, alphas_cumprod: object = None) -> EpsModel:
    """Wrap ``eps_model`` so that every step's clean-latent estimate has the spatial mean ``target_mean``
    ``(B, C, F, 1, 1)`` per frame and channel (a frame's palette), its layout left to the model.

    With ``z_t = sqrt(abar) x0 + sqrt(1 - abar) eps``, replacing the x0 estimate's spatial mean ``m(x0_hat)`` by
    ``target_mean`` is the noise prediction ``eps - m(eps) + (m(z_t) - sqrt(abar) target_mean) / sqrt(1 - abar)``
    (written without dividing by ``sqrt(abar)``, which vanishes at high noise). An extension beyond the papers
    for the interpolation model, whose in-between frames can shift their whole palette (background and object
    together) while keeping the layout: the target is the mean of the condition it is fed, the latents
    interpolated between its two end frames. Timesteps may be fractional, as in :func:`replacement_eps_model`.
    """
    check(target_mean.ndim >= 3 and tuple(target_mean.shape[-2:]) == (1, 1),
          f"target_mean must end in two singleton spatial dims, got shape {tuple(target_mean.shape)}")
    schedule = VPDenoiser(eps_model, alphas_cumprod)

    def wrapped(z_t: Tensor, t: Tensor) -> Tensor:
        abar = _abar_at(schedule, t, z_t)
        eps = eps_model(z_t, t)
        spatial_mean = lambda v: v.mean(dim=(-2, -1), keepdim=True)  # noqa: E731
        return eps - spatial_mean(eps) + (spatial_mean(z_t) - abar.sqrt() * target_mean) / (1 - abar).sqrt()

    return wrapped


def centre_frame_mask(num_frames: int, device: torch.device | str | None = None) -> Tensor:
    """``(1, 1, F, 1, 1)`` bool mask of the centre frame, where MicroCinema puts its key frame."""
    check(num_frames % 2 == 1, f"the key frame is the centre frame: num_frames must be odd, got {num_frames}")
    mask = torch.zeros(1, 1, num_frames, 1, 1, dtype=torch.bool, device=device)
    mask[:, :, num_frames // 2] = True
    return mask
