"""Structured noise priors (recurrent few-shot paper, section 3.3): independent, shared (LAMP) and
auto-regressive noise with unit variance per frame and the stated correlation between frames."""

from __future__ import annotations

import math

import pytest
import torch

from microcinema.core.diffusion import DiffusionLoss
from microcinema.core.errors import MicroCinemaError
from microcinema.systems.fewshot.structured_noise import (NOISE_KINDS, alpha_for_correlation, autoregressive_mix,
                                                          frame_correlation, mix_weights, noise_prior,
                                                          paper_mix_variance, shared_mix, structured_noise)

#: Large samples: (B, C, F, h, w) with 2 * 4 * 32 * 32 = 8192 values per frame.
SHAPE = (2, 4, 6, 32, 32)
TOL = 0.04  # about 4 standard errors of a variance / correlation estimated from 8192 values


def _frame_stats(noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame variance and the correlation matrix between frames (frames as variables)."""
    frames = noise.transpose(0, 2).reshape(noise.shape[2], -1).double()
    return frames.var(dim=1), torch.corrcoef(frames)


@pytest.mark.parametrize("kind", NOISE_KINDS)
@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_unit_variance_and_the_stated_correlation(kind, alpha):
    noise = structured_noise(kind, SHAPE, torch.Generator().manual_seed(0), alpha=alpha)
    assert noise.shape == SHAPE and noise.dtype == torch.float32
    var, corr = _frame_stats(noise)
    assert torch.allclose(var, torch.ones_like(var), atol=TOL), var
    assert abs(noise.mean().item()) < 0.02
    for i in range(SHAPE[2]):
        for j in range(i + 1, SHAPE[2]):
            assert corr[i, j].item() == pytest.approx(frame_correlation(kind, alpha, j - i), abs=TOL), (i, j)


def test_the_correlation_formulas():
    # shared: alpha^2 / (alpha^2 + (1 - alpha)^2) for every pair; auto-regressive: r^lag
    assert frame_correlation("shared", 0.2, lag=3) == pytest.approx(0.04 / 0.68)
    assert frame_correlation("autoregressive", 0.2) == pytest.approx(0.2 / math.sqrt(0.68))
    assert frame_correlation("autoregressive", 0.2, lag=2) == pytest.approx(0.04 / 0.68)
    assert frame_correlation("independent", 0.7) == 0.0
    # PYoCo's mixed / progressive weights with a = alpha / (1 - alpha)
    a = 0.2 / 0.8
    assert mix_weights(0.2) == pytest.approx((math.sqrt(a**2 / (1 + a**2)), math.sqrt(1 / (1 + a**2))))
    for kind in ("shared", "autoregressive"):
        for rho in (0.0, 0.1, 0.5, 0.9, 1.0):
            assert frame_correlation(kind, alpha_for_correlation(kind, rho)) == pytest.approx(rho, abs=1e-12)


def test_the_papers_unnormalised_mix_is_not_unit_variance():
    """As written (alpha a + (1 - alpha) b), the 0.2 / 0.8 mix has variance 0.68: noise a model trained on
    N(0, I) never saw, and the auto-regressive form shrinks further over frames; the normalised mix is 1."""
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 1_000_000, generator=g)
    assert paper_mix_variance(0.2) == pytest.approx(0.68)
    assert (0.2 * a + 0.8 * b).var().item() == pytest.approx(0.68, abs=0.005)
    w_a, w_b = mix_weights(0.2)
    assert (w_a * a + w_b * b).var().item() == pytest.approx(1.0, abs=0.005)
    # the paper's auto-regressive recursion: Var -> (1 - alpha) / (1 + alpha) = 0.667 after a few frames
    eps = torch.randn(1_000_000, generator=g)
    for _ in range(20):
        eps = 0.2 * eps + 0.8 * torch.randn(1_000_000, generator=g)
    assert eps.var().item() == pytest.approx(0.8 / 1.2, abs=0.005)


def test_extremes_of_alpha():
    g = torch.Generator().manual_seed(2)
    for kind in ("shared", "autoregressive"):
        same = structured_noise(kind, (1, 2, 4, 3, 3), g, alpha=1.0)
        assert all(torch.equal(same[:, :, 0], same[:, :, i]) for i in range(4))
    n = torch.randn(1, 2, 4, 3, 3, generator=g)
    assert torch.equal(autoregressive_mix(n, 0.0), n)
    assert torch.equal(shared_mix(n, torch.randn(1, 2, 1, 3, 3), 0.0), n)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_deterministic_under_a_generator(kind):
    def draw(seed):
        return structured_noise(kind, (2, 4, 5, 8, 8), torch.Generator().manual_seed(seed), alpha=0.3)

    assert torch.equal(draw(7), draw(7))
    assert not torch.equal(draw(7), draw(8))
    half = structured_noise(kind, (2, 4, 5, 8, 8), torch.Generator().manual_seed(7), alpha=0.3, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, draw(7).to(torch.bfloat16))


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_training_prior_matches_sampling_noise(kind):
    """The training hook turns DiffusionLoss's unit Gaussian into the same noise the sampler starts from."""
    shape = (2, 4, 5, 8, 8)
    g = torch.Generator().manual_seed(3)
    from_hook = noise_prior(kind, 0.4, g)(torch.randn(shape, generator=g))
    assert torch.equal(from_hook, structured_noise(kind, shape, torch.Generator().manual_seed(3), alpha=0.4))


def test_training_prior_builds_the_epsilon_target():
    """In DiffusionLoss the prior's noise corrupts the clip and is the target: a model that predicts exactly
    that noise has zero loss; one that predicts the independent noise does not."""
    x0 = torch.randn(2, 4, 5, 8, 8, generator=torch.Generator().manual_seed(4))
    loss = DiffusionLoss()
    seen = {}

    def oracle(z_t, t):
        from microcinema.core.diffusion import add_noise
        # recover the noise from z_t = sqrt(abar) x0 + sqrt(1 - abar) eps (the loss's own forward process)
        zero = add_noise(x0, torch.zeros_like(x0), t, loss.scheduler)
        one = add_noise(x0, torch.ones_like(x0), t, loss.scheduler)
        seen["eps"] = (z_t - zero) / (one - zero)
        return seen["eps"]

    g = torch.Generator().manual_seed(5)
    assert loss(oracle, x0, g, noise_prior=noise_prior("autoregressive", 0.6, g)).item() < 1e-8
    _, corr = _frame_stats(seen["eps"])
    assert corr[0, 1].item() > 0.5  # the target is the correlated noise, not the independent draw


def test_bad_parameters_are_one_line_errors():
    for bad in (-0.1, 1.5, float("nan"), "0.2", True):
        with pytest.raises(MicroCinemaError, match=r"alpha must be a number in \[0, 1\]") as e:
            structured_noise("shared", SHAPE, alpha=bad)
        assert "\n" not in str(e.value)
    with pytest.raises(MicroCinemaError, match="allowed: independent, shared, autoregressive"):
        structured_noise("pyramid", SHAPE)
    with pytest.raises(MicroCinemaError, match=r"latent videos \(B, C, F, h, w\)"):
        structured_noise("autoregressive", (2, 4, 8, 8))
    with pytest.raises(MicroCinemaError, match="needs a generator"):
        noise_prior("shared", 0.2)
    with pytest.raises(MicroCinemaError, match="correlation must be"):
        alpha_for_correlation("shared", 1.2)
