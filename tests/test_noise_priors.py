"""The Appearance Noise Prior (MicroCinema section 3.3, appendix B)."""

from __future__ import annotations

import pytest
import torch

from microcinema.core.diffusion import DiffusionLoss
from microcinema.core.errors import MicroCinemaError
from microcinema.systems.microcinema.noise_prior import appearance_init_mean, appearance_noise
from microcinema.core.samplers import sample


def test_training_noise_is_lambda_key_latent_plus_gaussian_for_every_frame():
    key = torch.randn(2, 4, 8, 8)
    n = torch.randn(2, 4, 9, 8, 8)
    eps = appearance_noise(key, n, lam=0.03)
    for i in range(9):
        assert torch.allclose(eps[:, :, i], 0.03 * key + n[:, :, i])
    # a per-frame condition (interpolation model) is applied frame by frame
    cond = torch.randn(2, 4, 9, 8, 8)
    assert torch.allclose(appearance_noise(cond, n, lam=0.1), n + 0.1 * cond)


def test_init_mean_is_lambda_plus_gamma_key_latent():
    key = torch.randn(1, 4, 8, 8)
    mean = appearance_init_mean(key, 9, lam=0.03, gamma=0.02)
    assert mean.shape == (1, 4, 9, 8, 8)
    assert torch.allclose(mean[:, :, 5], 0.05 * key)


def test_zero_lambda_and_gamma_is_exactly_plain_diffusion():
    key, n, x0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 5, 8, 8), torch.randn(2, 4, 5, 8, 8)
    assert torch.equal(appearance_noise(key, n, lam=0.0), n)
    model = lambda z, t: 0.5 * z  # noqa: E731  any eps model
    t = torch.tensor([10, 900])
    loss = DiffusionLoss(timesteps=lambda b, g: t)
    assert torch.equal(loss(model, x0, torch.Generator(), noise_prior=lambda m: appearance_noise(key, m, 0.0)),
                       loss(model, x0, torch.Generator()))
    start = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = sample(model, start, num_inference_steps=4, progress=False)
    prior = sample(model, start, num_inference_steps=4, progress=False,
                   init_mean=appearance_init_mean(key, 5, lam=0.0, gamma=0.0))
    assert torch.equal(plain, prior)


def test_prior_shifts_the_start_of_sampling():
    """The initial latent is N((lambda + gamma) z_c, I) in VP scale: with eps = 0 an Euler sampler keeps
    the VE start x_T = z_T / sqrt(abar_T), so the output is the prior's mean over sqrt(abar_T)."""
    from microcinema.core.diffusion import make_training_scheduler

    key = torch.ones(1, 4, 8, 8)
    zero_eps = lambda z, t: torch.zeros_like(z)  # noqa: E731
    out = sample(zero_eps, torch.zeros(1, 4, 3, 8, 8), num_inference_steps=3, progress=False, sampler="euler",
                 init_mean=appearance_init_mean(key, 3, lam=0.03, gamma=0.02))
    abar_T = make_training_scheduler().alphas_cumprod[-1].item()
    assert torch.allclose(out, torch.full_like(out, 0.05 / abar_T**0.5), rtol=1e-4)


def test_bad_arguments():
    with pytest.raises(MicroCinemaError, match="lambda must be >= 0"):
        appearance_noise(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 3, 8, 8), lam=-0.1)
    with pytest.raises(MicroCinemaError, match="latent video"):
        appearance_noise(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    with pytest.raises(MicroCinemaError, match="condition must be"):
        appearance_init_mean(torch.zeros(1, 4, 2, 8, 8), 5)


def test_hide_motion_at_high_noise_swaps_the_clip_for_the_key_frame_above_start_and_keeps_the_implied_x0():
    from microcinema.core.diffusion import add_noise, alphas_cumprod_of, make_training_scheduler
    from microcinema.systems.microcinema.noise_prior import hide_motion_at_high_noise

    scheduler = make_training_scheduler()
    g = torch.Generator().manual_seed(0)
    z0, other = torch.randn(2, 3, 4, 5, 6, 6, generator=g)  # two different clips ...
    key = torch.randn(3, 4, 6, 6, generator=g)  # ... with the same key frame
    noise = torch.randn(3, 4, 5, 6, 6, generator=g)
    t = torch.tensor([10, 899, 900])
    z_t, target = hide_motion_at_high_noise(z0, key, noise, t, start=900, scheduler=scheduler)
    z_other, _ = hide_motion_at_high_noise(other, key, noise, t, start=900, scheduler=scheduler)
    # below start: the forward process, target the noise
    torch.testing.assert_close(z_t[:2], add_noise(z0, noise, t, scheduler)[:2])
    torch.testing.assert_close(target[:2], noise[:2])
    assert (z_t[:2] - z_other[:2]).abs().max() > 1e-2  # the clip shows through
    # from start up: the input holds the key frame, whatever the clip (its motion cannot be read off it) ...
    torch.testing.assert_close(z_t[2], z_other[2])
    torch.testing.assert_close(z_t[2:], add_noise(key[:, :, None].expand(-1, -1, 5, -1, -1), noise, t, scheduler)[2:])
    # ... and a perfect prediction of the target still implies the clip as the clean sample
    abar = alphas_cumprod_of(scheduler)[t].view(-1, 1, 1, 1, 1).float()
    implied = (z_t - (1 - abar).sqrt() * target) / abar.sqrt()
    torch.testing.assert_close(implied, z0, atol=1e-4, rtol=0)
    plain, plain_target = hide_motion_at_high_noise(z0, key, noise, t, start=None, scheduler=scheduler)  # never hide
    assert torch.equal(plain, add_noise(z0, noise, t, scheduler)) and torch.equal(plain_target, noise)
    with pytest.raises(MicroCinemaError, match="noise shape"):
        hide_motion_at_high_noise(z0, key, noise[:, :, :2], t, start=900)
