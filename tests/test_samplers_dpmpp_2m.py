"""DPM-Solver++(2M) (``sampler="dpmpp_2m"``): against diffusers' DPMSolverMultistepScheduler, second-order
convergence to the exact probability-flow ODE on Gaussian data (where DDIM/Euler need many more steps for the
same error), determinism, and a pipeline run with the pinned key frame (the replacement method's step_end).

Known answer (as tests/test_samplers.py): for x0 ~ N(mu, s^2) per element the probability-flow ODE in VE
coordinates is ``x(sigma) = mu + (x(sigma0) - mu) sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma0^2)``, so a deterministic
sampler's endpoint is known exactly for any start.
"""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DPMSolverMultistepScheduler

from microcinema.core.samplers import SAMPLERS, get_sigmas, sample, sample_dpmpp_2m
from test_samplers import AC, MU, S, SD, exact_start, gaussian_eps, linear_eps, normal_quantiles, rel_err, video_noise


@pytest.mark.parametrize("steps", [10, 25])
def test_matches_diffusers_dpm_solver_multistep(steps: int) -> None:
    """diffusers' ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2, no lower-order final step) on SD's DDIM
    timesteps, ending at ``sigma_min`` as SD's DDIM does: the same update in VP coordinates."""
    eps, x_T = linear_eps(), video_noise()
    timesteps = [int(t) for t in torch.arange(steps - 1, -1, -1) * (1000 // steps) + 1]
    sch = DPMSolverMultistepScheduler(**SD, algorithm_type="dpmsolver++", solver_order=2,
                                      final_sigmas_type="sigma_min", lower_order_final=False)
    sch.set_timesteps(timesteps=timesteps)
    z = x_T.clone()
    for t in sch.timesteps:
        z = sch.step(eps(z, t.float()), t, z).prev_sample
    ours = sample(eps, x_T, sampler="dpmpp_2m", schedule="ddim", num_inference_steps=steps, progress=False)
    assert rel_err(ours, z) < 1e-5  # measured ~5e-7 (float32 rounding)
    ddim = sample(eps, x_T, sampler="ddim", num_inference_steps=steps, progress=False)
    assert rel_err(ddim, z) > 1e-2  # a different (second-order) method, not DDIM under another name


def _gaussian_error(sampler: str, steps: int, x0: torch.Tensor, n: torch.Tensor, schedule: str | None = None) -> float:
    """RMS distance of the sampler's output from the exact ODE endpoint of its own start."""
    sigmas = get_sigmas(AC, steps, schedule or SAMPLERS[sampler].schedule)
    s0, se = float(sigmas[0]), float(sigmas[-1])
    x_T = exact_start(x0, n, s0)
    out = sample(gaussian_eps(MU, S), x_T, sampler=sampler, schedule=schedule, num_inference_steps=steps,
                 progress=False)
    start = x_T * math.sqrt(1 + s0**2)
    exact = (MU + (start - MU) * math.sqrt(S * S + se * se) / math.sqrt(S * S + s0 * s0)) / math.sqrt(1 + se**2)
    return float((out - exact).pow(2).mean().sqrt())


def test_gaussian_converges_to_the_exact_flow_in_far_fewer_steps() -> None:
    """Measured RMS errors: DPM++(2M) (Karras sigmas) 5.4e-2 at 10 steps, 1.2e-2 at 20 (second order: x0.22 for
    twice the steps; a first-order method halves); DDIM 1.2e-1 / 6.3e-2 / 2.6e-2 / 1.35e-2 at 10 / 20 / 50 / 100,
    Euler on the same Karras sigmas 1.6e-2 at 100. So 20 DPM++(2M) steps beat 100 DDIM steps, and the two
    converge to the same endpoint (Euler at 400 steps)."""
    n = normal_quantiles((8, 2000))
    perm = torch.randperm(n.numel(), generator=torch.Generator().manual_seed(3))
    x0 = MU + S * n.flatten()[perm].reshape(n.shape)
    dpm10, dpm20 = (_gaussian_error("dpmpp_2m", k, x0, n) for k in (10, 20))
    assert dpm20 / dpm10 < 0.35, (dpm10, dpm20)
    assert dpm20 < 0.02
    assert dpm20 < _gaussian_error("ddim", 100, x0, n)
    assert dpm20 < _gaussian_error("edm_euler", 100, x0, n)  # same sigmas, first order
    assert dpm10 < _gaussian_error("ddim", 20, x0, n)
    # same endpoint as many Euler steps on the same schedule (both converge to the exact flow)
    sigmas = get_sigmas(AC, 25, "karras")
    x_T = exact_start(x0, n, float(sigmas[0]))
    dpm = sample(gaussian_eps(MU, S), x_T, sampler="dpmpp_2m", num_inference_steps=25, progress=False)
    euler = sample(gaussian_eps(MU, S), x_T, sampler="edm_euler", num_inference_steps=400, progress=False)
    assert float((dpm - euler).pow(2).mean().sqrt()) < 0.012  # Euler at 400 steps is itself ~4e-3 off


def test_deterministic_and_registered() -> None:
    spec = SAMPLERS["dpmpp_2m"]
    assert spec.fn is sample_dpmpp_2m and spec.schedule == "karras" and not spec.stochastic
    eps, x_T = linear_eps(), video_noise()
    torch.manual_seed(0)
    state = torch.get_rng_state()
    runs = [sample(eps, x_T, sampler="dpmpp_2m", num_inference_steps=8, progress=False,
                   generator=torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    assert torch.equal(runs[0], runs[1])  # the generator draws nothing
    assert torch.equal(state, torch.get_rng_state())  # nor does the global RNG


def test_one_network_call_per_step_callbacks_and_sdedit() -> None:
    eps, x_T = linear_eps(), video_noise()
    calls, ends = [], []
    counted = lambda z, t: calls.append(float(t.flatten()[0])) or eps(z, t)  # noqa: E731
    sample(counted, x_T, sampler="dpmpp_2m", num_inference_steps=6, progress=False,
           step_callback=lambda i, t, z: ends.append(i))
    assert len(calls) == 6 and ends == list(range(6))
    assert all(a > b for a, b in zip(calls, calls[1:]))  # descending noise levels
    calls.clear()
    init = torch.zeros_like(x_T)
    out = sample(counted, x_T, sampler="dpmpp_2m", num_inference_steps=10, init=init, strength=0.3, progress=False)
    assert len(calls) == 3 and out.shape == x_T.shape
    # a step_callback's replacement is used from the next step on
    pinned = sample(eps, x_T, sampler="dpmpp_2m", num_inference_steps=6, progress=False,
                    step_callback=lambda i, t, z: torch.zeros_like(z) if i == 5 else None)
    assert torch.equal(pinned, torch.zeros_like(pinned))


def test_pipeline_runs_with_dpmpp_2m_and_keeps_the_pinned_key_frame(minilm_encoder) -> None:
    """MicroCinemaPipeline with ``sampler="dpmpp_2m"``: the replacement method pins the centre frame to the key
    frame's latent (Karras sigmas end at 0, so exactly, up to float rounding)."""
    from test_microcinema_pipeline import FixedKeyFrames, video_unet

    from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
    from microcinema.testing import tiny_vae

    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_unet=video_unet(1),
                               key_frame_model=FixedKeyFrames(), guidance_scale=3.0, sampler="dpmpp_2m")
    run = lambda: pipe("a red circle moving left", num_inference_steps=4, progress=False,  # noqa: E731
                       generator=torch.Generator().manual_seed(0), output_type="latent")
    out = run()
    assert out.frames.shape == (1, 4, 33, 8, 8) and torch.isfinite(out.frames).all()
    z_key = pipe.encode_images(FixedKeyFrames()(["x"], num_inference_steps=1, guidance_scale=None, generator=None,
                                                size=pipe.image_size))[0]
    assert (out.frames[0, :, 16] - z_key).abs().max() < 1e-4
    assert torch.equal(out.frames, run().frames)
