"""The diffusion process every MicroCinema model shares: SD's schedule, one denoiser interface.

Two coordinate systems describe the same noisy latent (DESIGN.md section 3, "Diffusion setup"):

* **VP** (variance preserving, DDPM, what the networks see and are trained on)::

      z_t = sqrt(abar_t) * x0 + sqrt(1 - abar_t) * eps

* **VE** (variance exploding, Karras et al. 2022 / k-diffusion, what the samplers integrate)::

      x = x0 + sigma * eps,      sigma_t = sqrt((1 - abar_t) / abar_t)

  so ``x = z_t / sqrt(abar_t) = z_t * sqrt(1 + sigma_t**2)`` and ``z_t = x / sqrt(1 + sigma**2)``.

A network is an :data:`EpsModel` (VP input, timestep, predicts the noise). :class:`VPDenoiser` turns it
into a VE *denoiser* ``D(x, sigma) ~ E[x0 | x]``, the single interface all samplers in
:mod:`microcinema.core.samplers` use (the construction of k-diffusion's ``DiscreteEpsDDPMDenoiser``,
Crowson 2022, and of Karras et al. 2022, Table 1 "VP" column).

Latents are arbitrary-rank tensors with the batch first: images ``(B, C, H, W)`` and videos
``(B, C, F, H, W)`` go through the same code.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from diffusers import DDPMScheduler
from torch import Tensor

from microcinema.core.errors import MicroCinemaError

__all__ = [
    "SD_SCHEDULE",
    "EpsModel",
    "Denoiser",
    "make_training_scheduler",
    "alphas_cumprod_of",
    "sigmas_from_alphas_cumprod",
    "append_dims",
    "vp_to_ve",
    "ve_to_vp",
    "VPDenoiser",
    "add_noise",
    "timestep_coefficients",
    "high_noise_timesteps",
    "x0_loss_weights",
    "per_sample_mse",
    "random_timesteps",
    "PREDICTION_TYPES",
    "DiffusionLoss",
    "uniform_timesteps",
    "high_noise_mix",
    "uniform_weighting",
    "x0_weighting",
    "min_snr_weighting",
    "velocity",
    "prediction_type_of",
]

#: Stable Diffusion's training schedule (SD 1.x / 2.x ``scheduler_config.json``). SD's "linear" schedule is
#: diffusers' ``scaled_linear``: betas linear in sqrt between 0.00085 and 0.012.
SD_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
}

#: A noise-prediction network: ``eps_model(z_t, t) -> eps_hat`` with ``z_t`` in VP scale (any shape, batch
#: first) and ``t`` a float tensor of shape ``(B,)`` with values in ``[0, num_train_timesteps - 1]``
#: (fractional values occur between the training steps). Conditioning is bound in a closure
#: (see :mod:`microcinema.core.guidance`).
EpsModel = Callable[[Tensor, Tensor], Tensor]

#: A VE denoiser: ``denoiser(x, sigma) -> x0_hat`` with ``x = x0 + sigma * eps``; ``sigma`` is a Python
#: float or a tensor of shape ``(B,)``.
Denoiser = Callable[[Tensor, Union[float, Tensor]], Tensor]


def make_training_scheduler(**overrides: Any) -> DDPMScheduler:
    """The DDPM scheduler with SD's settings (:data:`SD_SCHEDULE`), used for training and as the schedule
    every sampler derives its noise levels from. ``overrides`` replace single settings."""
    config = {**SD_SCHEDULE, **overrides}
    return DDPMScheduler(**config)


def alphas_cumprod_of(scheduler_or_alphas: Any = None) -> Tensor:
    """``abar_t`` for ``t = 0 .. T-1`` as a float64 CPU tensor, from a diffusers scheduler (anything with
    ``alphas_cumprod``), a tensor/array of ``abar``, or ``None`` for SD's schedule."""
    if scheduler_or_alphas is None:
        scheduler_or_alphas = make_training_scheduler()
    ac = getattr(scheduler_or_alphas, "alphas_cumprod", scheduler_or_alphas)
    ac = torch.as_tensor(ac).detach().to("cpu", torch.float64).flatten()
    if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
        raise MicroCinemaError("alphas_cumprod must hold at least 2 values, all strictly between 0 and 1")
    return ac


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """VE noise levels ``sigma_t = sqrt((1 - abar_t) / abar_t)`` (Karras et al. 2022, Table 1, VP column)."""
    ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - ac) / ac).sqrt()


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dimensions to ``v`` until it has ``ndim`` dimensions (broadcast a
    per-sample ``(B,)`` value over a latent of any rank)."""
    missing = ndim - v.ndim
    if missing < 0:
        raise MicroCinemaError(f"tensor has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(*v.shape, *([1] * missing))


def vp_to_ve(z: Tensor, sigma: float | Tensor) -> Tensor:
    """VP point ``z_t`` to VE point ``x = z_t * sqrt(1 + sigma^2)`` (= ``z_t / sqrt(abar_t)``)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    s = append_dims(s.expand(z.shape[0]) if s.ndim == 0 else s, z.ndim)
    return z * (1 + s**2).sqrt().to(device=z.device, dtype=z.dtype)


def ve_to_vp(x: Tensor, sigma: float | Tensor) -> Tensor:
    """VE point ``x`` to VP point ``z_t = x / sqrt(1 + sigma^2)`` (= ``sqrt(abar_t) * x``)."""
    s = torch.as_tensor(sigma, dtype=torch.float64)
    s = append_dims(s.expand(x.shape[0]) if s.ndim == 0 else s, x.ndim)
    return x / (1 + s**2).sqrt().to(device=x.device, dtype=x.dtype)


class VPDenoiser:
    """Wrap an :data:`EpsModel` trained on a discrete VP schedule as a VE denoiser.

    ``D(x, sigma) = x - sigma * eps_model(x / sqrt(1 + sigma^2), t(sigma))`` where ``t(sigma)`` inverts the
    discrete schedule by linear interpolation in ``log sigma`` between neighbouring training steps (as
    k-diffusion's ``DiscreteSchedule.sigma_to_t`` and diffusers' ``_sigma_to_t``); a sigma equal to a
    training step's sigma maps to that integer step exactly.
    """

    def __init__(self, eps_model: EpsModel, alphas_cumprod: Any = None) -> None:
        self.eps_model = eps_model
        self.alphas_cumprod = alphas_cumprod_of(alphas_cumprod)
        self.sigmas = sigmas_from_alphas_cumprod(self.alphas_cumprod)  # increasing in t
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        """The smallest noise level of the schedule, ``sigma_0``."""
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        """The largest noise level of the schedule, ``sigma_{T-1}``."""
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: float | Tensor) -> Tensor:
        """Continuous timestep(s) for noise level(s) ``sigma`` (float64, CPU, same shape as ``sigma``),
        clamped to ``[0, T-1]``."""
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        log_s = s.clamp_min(1e-30).log()
        n = self.log_sigmas.numel()
        low = (torch.searchsorted(self.log_sigmas, log_s.flatten(), right=True) - 1).clamp(0, n - 2)
        lo, hi = self.log_sigmas[low], self.log_sigmas[low + 1]
        w = ((log_s.flatten() - lo) / (hi - lo)).clamp(0, 1)
        return (low.to(torch.float64) + w).reshape(s.shape)

    def t_to_sigma(self, t: float | Tensor) -> Tensor:
        """Noise level(s) for continuous timestep(s) ``t`` by linear interpolation in ``log sigma``."""
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0, self.sigmas.numel() - 1)
        low = t.floor().long().clamp(max=self.sigmas.numel() - 2)
        w = t - low
        return ((1 - w) * self.log_sigmas[low] + w * self.log_sigmas[low + 1]).exp()

    def _per_sample(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=torch.float64).detach().cpu()
        if s.ndim == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise MicroCinemaError(f"sigma must be a scalar or have shape ({x.shape[0]},), got {tuple(s.shape)}")
        return s

    def eps(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """The network's noise prediction at VE point ``x`` and level ``sigma``."""
        s = self._per_sample(x, sigma)
        t = self.sigma_to_t(s).to(device=x.device, dtype=torch.float32)
        c_in = append_dims((1.0 / (1.0 + s**2).sqrt()).to(device=x.device, dtype=x.dtype), x.ndim)
        return self.eps_model(x * c_in, t)

    def __call__(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """``x0_hat = x - sigma * eps_hat`` (Karras et al. 2022, eq. 7 with the VP preconditioning)."""
        s = self._per_sample(x, sigma)
        eps = self.eps(x, s)
        return x - append_dims(s.to(device=x.device, dtype=x.dtype), x.ndim) * eps


def timestep_coefficients(
    timesteps: Tensor, alphas_cumprod: Tensor, like: Tensor
) -> tuple[Tensor, Tensor]:
    """``(sqrt(abar_t), sqrt(1 - abar_t))`` at integer ``timesteps`` ``(B,)`` (DDPM eq. 4's coefficients), in
    ``like``'s dtype and device and shaped to broadcast against it (computed in float64)."""
    ac = alphas_cumprod.to(device=like.device, dtype=torch.float64)[timesteps.to(like.device).long()]
    a = append_dims(ac.sqrt().to(like.dtype), like.ndim)
    b = append_dims((1 - ac).sqrt().to(like.dtype), like.ndim)
    return a, b


def add_noise(x0: Tensor, noise: Tensor, timesteps: Tensor, scheduler: Any = None) -> Tensor:
    """The forward process ``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (DDPM, Ho et al. 2020 eq. 4).

    ``noise`` is passed in so that structured noise priors can supply it (MicroCinema's Appearance Noise
    Prior ``lambda * z_c + n``, PYoCo-style mixed/progressive video noise). ``timesteps`` are integer steps of
    shape ``(B,)``; ``scheduler`` defaults to SD's (:func:`make_training_scheduler`).
    """
    if noise.shape != x0.shape:
        raise MicroCinemaError(f"noise shape {tuple(noise.shape)} differs from x0 shape {tuple(x0.shape)}")
    a, b = timestep_coefficients(timesteps, alphas_cumprod_of(scheduler), x0)
    return a * x0 + b * noise


def per_sample_mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of each sample, in float32: ``(B,)`` over all non-batch dimensions."""
    err = (pred.float() - target.float()) ** 2
    return err.reshape(err.shape[0], -1).mean(dim=1)


def random_timesteps(
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    num_train_timesteps: int = 1000,
    low: int = 0,
    high: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Uniform integer timesteps in ``[low, high)`` (default all training steps), shape ``(batch_size,)``,
    drawn from ``generator`` (on the generator's device, then moved to ``device``). Without a generator this
    uses torch's global RNG, the training convention (seeded by ``accelerate.utils.set_seed``)."""
    high = num_train_timesteps if high is None else high
    if not 0 <= low < high <= num_train_timesteps:
        raise MicroCinemaError(f"timestep range [{low}, {high}) must lie within [0, {num_train_timesteps})")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    t = torch.randint(low, high, (batch_size,), generator=generator, device=gen_device)
    return t.to(device) if device is not None else t


def high_noise_timesteps(batch_size: int, fraction: float, low: int, *, generator: torch.Generator | None = None,
                         num_train_timesteps: int = 1000) -> Tensor:
    """Training timesteps with extra high-noise ones: each is drawn from ``[low, T)`` with probability
    ``fraction``, else uniformly from ``[0, T)`` (``fraction = 0``: :func:`random_timesteps`).

    Why: the global layout of a sample (for a video: which way the object moves) is decided at the highest
    noise levels, which uniform sampling visits rarely (the same reason video models shift their noise
    distribution up, e.g. Stable Video Diffusion's EDM ``P_mean``).
    """
    if not 0 <= fraction <= 1:
        raise MicroCinemaError(f"high-noise fraction must be in [0, 1], got {fraction}")
    uniform = random_timesteps(batch_size, generator=generator, num_train_timesteps=num_train_timesteps)
    if fraction == 0:
        return uniform
    high = random_timesteps(batch_size, generator=generator, num_train_timesteps=num_train_timesteps, low=low)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    pick = torch.rand(batch_size, generator=generator, device=gen_device) < fraction
    return torch.where(pick, high, uniform)


def snr(timesteps: Tensor, scheduler: Any = None) -> Tensor:
    """Signal-to-noise ratio ``abar_t / (1 - abar_t)`` of integer ``timesteps`` (float64, on their device)."""
    abar = alphas_cumprod_of(scheduler).to(timesteps.device)[timesteps.long()]
    return abar / (1 - abar)


def x0_loss_weights(timesteps: Tensor, max_weight: float, scheduler: Any = None) -> Tensor:
    """Per-sample weights ``clamp(1 / SNR(t), 1, max_weight)`` for the epsilon loss, ``SNR = abar / (1 - abar)``.

    ``(1 / SNR) * ||eps - eps_hat||^2`` is the error of the implied clean sample ``x0_hat``, so with this
    weight the loss counts high noise levels as an x0-loss would, up to ``max_weight``, and is the plain
    epsilon loss where ``SNR >= 1`` (the mirror image of Min-SNR weighting, Hang et al. 2023, which caps
    the x0 weight at low noise). ``max_weight = 1``: no weighting.
    """
    if max_weight < 1:
        raise MicroCinemaError(f"max_weight must be >= 1, got {max_weight}")
    return (1 / snr(timesteps, scheduler)).clamp(1.0, max_weight).float()


def min_snr_weights(timesteps: Tensor, gamma: float, scheduler: Any = None) -> Tensor:
    """Min-SNR-gamma weights for the epsilon loss (Hang et al. 2023, "Efficient Diffusion Training via
    Min-SNR Weighting Strategy", eq. 7 with the epsilon target): ``min(SNR(t), gamma) / SNR(t)``.

    The x0 error of a step is weighted by ``min(SNR, gamma)``: the nearly clean steps (``SNR > gamma``),
    whose detail-level errors dominate the plain loss's gradient and conflict with the rest, are weighted down;
    every step with ``SNR <= gamma`` keeps weight 1 (the plain epsilon loss). The paper's default is ``gamma = 5``.
    """
    if not gamma > 0:
        raise MicroCinemaError(f"min-SNR gamma must be > 0, got {gamma}")
    ratio = snr(timesteps, scheduler)
    return (ratio.clamp(max=gamma) / ratio).float()


# ------------------------------------------------------------------------------------------ the one loss

#: What a network predicts: the noise (DDPM, SD 1.x, SD 2.1-base, the embedded family) or the velocity
#: ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho 2022; SD 2.1 at 768).
PREDICTION_TYPES = ("epsilon", "v_prediction")

#: ``sampler(batch_size, generator) -> (B,)`` integer training timesteps.
TimestepSampler = Callable[[int, Optional[torch.Generator]], Tensor]
#: ``weighting(timesteps) -> (B,)`` float32 per-sample loss weights.
Weighting = Callable[[Tensor], Tensor]
#: ``noisy_input(x0, noise, timesteps) -> (z_t, eps)``: the network's input and the noise it must predict
#: (by default the forward process ``add_noise(x0, noise, t)`` and ``noise``). Any replacement must keep
#: ``z_t = sqrt(abar) x0 + sqrt(1 - abar) eps`` so the implied clean sample stays ``x0``.
NoisyInput = Callable[[Tensor, Tensor, Tensor], "tuple[Tensor, Tensor]"]


def uniform_timesteps(num_train_timesteps: int = 1000) -> TimestepSampler:
    """Uniform integer timesteps over all training steps (DDPM; the papers' setting)."""
    return lambda batch_size, generator: random_timesteps(batch_size, generator=generator,
                                                          num_train_timesteps=num_train_timesteps)


def high_noise_mix(fraction: float, low: int, num_train_timesteps: int = 1000) -> TimestepSampler:
    """:func:`high_noise_timesteps` as a sampler: a ``fraction`` of the steps from ``[low, T)``, the rest
    uniform (``fraction = 0`` draws exactly what :func:`uniform_timesteps` draws)."""
    if not 0 <= fraction <= 1:
        raise MicroCinemaError(f"high-noise fraction must be in [0, 1], got {fraction}")
    return lambda batch_size, generator: high_noise_timesteps(batch_size, fraction, low, generator=generator,
                                                              num_train_timesteps=num_train_timesteps)


def uniform_weighting() -> Weighting:
    """Every sample counts the same (the plain loss of Ho et al. 2020)."""
    return lambda timesteps: torch.ones(timesteps.shape[0], dtype=torch.float32, device=timesteps.device)


def x0_weighting(max_weight: float, scheduler: Any = None) -> Weighting:
    """:func:`x0_loss_weights` (``clamp(1 / SNR, 1, max_weight)``) as a weighting."""
    if max_weight < 1:
        raise MicroCinemaError(f"max_weight must be >= 1, got {max_weight}")
    return lambda timesteps: x0_loss_weights(timesteps, max_weight, scheduler)


def min_snr_weighting(gamma: float, scheduler: Any = None, prediction_type: str = "epsilon") -> Weighting:
    """Min-SNR-gamma (Hang et al. 2023, eq. 7): the x0 error weighted by ``min(SNR, gamma)``, written for the
    loss's target: ``min(SNR, gamma) / SNR`` for epsilon, ``min(SNR, gamma) / (SNR + 1)`` for v (as
    diffusers' training scripts, via ``diffusers.training_utils.compute_snr``'s SNR)."""
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return lambda timesteps: min_snr_weights(timesteps, gamma, scheduler)
    if not gamma > 0:
        raise MicroCinemaError(f"min-SNR gamma must be > 0, got {gamma}")

    def weights(timesteps: Tensor) -> Tensor:
        ratio = snr(timesteps, scheduler)
        return (ratio.clamp(max=gamma) / (ratio + 1)).float()

    return weights


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise MicroCinemaError(f"unknown prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")


def velocity(x0: Tensor, noise: Tensor, timesteps: Tensor, scheduler: Any = None) -> Tensor:
    """The v-prediction target ``sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022; diffusers'
    ``DDPMScheduler.get_velocity``)."""
    a, b = timestep_coefficients(timesteps, alphas_cumprod_of(scheduler), x0)
    return a * noise - b * x0


def prediction_type_of(scheduler_config: dict[str, Any] | None) -> str:
    """The ``prediction_type`` of a diffusers scheduler config (``"epsilon"`` when absent), checked."""
    kind = (scheduler_config or {}).get("prediction_type") or "epsilon"
    _check_prediction_type(kind)
    return kind


class DiffusionLoss:
    """The training loss of every diffusion model of the project (t2i, video, interpolation), with hooks.

    One call, for clean latents ``x0`` (any rank, batch first) and a ``generator``, draws in this order:

    1. the unit Gaussian ``n`` (``torch.randn`` of ``x0``'s shape on the generator's device);
    2. the timesteps (``timesteps`` hook: :func:`uniform_timesteps` or :func:`high_noise_mix`);
    3. whatever ``denoise`` draws itself (e.g. the caption-dropout mask of classifier-free guidance);

    and computes ``mean_b w(t_b) * mean((pred_b - target_b)^2)`` where

    * the noise is ``noise_prior(n)`` (per call; default ``n``): e.g. MicroCinema's Appearance Noise Prior
      ``lambda * z_c + n`` (section 3.3, eq. 3), which corrupts the input and is the target together;
    * the input is ``noisy_input(x0, noise, t) -> (z_t, eps)`` (per call; default the forward process
      ``sqrt(abar) x0 + sqrt(1 - abar) noise`` and ``eps = noise``), e.g. the hidden motion of
      :func:`~microcinema.systems.microcinema.noise_prior.hide_motion_at_high_noise`;
    * the target is ``eps`` (``prediction_type="epsilon"``, DDPM eq. 14) or the velocity
      ``sqrt(abar) eps - sqrt(1 - abar) x0`` (``"v_prediction"``);
    * ``w`` is the ``weighting`` hook (:func:`uniform_weighting`, :func:`x0_weighting`,
      :func:`min_snr_weighting`).

    ``denoise(z_t, t) -> prediction`` binds the network and its conditions.
    """

    def __init__(self, scheduler: Any = None, *, timesteps: TimestepSampler | None = None,
                 weighting: Weighting | None = None, prediction_type: str = "epsilon") -> None:
        _check_prediction_type(prediction_type)
        self.scheduler = make_training_scheduler() if scheduler is None else scheduler
        self.timesteps = timesteps or uniform_timesteps(int(self.scheduler.config.num_train_timesteps))
        self.weighting = weighting or uniform_weighting()
        self.prediction_type = prediction_type

    def __call__(self, denoise: Callable[[Tensor, Tensor], Tensor], x0: Tensor, generator: torch.Generator, *,
                 noise_prior: Callable[[Tensor], Tensor] | None = None,
                 noisy_input: NoisyInput | None = None) -> Tensor:
        n = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        noise = noise_prior(n) if noise_prior is not None else n
        t = self.timesteps(len(x0), generator).to(x0.device)
        if noisy_input is None:
            z_t, eps = add_noise(x0, noise, t, self.scheduler), noise
        else:
            z_t, eps = noisy_input(x0, noise, t)
        pred = denoise(z_t, t)
        target = eps if self.prediction_type == "epsilon" else velocity(x0, eps, t, self.scheduler)
        return (self.weighting(t) * per_sample_mse(pred, target)).mean()
