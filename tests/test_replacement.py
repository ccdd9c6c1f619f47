"""The replacement method (microcinema.replacement): known frames are pinned, the others see them."""

from __future__ import annotations

import pytest
import torch

from microcinema.errors import MicroCinemaError
from microcinema.replacement import centre_frame_mask, replacement_eps_model
from microcinema.samplers import sample


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
