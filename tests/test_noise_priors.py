"""The Appearance Noise Prior (MicroCinema section 3.3, appendix B)."""

from __future__ import annotations

import pytest
import torch

from microcinema.diffusion import diffusion_loss
from microcinema.errors import MicroCinemaError
from microcinema.noise_priors import appearance_init_mean, appearance_noise
from microcinema.samplers import sample


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
    assert torch.equal(diffusion_loss(model, x0, appearance_noise(key, n, 0.0), t), diffusion_loss(model, x0, n, t))
    start = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(0))
    plain = sample(model, start, num_inference_steps=4, progress=False)
    prior = sample(model, start, num_inference_steps=4, progress=False,
                   init_mean=appearance_init_mean(key, 5, lam=0.0, gamma=0.0))
    assert torch.equal(plain, prior)


def test_prior_shifts_the_start_of_sampling():
    """The initial latent is N((lambda + gamma) z_c, I) in VP scale: with eps = 0 an Euler sampler keeps
    the VE start x_T = z_T / sqrt(abar_T), so the output is the prior's mean over sqrt(abar_T)."""
    from microcinema.diffusion import make_training_scheduler

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
