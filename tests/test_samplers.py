"""Tests for the diffusion core: schedules, samplers against diffusers, known-answer sampling, seeding.

Known-answer cases: for data x0 ~ N(mu, S) the exact noise predictor is analytic in VP coordinates,
``E[eps | z_t] = sqrt(1 - abar) (abar S + (1 - abar) I)^-1 (z_t - sqrt(abar) mu)`` (likewise for a Gaussian
mixture, weighted by the component posteriors), so sampling with it must reproduce the data distribution up
to the sampler's discretization error (first order in the step count for all samplers here: Euler/DDIM by
construction, DPM++ 2S because its last step to sigma = 0 is an Euler step) plus Monte Carlo error.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

from microcinema.core.diffusion import (
    VPDenoiser,
    add_noise,
    alphas_cumprod_of,
    DiffusionLoss,
    append_dims,
    make_training_scheduler,
    random_timesteps,
    ve_to_vp,
    vp_to_ve,
)
from microcinema.core.errors import MicroCinemaError
from microcinema.core.samplers import SAMPLERS, SCHEDULES, get_sigmas, sample

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
AC = alphas_cumprod_of(None)
SCHEDULE = VPDenoiser(lambda x, t: x, AC)  # only for t -> sigma in the analytic models


def abar_at(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """abar at continuous timesteps t (consistent with VPDenoiser's sigma <-> t), broadcast to ``like``."""
    sig = SCHEDULE.t_to_sigma(t.detach().double().cpu())
    return append_dims(1.0 / (1.0 + sig**2), like.ndim).to(like)


def gaussian_eps(mu: float, s: float, prior: float = 0.0):
    """Exact eps-predictor for x0 ~ N(mu, s^2) per element, trained with noise ``prior + n`` (MicroCinema's
    Appearance Noise Prior with a constant z_c; prior = 0 is plain DDPM)."""

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar_at(t, z)
        # z = sqrt(a) x0 + sqrt(1-a) (n + prior): E[n + prior | z] = prior + sqrt(1-a) (z - mean_z) / var_z
        mean_z = a.sqrt() * mu + (1 - a).sqrt() * prior
        return prior + (1 - a).sqrt() * (z - mean_z) / (a * s * s + 1 - a)

    return eps


def exact_start(x0: torch.Tensor, n: torch.Tensor, sigma0: float) -> torch.Tensor:
    """A draw of the exact noisy marginal at sigma0, in VP coordinates: (x0 + sigma0 n) / sqrt(1 + sigma0^2)."""
    return (x0 + sigma0 * n) / math.sqrt(1 + sigma0**2)


def normal_quantiles(shape: tuple[int, ...]) -> torch.Tensor:
    """Evenly spaced standard-normal quantiles (a noise-free stand-in for N(0, 1) draws)."""
    n = math.prod(shape)
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.distributions.Normal(0.0, 1.0).icdf(u).float().reshape(shape)


# ---------------------------------------------------------------------------------- 1. against diffusers


def linear_eps(seed: int = 0):
    """A fixed, deterministic, non-trivial eps function of (z, t) on (B, C, F, H, W) latents."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(4, 4, generator=g) * 0.15
    bias = torch.randn(4, generator=g) * 0.1

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        tt = append_dims(torch.as_tensor(t, dtype=z.dtype).reshape(-1).expand(z.shape[0]) / 1000.0, z.ndim)
        return 0.9 * z + torch.einsum("ij,bj...->bi...", mix, z) * (1 - tt) + append_dims(bias, z.ndim - 1) * tt

    return eps


def video_noise(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 4, 3, 5, 5, generator=torch.Generator().manual_seed(seed))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("steps", [10, 25])
def test_ddim_matches_diffusers(steps: int) -> None:
    eps, x_T = linear_eps(), video_noise()
    sch = DDIMScheduler(**SD, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sch.set_timesteps(steps)
    z = x_T.clone()  # DDIM starts from unit noise in VP coordinates (init_noise_sigma = 1)
    for t in sch.timesteps:
        z = sch.step(eps(z, t.float()), t, z).prev_sample
    ours = sample(eps, x_T, sampler="ddim", num_inference_steps=steps, progress=False)
    assert rel_err(ours, z) < 1e-5  # measured ~5e-7 (float32 rounding)


@pytest.mark.parametrize("strength", [0.4, 0.75, 1.0])
def test_sdedit_matches_diffusers_img2img(strength: float) -> None:
    """``init``/``strength`` as diffusers' img2img pipelines: the last int(N * strength) DDIM timesteps, from
    ``scheduler.add_noise(init, noise, first timestep)``."""
    eps, noise = linear_eps(), video_noise()
    init = torch.randn(noise.shape, generator=torch.Generator().manual_seed(7))
    sch = DDIMScheduler(**SD, set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    sch.set_timesteps(25)
    timesteps = sch.timesteps[25 - int(25 * strength):]
    z = sch.add_noise(init, noise, timesteps[:1])
    for t in timesteps:
        z = sch.step(eps(z, t.float()), t, z).prev_sample
    calls = []
    counted = lambda z_t, t: calls.append(float(t.flatten()[0])) or eps(z_t, t)  # noqa: E731
    ours = sample(counted, noise, sampler="ddim", num_inference_steps=25, init=init, strength=strength, progress=False)
    assert len(calls) == len(timesteps) and abs(calls[0] - float(timesteps[0])) < 1e-6
    assert rel_err(ours, z) < 1e-5


def test_sdedit_user_errors() -> None:
    eps, noise = linear_eps(), video_noise()
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(MicroCinemaError, match=r"strength must be in \(0, 1\]"):
            sample(eps, noise, init=noise, strength=bad, progress=False)
    with pytest.raises(MicroCinemaError, match="runs no step of 10"):
        sample(eps, noise, num_inference_steps=10, init=noise, strength=0.05, progress=False)
    with pytest.raises(MicroCinemaError, match="init shape"):
        sample(eps, noise, init=noise[:1], strength=0.5, progress=False)


@pytest.mark.parametrize("sampler,karras", [("euler", False), ("edm_euler", True)])
def test_euler_matches_diffusers(sampler: str, karras: bool) -> None:
    eps, x_T = linear_eps(), video_noise()
    sch = EulerDiscreteScheduler(**SD, use_karras_sigmas=karras)
    sch.set_timesteps(25)
    assert torch.allclose(get_sigmas(AC, 25, SAMPLERS[sampler].schedule).float(), sch.sigmas, rtol=1e-5, atol=1e-6)
    # diffusers scales the start by init_noise_sigma = sigma_max; we use the exact VP->VE factor
    # sqrt(1 + sigma_max^2) (see microcinema.core.samplers), so hand diffusers our starting point.
    x = x_T * math.sqrt(1 + float(sch.sigmas[0]) ** 2)
    for t in sch.timesteps:
        x = sch.step(eps(sch.scale_model_input(x, t), t), t, x).prev_sample
    ours = sample(eps, x_T, sampler=sampler, num_inference_steps=25, progress=False)
    assert rel_err(ours, x) < 1e-5  # measured ~5e-7


def test_schedules() -> None:
    for kind in SCHEDULES:
        s = get_sigmas(AC, 30, kind)
        assert s.shape == (31,) and bool((s[:-1] > s[1:]).all())
    ddim = get_sigmas(AC, 25, "ddim")  # SD: t = 961, 921, ..., 1, then abar_0 (set_alpha_to_one=False)
    assert torch.allclose(ddim[[0, -2, -1]], SCHEDULE.sigmas[[961, 1, 0]])
    karras = get_sigmas(AC, 7, "karras")
    assert math.isclose(karras[0], SCHEDULE.sigma_max) and math.isclose(karras[-2], SCHEDULE.sigma_min)
    sgm = get_sigmas(AC, 50, "sgm")  # sgm LegacyDDPMDiscretization: 999, 979, ..., 19, then 0
    assert torch.allclose(sgm[[0, 1, -2]], SCHEDULE.sigmas[[999, 979, 19]]) and sgm[-1] == 0


def test_sigma_t_roundtrip_and_coordinates() -> None:
    t = torch.tensor([0.0, 1.0, 17.25, 500.5, 999.0], dtype=torch.float64)
    assert torch.allclose(SCHEDULE.sigma_to_t(SCHEDULE.t_to_sigma(t)), t, atol=1e-9)
    z = torch.randn(3, 2, 4)
    sig = torch.tensor([0.1, 1.0, 10.0])
    assert torch.allclose(ve_to_vp(vp_to_ve(z, sig), sig), z, atol=1e-6)
    # a per-sample sigma gives the same as per-sample scalar calls
    eps = linear_eps()
    den = VPDenoiser(eps, AC)
    x = torch.randn(3, 4, 2, 2)
    together = den(x, sig)
    single = torch.cat([den(x[i : i + 1], float(sig[i])) for i in range(3)])
    assert torch.allclose(together, single, atol=1e-6)


# ---------------------------------------------------------------------------------- 2. known answers

MU, S = 0.5, 1.0  # unit-variance latents, as SD's scaled latents
SHAPE = (8, 5000)  # 40k scalars; the batch dim stays small (per-sample timesteps cost)


@pytest.mark.parametrize("sampler", ["ddim", "euler", "edm_euler", "dpmpp_2s_ancestral"])
def test_gaussian_ode_samplers_converge_to_exact(sampler: str) -> None:
    """Deterministic samplers (DPM++ 2S with eta = 0) started from noise-free quantiles of the exact marginal:
    on Gaussian data they are affine maps, the mean is transported exactly, and the std error is pure
    discretization error, first order: <= 4% at 50 steps (measured 1-3%) and halving from 50 to 100 steps."""
    # x0 and n both as quantiles would be perfectly correlated; use a quantile n and a shuffled quantile x0
    n = normal_quantiles(SHAPE)
    perm = torch.randperm(n.numel(), generator=torch.Generator().manual_seed(3))
    x0 = MU + S * n.flatten()[perm].reshape(SHAPE)
    errs = []
    for steps in (50, 100):
        sigmas = get_sigmas(AC, steps, SAMPLERS[sampler].schedule)
        s0, se = float(sigmas[0]), float(sigmas[-1])
        kw = {"sampler_kwargs": {"eta": 0.0}} if "ancestral" in sampler else {}
        x_T = exact_start(x0, n, s0)
        out = sample(gaussian_eps(MU, S), x_T, sampler=sampler, num_inference_steps=steps, progress=False, **kw)
        a_e = 1 / (1 + se**2)  # ddim ends at t = 0, not sigma = 0: the target is z_0 = sqrt(a_e) x0 + ...
        # exact flow of the actual start: VE deviations scale by sqrt(s^2 + sigma^2) / sqrt(s^2 + s0^2)
        start_std = float(x_T.std()) * math.sqrt(1 + s0**2) / math.sqrt(S * S + s0 * s0)
        assert abs(float(out.mean()) - math.sqrt(a_e) * MU) < 2e-3
        errs.append(float(out.std()) / (start_std * math.sqrt(a_e * S * S + 1 - a_e)) - 1)
    assert abs(errs[0]) < 0.04
    assert 0.35 < errs[1] / errs[0] < 0.65, errs


def test_gaussian_dpmpp_2s_ancestral() -> None:
    """ART-V's ancestral sampler, 50 steps, 200k scalars from the exact marginal. Tolerances: mean 4 standard
    errors (S / sqrt(N) = 0.0022); std 3% = first-order discretization bias (~1.3% measured at 50 steps on
    the sgm schedule) + 4 standard errors of the std (S / sqrt(2N) = 0.0016)."""
    g = torch.Generator().manual_seed(0)
    shape = (8, 25000)
    s0 = float(get_sigmas(AC, 50, "sgm")[0])
    x_T = exact_start(MU + S * torch.randn(shape, generator=g), torch.randn(shape, generator=g), s0)
    out = sample(
        gaussian_eps(MU, S), x_T, sampler="dpmpp_2s_ancestral", num_inference_steps=50, generator=g, progress=False
    )
    se = S / math.sqrt(out.numel())
    assert abs(float(out.mean()) - MU) < 4 * se
    assert abs(float(out.std()) / S - 1) < 0.03


def test_anisotropic_gaussian_2d() -> None:
    """x0 ~ N(mu, Sigma) in 2-D with a correlated covariance (principal stds 1.2 and 0.4 at 30 degrees),
    channels as the 2-D axis: the exact eps mixes channels. Principal stds within 6% (first-order bias,
    larger for the small axis), axis angle within 2 degrees, mean within 0.02 (4 standard errors)."""
    th = math.radians(30)
    rot = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    cov = rot @ torch.diag(torch.tensor([1.2**2, 0.4**2])) @ rot.T
    mu = torch.tensor([0.3, -0.2])

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # z: (B, 2, M)
        a = float(abar_at(t[:1], t[:1]))
        c = a * cov + (1 - a) * torch.eye(2)
        return math.sqrt(1 - a) * torch.einsum("ij,bjm->bim", torch.linalg.inv(c), z - math.sqrt(a) * mu[None, :, None])

    g = torch.Generator().manual_seed(1)
    for sampler in ("edm_euler", "dpmpp_2s_ancestral"):
        s0 = float(get_sigmas(AC, 50, SAMPLERS[sampler].schedule)[0])
        white = torch.randn(4, 2, 5000, generator=g)
        x0 = mu[None, :, None] + torch.einsum("ij,bjm->bim", torch.linalg.cholesky(cov), white)
        x_T = exact_start(x0, torch.randn(x0.shape, generator=g), s0)
        out = sample(eps, x_T, sampler=sampler, num_inference_steps=50, generator=g, progress=False)
        pts = out.permute(1, 0, 2).reshape(2, -1)
        assert torch.allclose(pts.mean(1), mu, atol=0.02)
        evals, evecs = torch.linalg.eigh(torch.cov(pts))
        assert torch.allclose(evals.sqrt(), torch.tensor([0.4, 1.2]), rtol=0.06), evals.sqrt()
        angle = math.degrees(math.atan2(float(evecs[1, 1]), float(evecs[0, 1]))) % 180
        assert abs(angle - 30) < 2, angle


def test_two_mode_mixture() -> None:
    """x0 ~ 0.3 N(-1.5, 0.3^2) + 0.7 N(1.2, 0.4^2): a non-linear exact denoiser. Mode weight within 0.015
    (MC SE 0.0023; the sampler may shift mass slightly), each mode's mean within 0.03."""
    w, m, sd = torch.tensor([0.3, 0.7]), torch.tensor([-1.5, 1.2]), torch.tensor([0.3, 0.4])

    def eps(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = abar_at(t, z)[..., None]
        var = a * sd**2 + 1 - a
        zz = z[..., None]
        logp = torch.log(w) - 0.5 * (zz - a.sqrt() * m) ** 2 / var - 0.5 * torch.log(var)
        r = torch.softmax(logp, dim=-1)
        return (r * (1 - a).sqrt() * (zz - a.sqrt() * m) / var).sum(-1)

    g = torch.Generator().manual_seed(2)
    n = 40000
    for sampler in ("edm_euler", "dpmpp_2s_ancestral"):
        s0 = float(get_sigmas(AC, 50, SAMPLERS[sampler].schedule)[0])
        k = (torch.rand(n, generator=g) < w[1]).long()
        x0 = (m[k] + sd[k] * torch.randn(n, generator=g)).reshape(8, -1)
        x_T = exact_start(x0, torch.randn(x0.shape, generator=g), s0)
        out = sample(eps, x_T, sampler=sampler, num_inference_steps=50, generator=g, progress=False).flatten()
        hi = out > -0.15
        assert abs(float(hi.float().mean()) - 0.7) < 0.015
        assert abs(float(out[hi].mean()) - 1.2) < 0.03 and abs(float(out[~hi].mean()) + 1.5) < 0.03


# ---------------------------------------------------------------------------------- 3. reproducibility


@pytest.mark.parametrize("sampler", ["dpmpp_2s_ancestral", "edm_euler"])
def test_seeded_runs_reproducible(sampler: str) -> None:
    eps = linear_eps()

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample(eps, (2, 4, 3, 4, 4), sampler=sampler, num_inference_steps=6, generator=g, progress=False)

    assert torch.equal(run(5), run(5))
    assert not torch.allclose(run(5), run(6))


def test_no_global_rng_use() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = sample(linear_eps(), (1, 4, 2, 3, 3), sampler="dpmpp_2s_ancestral", num_inference_steps=4, progress=False)
    assert torch.equal(state, torch.get_rng_state())
    b = sample(linear_eps(), (1, 4, 2, 3, 3), sampler="dpmpp_2s_ancestral", num_inference_steps=4, progress=False)
    assert not torch.equal(a, b)  # unseeded runs draw fresh OS-seeded noise


# ---------------------------------------------------------------------------------- 5. init_mean


@pytest.mark.parametrize("sampler", ["ddim", "edm_euler"])
def test_init_mean_noise_prior(sampler: str) -> None:
    """Appearance Noise Prior (MicroCinema appendix B): a model trained with noise ``p + n`` (p = 1.5 here)
    and sampled from x_T ~ N(p, I) recovers the data mean; from N(0, I) it is off by about -s * p.

    Known answer: on Gaussian data the exact ODE keeps the VE mean path ``m + sigma p`` and scales deviations
    from it, so a deterministic sampler is ``x_end = m + s_end p + A (x_start - m - s0 p)`` in VE coordinates,
    with slope A = sqrt(s^2 + s_end^2) / sqrt(s^2 + s0^2) up to first-order discretization error (the slope
    is measured from the output std and checked against the exact one within 6%). ``init_mean`` enters
    ``x_start`` scaled like the noise: ``x_start = sqrt(1 + s0^2) (x_T + init_mean)``."""
    m, s, prior = 0.3, 0.6, 1.5
    eps = gaussian_eps(m, s, prior)
    n = normal_quantiles((8, 2000))
    sigmas = get_sigmas(AC, 50, SAMPLERS[sampler].schedule)
    s0, se = float(sigmas[0]), float(sigmas[-1])
    means = {}
    for start_mean in (0.0, prior):
        out = sample(eps, n, init_mean=start_mean or None, sampler=sampler, num_inference_steps=50, progress=False)
        out_ve, start_ve = out * math.sqrt(1 + se * se), (n + start_mean) * math.sqrt(1 + s0 * s0)
        slope = float(out_ve.std() / start_ve.std())
        assert abs(slope / (math.sqrt(s * s + se * se) / math.sqrt(s * s + s0 * s0)) - 1) < 0.06
        expected = m + se * prior + slope * (float(start_ve.mean()) - m - s0 * prior)
        assert abs(float(out_ve.mean()) - expected) < 1e-3
        means[start_mean] = float(out_ve.mean()) - se * prior  # the data-mean estimate
    assert abs(means[prior] - m) < 0.02  # with init_mean the data mean is recovered ...
    assert abs(means[0.0] - (m - s * prior)) < 0.1  # ... without it, it is ~ s * p = 0.9 too low


def test_init_mean_tensor_broadcast() -> None:
    eps = gaussian_eps(0.0, 0.5)
    x_T = torch.zeros(2, 4, 3, 2, 2)
    z_c = torch.randn(2, 4, 1, 2, 2)  # one key frame latent, broadcast over frames
    base = sample(eps, x_T, sampler="ddim", num_inference_steps=10, progress=False)
    shifted = sample(eps, x_T, init_mean=z_c, sampler="ddim", num_inference_steps=10, progress=False)
    # linear model, zero data mean: shifting x_T by z_c shifts the output by (output for x_T = z_c)
    direct = sample(eps, z_c.expand_as(x_T).contiguous(), sampler="ddim", num_inference_steps=10, progress=False)
    assert torch.allclose(shifted - base, direct, atol=1e-5)
    with pytest.raises(MicroCinemaError, match="broadcast"):
        sample(eps, x_T, init_mean=torch.zeros(3, 3), progress=False)


# ---------------------------------------------------------------------------------- errors, training helpers


def test_user_errors() -> None:
    eps = linear_eps()
    with pytest.raises(MicroCinemaError, match="allowed: ddim, euler, edm_euler, dpmpp_2s_ancestral"):
        sample(eps, (1, 4, 2, 2), sampler="plms", progress=False)
    for bad in (0, -3, 2.5):
        with pytest.raises(MicroCinemaError, match="positive integer"):
            sample(eps, (1, 4, 2, 2), num_inference_steps=bad, progress=False)
    with pytest.raises(MicroCinemaError, match="at most 999"):
        get_sigmas(AC, 1000, "ddim")
    with pytest.raises(MicroCinemaError, match="allowed: ddim, euler, karras, sgm"):
        get_sigmas(AC, 10, "cosine")


def test_training_helpers_5d() -> None:
    sched = make_training_scheduler()
    assert isinstance(sched, DDPMScheduler) and sched.config.beta_schedule == "scaled_linear"
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 2, 4, 4, generator=g)
    z_c = torch.randn(3, 4, 1, 4, 4, generator=g)
    noise = 0.03 * z_c + torch.randn(x0.shape, generator=g)  # Appearance Noise Prior noise
    t = random_timesteps(3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, random_timesteps(3, generator=torch.Generator().manual_seed(1)))
    assert torch.allclose(add_noise(x0, noise, t, sched), sched.add_noise(x0, noise, t), atol=1e-6)
    # an oracle that inverts the forward process has zero loss: the target is exactly the noise passed in
    ac = alphas_cumprod_of(sched)

    def oracle(z: torch.Tensor, tt: torch.Tensor) -> torch.Tensor:
        a = append_dims(ac[tt.long()].float(), z.ndim)
        return (z - a.sqrt() * x0) / (1 - a).sqrt()

    loss = DiffusionLoss(sched, timesteps=lambda b, g: t)
    assert float(loss(oracle, x0, torch.Generator(), noise_prior=lambda n: noise)) < 1e-10


def test_min_snr_weights_cap_the_clean_steps_and_keep_the_noisy_ones() -> None:
    from microcinema.core.diffusion import alphas_cumprod_of, min_snr_weights
    from microcinema.core.errors import MicroCinemaError

    t = torch.arange(1000)
    weights = min_snr_weights(t, 5.0)
    abar = alphas_cumprod_of(None)
    snr = (abar / (1 - abar)).float()
    noisy = snr <= 5
    assert 0 < int(noisy.sum()) < 1000  # SD's schedule crosses SNR 5 inside [0, 1000)
    assert torch.all(weights[noisy] == 1)  # plain epsilon loss where SNR <= gamma
    torch.testing.assert_close(weights[~noisy], 5 / snr[~noisy])  # x0 error weighted by gamma, not by SNR
    assert weights[0] < 0.01 and torch.all(weights[1:] >= weights[:-1])
    with pytest.raises(MicroCinemaError, match="gamma must be > 0"):
        min_snr_weights(t, 0.0)


# --- prediction types, the scheduler loop and step callbacks (issue 15) ---------------------------------------


def test_v_prediction_converts_to_the_noise_and_back():
    from microcinema.core.diffusion import alphas_cumprod_of
    from microcinema.core.samplers import eps_from_prediction, prediction_from_eps

    torch.manual_seed(0)
    x0, eps = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    t = torch.tensor([10, 500, 990])
    abar = alphas_cumprod_of(None)[t].float().view(-1, 1, 1, 1)
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    v = abar.sqrt() * eps - (1 - abar).sqrt() * x0  # Salimans & Ho 2022
    torch.testing.assert_close(eps_from_prediction(v, x_t, t, "v_prediction"), eps, atol=1e-5, rtol=0)
    torch.testing.assert_close(prediction_from_eps(eps, x_t, t, "v_prediction"), v, atol=1e-4, rtol=0)
    assert eps_from_prediction(v, x_t, t, "epsilon") is v
    with pytest.raises(MicroCinemaError, match="unsupported prediction_type 'sample'"):
        eps_from_prediction(v, x_t, t, "sample")


def test_scheduler_loop_is_the_schedulers_own_and_callbacks_can_replace_latents():
    from diffusers import DDIMScheduler

    from microcinema.testing import SD_SCHEDULER_KWARGS

    scheduler = DDIMScheduler(**SD_SCHEDULER_KWARGS)
    eps_model = lambda x, t: 0.1 * x  # noqa: E731
    noise = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    want = noise.clone()
    scheduler.set_timesteps(4)
    for t in scheduler.timesteps:
        want = scheduler.step(0.1 * want, t, want).prev_sample
    seen = []
    got = sample(eps_model, noise, sampler="scheduler", scheduler=scheduler, num_inference_steps=4,
                 step_callback=lambda i, t, z: seen.append((i, int(t))))
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    assert seen == [(i, int(t)) for i, t in enumerate(scheduler.timesteps)]
    # ddim with the same callback: called after each step with VP latents, the scheduler loop's own after that
    # step (not the VE ones, sqrt(1 + sigma^2) larger, a wrong scale would fail here)
    reference, steps = [], []
    scheduler.set_timesteps(4)
    z = noise.clone()
    for t in scheduler.timesteps:
        z = scheduler.step(0.1 * z, t, z).prev_sample
        reference.append(z)
    sample(eps_model, noise, sampler="ddim", num_inference_steps=4,
           step_callback=lambda i, t, z: steps.append((i, float(t), z.clone())))
    assert [i for i, _, _ in steps] == [0, 1, 2, 3] and steps[0][1] > steps[-1][1]
    for (_, _, got_i), want_i in zip(steps, reference):
        torch.testing.assert_close(got_i, want_i, atol=1e-5, rtol=1e-5)
    # a replacement at step 1 (VP latents, converted back to VE inside) is used from there on: another noise
    # with the reference's state put in after step 1 ends where the reference does
    other = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    out = sample(eps_model, other, sampler="ddim", num_inference_steps=4,
                 step_callback=lambda i, t, z: reference[1].clone() if i == 1 else None)
    torch.testing.assert_close(out, reference[-1], atol=1e-5, rtol=1e-5)
    assert (sample(eps_model, other, sampler="ddim", num_inference_steps=4) - reference[-1]).abs().max() > 1e-2
    plain = sample(eps_model, noise, sampler="ddim", num_inference_steps=4)
    again = sample(eps_model, noise, sampler="ddim", num_inference_steps=4, step_callback=lambda i, t, z: z)
    torch.testing.assert_close(again, plain, atol=1e-6, rtol=0)  # a callback returning its input changes nothing
    with pytest.raises(MicroCinemaError, match="needs a diffusers scheduler"):
        sample(eps_model, noise, sampler="scheduler", num_inference_steps=4)
