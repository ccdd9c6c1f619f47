"""The replacement method (microcinema.core.replacement): known frames are pinned, the others see them."""

from __future__ import annotations

import pytest
import torch

from microcinema.core.errors import MicroCinemaError
from microcinema.core.replacement import centre_frame_mask, replacement_eps_model
from microcinema.core.samplers import sample


def mixing_eps_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A toy noise predictor that mixes frames (its output at a frame depends on all frames)."""
    return 0.3 * x + 0.2 * x.mean(dim=2, keepdim=True)


def test_pinned_frame_is_the_known_latent_and_the_others_see_it() -> None:
    g = torch.Generator().manual_seed(0)
    known = torch.randn(2, 4, 5, 8, 8, generator=g)
    noise = torch.randn(2, 4, 5, 8, 8, generator=g)
    mask = centre_frame_mask(5)
    pinned = replacement_eps_model(mixing_eps_model, known, mask, torch.randn(known.shape, generator=g))
    out = sample(pinned, noise, sampler="euler", num_inference_steps=10, progress=False)  # ends at sigma = 0
    torch.testing.assert_close(out[:, :, 2], known[:, :, 2], atol=1e-5, rtol=0)
    plain = sample(mixing_eps_model, noise, sampler="euler", num_inference_steps=10, progress=False)
    assert (out[:, :, 2] - plain[:, :, 2]).abs().max() > 0.1  # without pinning the centre frame is something else
    assert (out[:, :, 0] - plain[:, :, 0]).abs().max() > 1e-3  # the other frames are denoised next to the pinned one


def test_ddim_ends_at_the_known_frame_up_to_t0_noise() -> None:
    """DDIM returns z at t = 0 (as diffusers' DDIMScheduler), sigma_0 ~ 0.03: the pinned frame is within that."""
    g = torch.Generator().manual_seed(1)
    known = torch.randn(1, 4, 3, 4, 4, generator=g)
    noise = torch.randn(1, 4, 3, 4, 4, generator=g)
    pinned = replacement_eps_model(mixing_eps_model, known, centre_frame_mask(3), torch.randn(known.shape, generator=g))
    out = sample(pinned, noise, sampler="ddim", num_inference_steps=5, progress=False)
    plain = sample(mixing_eps_model, noise, sampler="ddim", num_inference_steps=5, progress=False)
    assert (out[:, :, 1] - known[:, :, 1]).abs().max() < 0.15
    assert (plain[:, :, 1] - known[:, :, 1]).abs().max() > 1.0


def test_bad_shapes_are_refused() -> None:
    known = torch.zeros(1, 4, 3, 4, 4)
    with pytest.raises(MicroCinemaError, match="one shape"):
        replacement_eps_model(mixing_eps_model, known, centre_frame_mask(3), torch.zeros(1, 4, 5, 4, 4))
    with pytest.raises(ValueError, match="does not broadcast"):
        replacement_eps_model(mixing_eps_model, known, centre_frame_mask(5), known)
    with pytest.raises(MicroCinemaError, match="odd"):
        centre_frame_mask(4)


def test_mean_anchor_gives_every_x0_estimate_the_target_palette_and_keeps_the_layout() -> None:
    from microcinema.core.diffusion import VPDenoiser
    from microcinema.core.replacement import mean_anchor_eps_model

    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 4, 3, 1, 1, generator=g)
    weights = torch.randn(4, 4, generator=g)

    def eps_model(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # any network: a fixed channel mix + tanh
        return torch.tanh(torch.einsum("bcfhw,cd->bdfhw", z, weights)) + 0.3

    plain, anchored = VPDenoiser(eps_model), VPDenoiser(mean_anchor_eps_model(eps_model, target))
    x = torch.randn(2, 4, 3, 6, 6, generator=g) * 5
    for sigma in (0.05, 1.0, 14.0):  # low, middle and SD's highest noise level
        x0, x0_anchored = plain(x, sigma), anchored(x, sigma)
        torch.testing.assert_close(x0_anchored.mean(dim=(-2, -1), keepdim=True), target, atol=1e-4, rtol=0)
        centred = lambda v: v - v.mean(dim=(-2, -1), keepdim=True)  # noqa: E731
        torch.testing.assert_close(centred(x0_anchored), centred(x0), atol=1e-4, rtol=0)  # the layout is the model's
    out = sample(mean_anchor_eps_model(eps_model, target), (2, 4, 3, 6, 6), num_inference_steps=5,
                 generator=torch.Generator().manual_seed(1), progress=False)
    assert (out.mean(dim=(-2, -1), keepdim=True) - target).abs().max() < 0.1  # DDIM ends at t = 0's tiny noise
    with pytest.raises(MicroCinemaError, match="target_mean"):
        mean_anchor_eps_model(eps_model, torch.zeros(2, 4, 3, 6, 6))
