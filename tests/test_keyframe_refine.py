"""Motion-compensated key-frame refinement: registration, warping and the start latents it builds."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from einops import rearrange

from microcinema.data import synthetic
from microcinema.data.synthetic import render_clip, sample_clip
from microcinema.core.errors import MicroCinemaError
from microcinema.systems.microcinema.keyframe_refine import refine_init, register_shift, register_similarity, similarity_warp, smooth_scales


def pixels(frames: np.ndarray) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).float().div(127.5).sub(1).movedim(-1, -3)


def clip_with(motion: str, digit: bool = True, seed: int = 0) -> tuple[np.ndarray, object]:
    """A rendered 9-frame, 2 fps domain clip with the given motion (a digit unless ``digit=False``)."""
    for index in range(500):
        spec = sample_clip(index, seed=seed, num_frames=9, fps=2.0, digit_weight=5.0)
        if spec.motion == motion and spec.object.startswith("digit") == digit:
            return render_clip(spec), spec
    raise AssertionError(f"no {motion} clip found")


def test_identity_warp_returns_the_image_and_integer_shifts_move_it() -> None:
    images = torch.randn(3, 3, 16, 20)
    out = similarity_warp(images, torch.ones(3), torch.zeros(3, 2))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    shifted = similarity_warp(images, torch.ones(3), torch.tensor([[2.0, 0.0], [0.0, -3.0], [1.0, 1.0]]))
    torch.testing.assert_close(shifted[0, :, :, 2:], images[0, :, :, :-2], atol=1e-5, rtol=0)  # right by 2
    torch.testing.assert_close(shifted[1, :, :-3], images[1, :, 3:], atol=1e-5, rtol=0)  # up by 3
    torch.testing.assert_close(shifted[0, :, :, 0], images[0, :, :, 0], atol=1e-5, rtol=0)  # border repeated


@pytest.mark.parametrize("motion", ["left", "down", "grow", "shrink", "still"])
def test_registration_recovers_the_domains_motion(motion: str) -> None:
    frames, spec = clip_with(motion)
    video = pixels(frames)
    reg = register_similarity(video[4], video)
    centres, sizes = np.array(spec.centers), np.array(spec.sizes)
    assert reg.score.min() > 0.95  # every frame is the key frame moved
    np.testing.assert_allclose(reg.scale.numpy(), sizes / sizes[4], rtol=0.05)
    # the key frame's object centre, mapped by the transform, lands on each frame's object centre
    c = np.array([32.0, 32.0])
    mapped = c + reg.scale.numpy()[:, None] * (centres[4] - c) + reg.shift.numpy()
    assert np.abs(mapped - centres).max() < 0.75  # pixels, on a 64-pixel frame


def test_registration_scores_a_lost_object_low() -> None:
    frames, _ = clip_with("right")
    video = pixels(frames)
    blank = video[4].clone()
    blank[:] = blank[:, :2, :2].mean(dim=(-2, -1), keepdim=True)  # the background only
    noise = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    reg = register_similarity(video[4], torch.stack([blank + 1e-3 * noise, noise]))
    assert reg.score.max() < 0.3


def test_refine_init_puts_the_key_frames_glyph_where_the_first_pass_moved_the_object() -> None:
    """Stand-in VAE: latents are the pixels (3 channels). The "first pass" moves the digit right as it should
    but redraws it as another digit (the failure this fixes); the start latents are the key frame warped
    there, close to the true frames; a frame with the object lost keeps its own latent."""
    frames, spec = clip_with("right")
    truth = pixels(frames)  # F, 3, H, W
    other = 9 if spec.object != "digit9" else 1
    redrawn = replace(spec, object=f"digit{other}", digit_instance=int(synthetic.digit_indices(other)[0]))
    first_pass = pixels(render_clip(redrawn))
    first_pass[4] = truth[4]  # the key frame is pinned
    first_pass[0] = truth[0, :, :2, :2].mean(dim=(-2, -1), keepdim=True).expand_as(truth[0])  # object lost
    latents = rearrange(first_pass, "f c h w -> 1 c f h w")
    decode = lambda z: rearrange(z, "b c f h w -> b f c h w")  # noqa: E731
    init, warped = refine_init(latents, decode, lambda x: x, key_index=4)
    assert warped.tolist() == [[False, True, True, True, False, True, True, True, True]]
    init = rearrange(init[0], "c f h w -> f c h w")
    torch.testing.assert_close(init[0], first_pass[0])  # kept
    torch.testing.assert_close(init[4], first_pass[4])  # the key frame itself is never replaced
    moved = [1, 2, 3, 5, 6, 7, 8]
    error = lambda x: (x[moved] - truth[moved]).square().mean().item()  # noqa: E731
    assert error(init) < 0.4 * error(first_pass)  # measured 0.22: the 9 drawn sits ~1 px off the true 6


def test_refine_init_touches_only_the_frames_asked_for() -> None:
    frames, _ = clip_with("down")
    latents = rearrange(pixels(frames), "f c h w -> 1 c f h w")
    latents[:, :, [1, 2, 6]] = latents[:, :, [1, 2, 6]].flip(-1)  # wrong where asked and where not
    decode = lambda z: rearrange(z, "b c f h w -> b f c h w")  # noqa: E731
    init, warped = refine_init(latents, decode, lambda x: x, key_index=4, frames=[1, 2, 4])
    assert warped.tolist() == [[False, True, True, False, False, False, False, False, False]]
    untouched = [0, 3, 4, 5, 6, 7, 8]
    torch.testing.assert_close(init[:, :, untouched], latents[:, :, untouched])
    with pytest.raises(MicroCinemaError, match="frames must be indices below 9"):
        refine_init(latents, decode, lambda x: x, key_index=4, frames=[2, 9])


def test_smoothed_scales_follow_growth_and_drop_jitter() -> None:
    times = torch.tensor([-4.0, -3, -2, -1, 1, 2, 3, 4])
    growth = 1 + 0.1 * times  # the domain's objects grow linearly in size
    jitter = torch.tensor([1.0, 1.05, 0.95, 1.05, 1.1, 0.95, 1.05, 1.0])
    smooth = smooth_scales(growth * jitter, times, torch.ones(8, dtype=torch.bool))
    assert (smooth / growth - 1).abs().max() < 0.05 < (growth * jitter / growth - 1).abs().max()
    assert torch.all(smooth[1:] > smooth[:-1])  # monotone, as the growth
    keep = torch.zeros(8, dtype=torch.bool)
    keep[0] = True
    torch.testing.assert_close(smooth_scales(jitter, times, keep), jitter)  # one frame: nothing to fit


def test_bad_shapes_are_clear_errors() -> None:
    with pytest.raises(MicroCinemaError, match=r"images must be \(N, C, H, W\)"):
        similarity_warp(torch.zeros(3, 8, 8), torch.ones(1), torch.zeros(1, 2))
    with pytest.raises(MicroCinemaError, match="must share C, H, W"):
        register_similarity(torch.zeros(3, 8, 8), torch.zeros(2, 3, 8, 9))
    with pytest.raises(MicroCinemaError, match="key_index must be a frame index below 3"):
        refine_init(torch.zeros(1, 3, 3, 8, 8), lambda z: z, lambda x: x, key_index=3)


def test_registration_runs_in_bounded_chunks_with_the_same_result(monkeypatch):
    """Issue 15: at SD's sizes the frames x scales x pixels correlations do not fit at once; the registration runs
    over the frames in chunks of MAX_CORRELATION_ELEMENTS (one frame per chunk at 512x512) with the same result."""
    import microcinema.systems.microcinema.keyframe_refine as kr

    torch.manual_seed(0)
    reference, frames = torch.rand(3, 32, 32), torch.rand(5, 3, 32, 32)
    whole = kr.register_similarity(reference, frames)
    shifted = kr.register_shift(reference, frames, whole.scale)
    assert kr.MAX_CORRELATION_ELEMENTS // (len(kr.DEFAULT_SCALES) * 3 * 512 * 512) == 0  # 512x512: 1 frame a chunk
    monkeypatch.setattr(kr, "MAX_CORRELATION_ELEMENTS", 2 * len(kr.DEFAULT_SCALES) * 3 * 32 * 32)  # 2 frames a chunk
    chunked = kr.register_similarity(reference, frames)
    torch.testing.assert_close(chunked.shift, whole.shift)
    torch.testing.assert_close(chunked.score, whole.score)
    torch.testing.assert_close(chunked.scale, whole.scale)
    monkeypatch.setattr(kr, "MAX_CORRELATION_ELEMENTS", 3 * 32 * 32)  # 1 frame a chunk
    torch.testing.assert_close(kr.register_shift(reference, frames, whole.scale).shift, shifted.shift)
