"""Samplers: small pure functions over one VE denoiser, and the one sampling loop every pipeline uses.

Design (k-diffusion, Crowson 2022; Karras et al. 2022 "Elucidating the Design Space of Diffusion-Based
Generative Models"): a sampler is ``sampler(denoiser, x, sigmas, *, generator, callback, ...) -> x`` where
``denoiser(x, sigma) -> x0_hat`` works in VE coordinates ``x = x0 + sigma * eps`` and ``sigmas`` is a
descending noise-level schedule. Schedules come from :func:`get_sigmas`; the network is wrapped by
:class:`~microcinema.core.diffusion.VPDenoiser`; :func:`sample` glues the three together.

Coordinates (see :mod:`microcinema.core.diffusion`): networks and users live in VP coordinates
``z_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``; samplers in VE coordinates ``x = z_t * sqrt(1 + sigma_t^2)``.
:func:`sample` takes the initial latent ``x_T`` in VP coordinates (unit-variance noise, plus an optional
mean), maps it to VE by the *exact* factor ``sqrt(1 + sigma_max^2)`` (= ``1 / sqrt(abar_T)``, as diffusers'
DDIM and Stability's ``sgm`` samplers do; k-diffusion's and diffusers-Euler's ``sigma_max`` alone drops the
unit data variance: 0.23% at SD's sigma_max = 14.6, 0.37% at DDIM-25's first level), and maps the result back to VP scale with ``1 / sqrt(1 + sigma_end^2)``
(identity when the schedule ends at sigma = 0).

All randomness comes from an explicit ``torch.Generator``; ``generator=None`` means a fresh generator seeded
from the OS, never torch's global RNG.

Besides these samplers, :func:`sample` runs a diffusers scheduler's own loop (``sampler="scheduler"``:
``set_timesteps`` / ``scale_model_input`` / ``step``, as ``StableDiffusionPipeline`` does), so a pipeline
can reproduce a diffusers pipeline exactly. Networks trained for v-prediction (SD 2.x 768) are turned into
epsilon models by :func:`eps_from_prediction` (what every sampler here works with); the scheduler loop turns
the guided epsilon back into the scheduler's ``prediction_type`` with :func:`prediction_from_eps`.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import trange

from microcinema.core.diffusion import Denoiser, EpsModel, VPDenoiser, alphas_cumprod_of, sigmas_from_alphas_cumprod
from microcinema.core.errors import MicroCinemaError

__all__ = [
    "SCHEDULES",
    "SAMPLERS",
    "SamplerSpec",
    "Callback",
    "get_sigmas",
    "get_sigmas_karras",
    "randn",
    "sample_euler",
    "sample_ddim",
    "sample_dpmpp_2s_ancestral",
    "sample_dpmpp_2m",
    "get_ancestral_step",
    "sample",
    "sample_with_scheduler",
    "StepCallback",
    "PREDICTION_TYPES",
    "eps_from_prediction",
    "prediction_from_eps",
]

#: Per-step callback, called with ``{"x", "i", "sigma", "sigma_hat", "denoised"}`` (``x`` in VE coordinates,
#: ``denoised`` = the x0 prediction, in latent scale) before the step's update, as in k-diffusion.
Callback = Callable[[dict[str, Any]], None]

#: Called after every sampling step as ``step_callback(i, t, latents)`` with the step's index, its (possibly
#: fractional) timestep and the latents after the step; a returned tensor replaces the latents, ``None`` keeps
#: them. Which latents: the k-diffusion samplers pass VP coordinates (``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``
#: at the level the step reached, the scale the network sees) and convert a replacement back. ``sampler=
#: "scheduler"`` passes the scheduler's own ``latents`` (the ``prev_sample`` of ``scheduler.step``), as diffusers'
#: ``callback_on_step_end`` does: VP for DDIM/DDPM/DPM-Solver-style schedulers (``init_noise_sigma == 1``), but
#: VE scale (``x_0 + sigma eps``, ``sqrt(1 + sigma^2)`` times the VP latents) for the Euler/Heun/LMS-style
#: ``*DiscreteScheduler`` ones, which scale the model input themselves (``scale_model_input``).
StepCallback = Callable[[int, Tensor, Tensor], "Tensor | None"]

#: Network parameterisations (diffusers' ``prediction_type``) the samplers accept.
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction")

#: Noise-level schedules :func:`get_sigmas` knows.
SCHEDULES: tuple[str, ...] = ("ddim", "euler", "karras", "sgm")


# --------------------------------------------------------------------------------------------- schedules


def get_sigmas_karras(num_steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022, eq. 5: ``sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho``,
    ``i = 0..N-1``, followed by a final 0. Float64, length ``num_steps + 1``."""
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def get_sigmas(alphas_cumprod: Any, num_steps: int, kind: str = "euler", *, rho: float = 7.0) -> Tensor:
    """Descending noise levels (float64 CPU tensor of length ``num_steps + 1``) for ``num_steps`` sampler
    steps on a discrete VP schedule (``alphas_cumprod``: tensor/array, a diffusers scheduler, or ``None``
    for SD's).

    kinds:
      * ``"ddim"``: diffusers ``DDIMScheduler`` with SD's config: "leading" spacing
        ``t_i = i * (T // N) + 1`` (``steps_offset=1``), and, because SD sets ``set_alpha_to_one=False``,
        the last step goes to ``abar_0`` rather than to a clean sample: the schedule ends at
        ``sigma_0 = sqrt((1 - abar_0) / abar_0) ~ 0.029``, not at 0.
      * ``"euler"``: diffusers ``EulerDiscreteScheduler`` defaults: ``t = linspace(T-1, 0, N)``, sigma
        linearly interpolated in ``t``, then 0.
      * ``"karras"``: Karras et al. 2022 eq. 5 with ``rho`` between the schedule's ``sigma_0`` and
        ``sigma_{T-1}``, then 0 (= ``EulerDiscreteScheduler(use_karras_sigmas=True)``).
      * ``"sgm"``: Stability's ``sgm`` ``LegacyDDPMDiscretization`` (the DPM++ 2S ancestral sampler ART-V
        cites): integer steps ``linspace(T-1, 0, N, endpoint=False)``, then 0.
    """
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise MicroCinemaError(f"num_inference_steps must be a positive integer, got {num_steps!r}")
    if kind not in SCHEDULES:
        raise MicroCinemaError(f"unknown sigma schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
    ac = alphas_cumprod_of(alphas_cumprod)
    table = sigmas_from_alphas_cumprod(ac)  # sigma_t for t = 0..T-1, increasing
    T = table.numel()
    limit = T - 1 if kind == "ddim" else T
    if num_steps > limit:
        raise MicroCinemaError(
            f"num_inference_steps must be at most {limit} for the {kind!r} schedule, got {num_steps}"
        )
    zero = table.new_zeros(1)
    if kind == "ddim":
        ts = (torch.arange(num_steps - 1, -1, -1) * (T // num_steps) + 1).long()
        return torch.cat([table[ts], table[:1]])
    if kind == "euler":
        ts = np.linspace(0, T - 1, num_steps)[::-1]
        sig = np.interp(ts, np.arange(T), table.numpy())
        return torch.cat([torch.from_numpy(sig.copy()), zero])
    if kind == "karras":
        return get_sigmas_karras(num_steps, float(table[0]), float(table[-1]), rho)
    ts = np.linspace(T - 1, 0, num_steps, endpoint=False).astype(np.int64)  # "sgm", descending
    return torch.cat([table[torch.from_numpy(ts)], zero])


# --------------------------------------------------------------------------------------------- noise


def _generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator:
    """``generator`` itself, or a fresh OS-seeded one (so the global RNG is never used nor advanced)."""
    if generator is not None:
        return generator
    g = torch.Generator(device=device)
    g.seed()
    return g


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Standard normal noise drawn on the generator's device (so a CPU generator gives the same numbers
    whatever ``device`` is), then moved to ``device``."""
    gen = _generator(generator, torch.device("cpu"))
    out = torch.randn(tuple(shape), generator=gen, device=gen.device, dtype=dtype)
    return out.to(device) if device is not None else out


def _randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    gen = _generator(generator, x.device)
    return torch.randn(x.shape, generator=gen, device=gen.device, dtype=x.dtype).to(x.device)


# --------------------------------------------------------------------------------------------- samplers


def _steps(sigmas: Tensor | Sequence[float]) -> list[float]:
    s = [float(v) for v in (sigmas.tolist() if isinstance(sigmas, Tensor) else sigmas)]
    if len(s) < 2:
        raise MicroCinemaError("a sigma schedule needs at least 2 values (one step)")
    return s


@torch.no_grad()
def sample_euler(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable_progress: bool = False,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    step_end: Callable[[int, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Euler steps on the probability-flow ODE ``dx/dsigma = (x - D(x, sigma)) / sigma`` (Karras et al. 2022,
    Algorithm 2 with its optional "churn" ``gamma = min(s_churn / N, sqrt(2) - 1)`` for
    ``s_tmin <= sigma <= s_tmax``; ``s_churn=0``, the default, is the deterministic ODE sampler: MicroCinema's
    EulerEDM with gamma = 0). ``x`` starts at ``sigmas[0]`` in VE coordinates. ``step_end(i, x)``, after each
    step, may return a replacement for ``x`` (VE coordinates at ``sigmas[i + 1]``)."""
    s = _steps(sigmas)
    n = len(s) - 1
    gen = _generator(generator, x.device) if s_churn > 0 else None
    for i in trange(n, disable=disable_progress, desc="euler", leave=False):
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s[i] <= s_tmax else 0.0
        sigma_hat = s[i] * (gamma + 1)
        if gamma > 0:
            x = x + _randn_like(x, gen) * s_noise * math.sqrt(sigma_hat**2 - s[i] ** 2)
        denoised = denoiser(x, sigma_hat)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "sigma_hat": sigma_hat, "denoised": denoised})
        d = (x - denoised) / sigma_hat
        x = x + d * (s[i + 1] - sigma_hat)
        if step_end is not None:
            x = _replaced(x, step_end(i, x))
    return x


def _replaced(x: Tensor, new: Tensor | None) -> Tensor:
    return x if new is None else new


@torch.no_grad()
def sample_ddim(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable_progress: bool = False,
    step_end: Callable[[int, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Deterministic DDIM (Song et al. 2021, eq. 12 with eta = 0). In VE coordinates eq. 12 reads
    ``x_next = x0_hat + sigma_next * eps_hat`` with ``eps_hat = (x - x0_hat) / sigma``: exactly one Euler
    step of the probability-flow ODE (Karras et al. 2022, section 3), so DDIM is :func:`sample_euler` on the
    DDIM timesteps (``get_sigmas(..., "ddim")``). ``generator`` is accepted for a uniform signature."""
    del generator
    return sample_euler(denoiser, x, sigmas, callback=callback, disable_progress=disable_progress, step_end=step_end)


def get_ancestral_step(sigma_from: float, sigma_to: float, eta: float = 1.0) -> tuple[float, float]:
    """Split an ancestral step ``sigma_from -> sigma_to`` into a deterministic step down to ``sigma_down``
    and fresh noise of std ``sigma_up`` with ``sigma_down^2 + sigma_up^2 = sigma_to^2`` (k-diffusion's
    ``get_ancestral_step``; ``eta=1`` is the DDPM posterior variance, ``eta=0`` deterministic)."""
    if not eta:
        return sigma_to, 0.0
    sigma_up = min(sigma_to, eta * math.sqrt(max(sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2, 0.0)))
    sigma_down = math.sqrt(max(sigma_to**2 - sigma_up**2, 0.0))
    return sigma_down, sigma_up


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable_progress: bool = False,
    step_end: Callable[[int, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """Ancestral DPM-Solver++(2S) (Lu et al. 2022, "DPM-Solver++", Algorithm 1 with r = 1/2, in the form of
    k-diffusion's ``sample_dpmpp_2s_ancestral`` and sgm's ``DPMPP2SAncestralSampler``, which ART-V uses).

    Per step, with ``lambda = -log sigma`` and ``h = lambda(sigma_down) - lambda(sigma)``: a half step
    ``x_2 = (sigma_s / sigma) x - expm1(-h/2) D(x, sigma)`` to ``sigma_s = sqrt(sigma * sigma_down)``, then
    ``x = (sigma_down / sigma) x - expm1(-h) D(x_2, sigma_s)``, then noise ``sigma_up * n``. Two denoiser calls
    per step (one on the last step to sigma = 0, which is a plain Euler step)."""
    s = _steps(sigmas)
    gen = _generator(generator, x.device)
    for i in trange(len(s) - 1, disable=disable_progress, desc="dpm++2s_a", leave=False):
        denoised = denoiser(x, s[i])
        sigma_down, sigma_up = get_ancestral_step(s[i], s[i + 1], eta)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "sigma_hat": s[i], "denoised": denoised})
        if sigma_down == 0:
            x = denoised  # Euler step to sigma = 0: x + (x - D) / sigma * (0 - sigma)
        else:
            t, t_next = -math.log(s[i]), -math.log(sigma_down)
            h = t_next - t
            sigma_mid = math.exp(-(t + 0.5 * h))
            x_2 = (sigma_mid / s[i]) * x - math.expm1(-0.5 * h) * denoised
            denoised_2 = denoiser(x_2, sigma_mid)
            x = (sigma_down / s[i]) * x - math.expm1(-h) * denoised_2
        if s[i + 1] > 0 and sigma_up > 0:
            x = x + _randn_like(x, gen) * (s_noise * sigma_up)
        if step_end is not None:
            x = _replaced(x, step_end(i, x))
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor | Sequence[float],
    *,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    disable_progress: bool = False,
    step_end: Callable[[int, Tensor], Tensor | None] | None = None,
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2: the second-order multistep solver with data
    prediction, in the form of k-diffusion's ``sample_dpmpp_2m`` = diffusers' ``DPMSolverMultistepScheduler``
    with ``algorithm_type="dpmsolver++"``, ``solver_order=2``).

    With ``lambda = -log sigma`` and ``h = lambda(sigma_next) - lambda(sigma)``, each step is the exponential
    integrator ``x = (sigma_next / sigma) x - expm1(-h) D'``, where ``D' = D(x, sigma)`` on the first step
    (first order, DDIM) and on a step to sigma = 0 (where it is ``x = D``), and otherwise the linear
    extrapolation ``D' = (1 + 1 / (2 r)) D - 1 / (2 r) D_prev`` of the last two denoised estimates, with
    ``r = h_prev / h``. One denoiser call per step: the cost of DDIM/Euler, with second-order accuracy.
    Deterministic (``generator`` is accepted for a uniform signature). ``step_end(i, x)`` may replace ``x``
    after a step (the history of denoised estimates is kept, as diffusers' callbacks do)."""
    del generator
    s = _steps(sigmas)
    old_denoised: Tensor | None = None
    for i in trange(len(s) - 1, disable=disable_progress, desc="dpm++2m", leave=False):
        denoised = denoiser(x, s[i])
        if callback is not None:
            callback({"x": x, "i": i, "sigma": s[i], "sigma_hat": s[i], "denoised": denoised})
        if s[i + 1] == 0:
            x = denoised  # the exponential integrator's limit sigma_next -> 0
        else:
            h = math.log(s[i]) - math.log(s[i + 1])
            if old_denoised is None:
                estimate = denoised
            else:
                r = (math.log(s[i - 1]) - math.log(s[i])) / h
                estimate = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = (s[i + 1] / s[i]) * x - math.expm1(-h) * estimate
        old_denoised = denoised
        if step_end is not None:
            x = _replaced(x, step_end(i, x))
    return x


@dataclass(frozen=True)
class SamplerSpec:
    """A registered sampler: its function, its default sigma schedule, and whether it draws noise."""

    fn: Callable[..., Tensor]
    schedule: str
    stochastic: bool
    description: str


#: Samplers by name; the key is what users pass as ``sampler=`` (CLI ``--sampler``).
SAMPLERS: Mapping[str, SamplerSpec] = MappingProxyType(
    {
        "ddim": SamplerSpec(sample_ddim, "ddim", False, "DDIM eta=0 on SD's DDIM timesteps (diffusers DDIMScheduler)"),
        "euler": SamplerSpec(sample_euler, "euler", False, "Euler ODE on diffusers EulerDiscreteScheduler sigmas"),
        "edm_euler": SamplerSpec(
            sample_euler, "karras", False, "Euler ODE on the Karras/EDM rho=7 sigmas (MicroCinema's EulerEDM)"
        ),
        "dpmpp_2s_ancestral": SamplerSpec(
            sample_dpmpp_2s_ancestral, "sgm", True, "DPM++ 2S ancestral on sgm's DDPM sigmas (ART-V's sampler)"
        ),
        "dpmpp_2m": SamplerSpec(
            sample_dpmpp_2m, "karras", False, "DPM-Solver++(2M) multistep on the Karras/EDM rho=7 sigmas (Lu et al. 2022)"
        ),
    }
)


#: The ``sampler`` name that runs the scheduler's own loop (:func:`sample_with_scheduler`).
SCHEDULER_LOOP = "scheduler"


def _check_sampler(name: str) -> SamplerSpec:
    if name not in SAMPLERS:
        raise MicroCinemaError(f"unknown sampler {name!r}; allowed: {', '.join([*SAMPLERS, SCHEDULER_LOOP])}")
    return SAMPLERS[name]


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise MicroCinemaError(f"unsupported prediction_type {prediction_type!r}; allowed: {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def _abar(alphas_cumprod: Tensor, t: Tensor, like: Tensor) -> Tensor:
    """``abar`` at timesteps ``t`` (scalar or (B,), possibly fractional: interpolated in log sigma as
    :class:`~microcinema.core.diffusion.VPDenoiser` does), shaped to broadcast over ``like``."""
    t = torch.as_tensor(t).detach().cpu().to(torch.float64)
    if bool((t == t.round()).all()):
        abar = alphas_cumprod[t.long()]
    else:
        sigma = VPDenoiser(None, alphas_cumprod).t_to_sigma(t)
        abar = 1.0 / (1.0 + sigma**2)
    abar = abar.to(device=like.device, dtype=like.dtype)
    return abar.reshape(-1, *([1] * (like.ndim - 1))) if abar.ndim else abar


def eps_from_prediction(output: Tensor, x_t: Tensor, t: Tensor, prediction_type: str, alphas_cumprod: Any = None) -> Tensor:
    """The noise prediction from a network ``output`` at ``x_t = sqrt(abar) x0 + sqrt(1 - abar) eps``:
    ``epsilon`` as is; ``v_prediction`` (Salimans & Ho 2022, ``v = sqrt(abar) eps - sqrt(1 - abar) x0``):
    ``eps = sqrt(abar) v + sqrt(1 - abar) x_t`` (since ``abar + (1 - abar) = 1``)."""
    if check_prediction_type(prediction_type) == "epsilon":
        return output
    abar = _abar(alphas_cumprod_of(alphas_cumprod), t, output).to(torch.float64)
    return (abar.sqrt() * output.double() + (1 - abar).sqrt() * x_t.double()).to(output.dtype)


def prediction_from_eps(eps: Tensor, x_t: Tensor, t: Tensor, prediction_type: str, alphas_cumprod: Any = None) -> Tensor:
    """The inverse of :func:`eps_from_prediction`: ``v = (eps - sqrt(1 - abar) x_t) / sqrt(abar)``."""
    if check_prediction_type(prediction_type) == "epsilon":
        return eps
    abar = _abar(alphas_cumprod_of(alphas_cumprod), t, eps).to(torch.float64)
    return ((eps.double() - (1 - abar).sqrt() * x_t.double()) / abar.sqrt()).to(eps.dtype)


def _kept_steps(num_inference_steps: int, strength: float) -> int:
    if not (isinstance(strength, (int, float)) and 0 < strength <= 1):
        raise MicroCinemaError(f"strength must be in (0, 1] (the fraction of the steps to run), got {strength!r}")
    kept = min(int(num_inference_steps * strength + 1e-9), num_inference_steps)  # 1e-9: float error in k / N * N
    if kept < 1:
        raise MicroCinemaError(f"strength {strength} runs no step of {num_inference_steps}: raise strength to at "
                               f"least {1 / num_inference_steps:.3g} or num_inference_steps")
    return kept


@torch.no_grad()
def sample_with_scheduler(
    eps_model: EpsModel,
    x_T: Tensor,
    scheduler: Any,
    num_inference_steps: int,
    *,
    generator: torch.Generator | None = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    step_callback: StepCallback | None = None,
) -> Tensor:
    """A diffusers scheduler's own loop (``StableDiffusionPipeline``'s): ``set_timesteps``, then per timestep
    ``scale_model_input``, the network, ``step``. ``eps_model`` returns noise predictions (guided, wrapped);
    they are turned into the scheduler's ``prediction_type`` for ``step``. ``x_T``: the initial noise (with any
    prior mean already added), scaled by ``init_noise_sigma``. ``init``/``strength``: img2img as diffusers'
    (``StableDiffusionImg2ImgPipeline``: the last ``int(N * strength)`` timesteps, from ``add_noise(init, x_T)``).
    Changes the scheduler's state (its timesteps), as diffusers pipelines do. ``step_callback`` gets (and may
    replace) the scheduler's own latents after each ``step``, unconverted, as diffusers' ``callback_on_step_end``
    (VE scale for Euler-style schedulers: see :data:`StepCallback`)."""
    prediction_type = check_prediction_type(scheduler.config.get("prediction_type", "epsilon"))
    ac = alphas_cumprod_of(scheduler)
    scheduler.set_timesteps(num_inference_steps, device=x_T.device)
    timesteps = scheduler.timesteps
    order = getattr(scheduler, "order", 1)
    if init is not None:
        start = (num_inference_steps - _kept_steps(num_inference_steps, strength)) * order
        timesteps = timesteps[start:]
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start)
        if init.shape != x_T.shape:
            raise MicroCinemaError(f"init shape {tuple(init.shape)} must equal the noise shape {tuple(x_T.shape)}")
        latents = scheduler.add_noise(init.to(x_T), x_T, timesteps[:1].repeat(x_T.shape[0]))
    else:
        latents = x_T * scheduler.init_noise_sigma
    step_kwargs = {"generator": generator} if "generator" in inspect.signature(scheduler.step).parameters else {}
    for i, t in enumerate(timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        t_batch = t.reshape(1).expand(latents.shape[0])
        eps = eps_model(model_input, t_batch)
        output = prediction_from_eps(eps, model_input, t_batch, prediction_type, ac)
        latents = scheduler.step(output, t, latents, **step_kwargs, return_dict=False)[0]
        if step_callback is not None:
            latents = _replaced(latents, step_callback(i, t, latents))
    return latents


def sample(
    eps_model: EpsModel,
    noise_or_x_T: Tensor | Sequence[int],
    *,
    sampler: str = "ddim",
    num_inference_steps: int = 25,
    scheduler: Any = None,
    generator: torch.Generator | None = None,
    init_mean: Tensor | float | None = None,
    progress: bool = True,
    callback: Callback | None = None,
    schedule: str | None = None,
    sampler_kwargs: Mapping[str, Any] | None = None,
    init: Tensor | None = None,
    strength: float = 1.0,
    step_callback: StepCallback | None = None,
) -> Tensor:
    """Generate with ``eps_model`` from ``x_T`` and return the sample in VP/latent scale.

    ``noise_or_x_T``: the initial latent in VP coordinates, normally unit Gaussian noise (any shape, batch
    first), or a shape to draw it from ``generator``. ``init_mean`` (tensor broadcastable to it, or float) is
    added in VP coordinates, i.e. ``x_T ~ N(init_mean, I)``, MicroCinema's Appearance Noise Prior
    ``N((lambda + gamma) z_c, I)`` (its appendix B.3). Both are then mapped to VE coordinates by
    ``sqrt(1 + sigma_max^2) = 1 / sqrt(abar_T)``: the mean is scaled like the noise, because the prior lives
    in the noise ``eps`` and ``x = x0 + sigma * eps``. (Adding ``init_mean`` unscaled in VE coordinates would
    weaken it by about ``1 / sigma_max``, ~15x at SD's schedule.)

    ``sampler``: a key of :data:`SAMPLERS`; ``schedule`` overrides its default sigma schedule (one of
    :data:`SCHEDULES`); ``sampler_kwargs`` go to the sampler function (``eta``, ``s_churn``, ...).
    ``scheduler``: a diffusers scheduler (or ``alphas_cumprod``) the model was trained with; SD's by default.
    The output is ``x_end / sqrt(1 + sigma_end^2)``: the clean sample when the schedule ends at 0; for
    ``"ddim"`` it is ``z`` at ``t = 0`` exactly as SD's ``DDIMScheduler`` (``set_alpha_to_one=False``) returns it.

    ``init`` (clean latents, the shape of the noise) with ``strength`` in (0, 1]: SDEdit (Meng et al. 2022,
    section 3), as diffusers' img2img pipelines: only the last ``int(num_inference_steps * strength)`` steps
    run, from ``init`` noised to the first of them, ``z_t = sqrt(abar_t) init + sqrt(1 - abar_t) x_T`` (with
    ``init_mean`` in ``x_T`` as above: the noise's own mean, e.g. the prior's ``lambda z_c``).

    ``sampler="scheduler"``: ``scheduler`` (a diffusers scheduler) runs its own loop instead
    (:func:`sample_with_scheduler`), from the same ``x_T`` and ``init_mean``. ``step_callback``: see
    :data:`StepCallback`. Runs under ``torch.no_grad``.
    """
    if sampler == SCHEDULER_LOOP:
        if scheduler is None or not hasattr(scheduler, "set_timesteps"):
            raise MicroCinemaError("sampler 'scheduler' needs a diffusers scheduler (scheduler=...)")
        if schedule is not None or sampler_kwargs:
            raise MicroCinemaError("sampler 'scheduler' takes its schedule and options from the scheduler's config")
        if not isinstance(num_inference_steps, (int, np.integer)) or num_inference_steps < 1:
            raise MicroCinemaError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}")
        x_T = noise_or_x_T if isinstance(noise_or_x_T, Tensor) else randn(tuple(noise_or_x_T), generator=generator)
        if init_mean is not None:
            x_T = x_T + _checked_mean(init_mean, x_T)
        return sample_with_scheduler(eps_model, x_T, scheduler, int(num_inference_steps), generator=generator,
                                     init=init, strength=strength, step_callback=step_callback)
    spec = _check_sampler(sampler)
    ac = alphas_cumprod_of(scheduler)
    sigmas = get_sigmas(ac, num_inference_steps, schedule or spec.schedule)
    if init is not None:
        kept = _kept_steps(num_inference_steps, strength)
        sigmas = sigmas[num_inference_steps - kept:]
    if isinstance(noise_or_x_T, Tensor):
        x_T = noise_or_x_T
    else:
        x_T = randn(tuple(noise_or_x_T), generator=generator)
    if init_mean is not None:
        x_T = x_T + _checked_mean(init_mean, x_T)
    denoiser = VPDenoiser(eps_model, ac)
    s0, s_end = float(sigmas[0]), float(sigmas[-1])
    if init is None:
        x = x_T * math.sqrt(1.0 + s0**2)
    else:
        if init.shape != x_T.shape:
            raise MicroCinemaError(f"init shape {tuple(init.shape)} must equal the noise shape {tuple(x_T.shape)}")
        x = init.to(x_T) + s0 * x_T  # VE coordinates: x = x0 + sigma * eps
    step_end = None
    if step_callback is not None:
        levels = [float(v) for v in sigmas]
        timesteps = denoiser.sigma_to_t(torch.tensor(levels[:-1], dtype=torch.float64)).to(torch.float32)

        def step_end(i: int, x_ve: Tensor) -> Tensor | None:  # VE <-> VP at the level the step reached
            scale = math.sqrt(1.0 + levels[i + 1] ** 2)
            latents = x_ve / scale
            new = step_callback(i, timesteps[i], latents)
            return None if new is None or new is latents else new.to(x_ve) * scale

    with torch.no_grad():
        x = spec.fn(
            denoiser,
            x,
            sigmas,
            generator=generator,
            callback=callback,
            disable_progress=not progress,
            **({"step_end": step_end} if step_end is not None else {}),
            **dict(sampler_kwargs or {}),
        )
    return x / math.sqrt(1.0 + s_end**2)


def _checked_mean(init_mean: Tensor | float, x_T: Tensor) -> Tensor:
    mean = torch.as_tensor(init_mean, dtype=x_T.dtype, device=x_T.device)
    try:
        torch.broadcast_shapes(mean.shape, x_T.shape)
    except RuntimeError as err:
        raise MicroCinemaError(
            f"init_mean shape {tuple(mean.shape)} does not broadcast to the latent shape {tuple(x_T.shape)}"
        ) from err
    return mean
