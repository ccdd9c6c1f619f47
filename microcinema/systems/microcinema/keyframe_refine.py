"""Motion-compensated key-frame refinement of stage two's frames (an extension beyond the papers).

The paper's AppearNet adds the key frame's features at the *same* pixel (section 3.2), and the Appearance
Noise Prior adds the key frame latent at the same pixel too (section 3.3). A detail that moves far from where
the key frame has it must therefore be redrawn by the U-Net's convolutions. With the tiny embedded model the
redrawing loses fine shapes: a handwritten 1 sliding down turns into a 9 or a 2 on the way, while the same digit
held still keeps its glyph (docs/results/stage_two_frame_errors/phase6_digits.png).

The refinement is a second, short pass, first over the base frames (with the base model), then over the
interpolated in-between frames (with the interpolation model):

1. **Register** the key frame to each generated frame (:func:`register_similarity`): a similarity transform
   without rotation (one scale ``s`` on a log grid, a shift ``d``), found by FFT cross-correlation of the
   mean-free key frame scaled by ``s`` with the mean-free frame; its score is the normalised cross-correlation
   at the peak, and the shift is refined to sub-pixel by a parabola through the peak. The scales of a clip
   are then smoothed in time (:func:`smooth_scales`) and the shifts found again at the smoothed scales
   (:func:`register_shift`).
2. **Warp** the key frame's pixels by it (:func:`similarity_warp`) and encode them: that latent has the key
   frame's appearance where the first pass put the object. A frame the transform does not explain (score
   below ``min_score``: the object lost, a non-rigid change) keeps its own first-pass latent.
3. **Re-denoise** these latents with SDEdit (Meng et al. 2022, "SDEdit", section 3: noise to an intermediate
   level, then denoise): the last ``strength`` fraction of the sampling schedule, with the same model and
   conditions as the first pass (base: text, guidance, pinned key frame; interpolation: its two end frames)
   (:func:`microcinema.core.samplers.sample` with ``init=`` and ``strength=``).

The motion is the first pass's (from the text); the appearance is the key frame's (what it changed on the
embedded family: ``docs/results/stage_two_refine/``, ``docs/history.md``). The transform has no
rotation and no deformation, so the refinement suits rigid objects and camera zooms/pans (the procedural
domain), not articulated motion: turn it off with ``MicroCinemaPipeline(refine_strength=0)`` (CLI:
``--refine-strength 0``). :func:`refine_init` builds the start latents; the pipeline runs the sampling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from microcinema.core.errors import check

#: Scales tried by :func:`register_similarity`: 29 points log-spaced over [1/2, 2] (the domain's objects
#: grow or shrink by at most ~1.8x either side of the key frame over 9 frames at 2 fps).
DEFAULT_SCALES = torch.exp(torch.linspace(math.log(0.5), math.log(2.0), 29))
#: Normalised cross-correlation below which a frame is not explained by a warped key frame. Ground-truth
#: frames of the domain score above 0.95 and the shipped model's first-pass frames 0.80-0.99 (40 tuning
#: prompts); a frame with its object lost scores below 0.3 (tests/test_keyframe_refine.py).
DEFAULT_MIN_SCORE = 0.5
#: Most float elements one batch of cross-correlations may hold (frames x scales x channels x H x W): the
#: registration runs over the frames in chunks under it, so its memory is bounded at any size (64x64 with 29
#: scales: 46 frames per chunk; 512x512: one frame, ~90 MB per intermediate).
MAX_CORRELATION_ELEMENTS = 2**24


@dataclass
class Registration:
    """Per frame: ``scale`` (N,), ``shift`` (N, 2) in pixels as (x, y), and ``score`` (N,) in [-1, 1], with
    ``frame(p) ~ key(c + (p - shift - c) / scale)`` for the image centre ``c``."""

    scale: Tensor
    shift: Tensor
    score: Tensor


def similarity_warp(images: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """Scale ``images`` (N, C, H, W) about their centre by ``scale`` (N,), then shift them by ``shift`` (N, 2)
    pixels (x, y); bilinear, pixels pulled from outside repeat the border (a uniform background stays
    uniform). ``scale = 1, shift = 0`` returns the images unchanged."""
    check(images.ndim == 4, f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    n, _, h, w = images.shape
    scale = scale.to(images).reshape(n)
    shift = shift.to(images).reshape(n, 2)
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / scale
    theta[:, 0, 2] = -(2 * shift[:, 0] / w) / scale  # normalised coordinates: [-1, 1] spans w pixels
    theta[:, 1, 2] = -(2 * shift[:, 1] / h) / scale
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _parabola_offset(left: Tensor, centre: Tensor, right: Tensor) -> Tensor:
    """Sub-sample offset of a peak from three samples around it, clamped to half a sample."""
    denom = left - 2 * centre + right
    offset = torch.where(denom.abs() > 1e-12, 0.5 * (left - right) / denom, torch.zeros_like(denom))
    return offset.clamp(-0.5, 0.5)


def _zero_mean(images: Tensor) -> Tensor:
    return images - images.mean(dim=(-2, -1), keepdim=True)


def _correlation_peaks(references: Tensor, frames: Tensor) -> tuple[Tensor, Tensor]:
    """Circular cross-correlation of zero-mean ``references`` (..., C, H, W) with zero-mean ``frames`` (same
    shape, or broadcastable), summed over channels: per pair, the shift (..., 2) as (x, y) of the peak
    (sub-pixel, wrapped to [-size / 2, size / 2]) and the normalised correlation there (...)."""
    h, w = frames.shape[-2:]
    references, frames = _zero_mean(references), _zero_mean(frames)
    corr = torch.fft.irfft2(torch.fft.rfft2(frames) * torch.fft.rfft2(references).conj(), s=(h, w)).sum(dim=-3)
    norms = references.flatten(-3).norm(dim=-1) * frames.flatten(-3).norm(dim=-1)
    lead = corr.shape[:-2]
    corr = corr.reshape(-1, h, w)
    peak, idx = corr.flatten(1).max(dim=1)
    rows = torch.arange(len(corr), device=corr.device)
    y, x = idx // w, idx % w
    at = lambda dy, dx: corr[rows, (y + dy) % h, (x + dx) % w]  # noqa: E731
    sx = x.to(corr.dtype) + _parabola_offset(at(0, -1), at(0, 0), at(0, 1))
    sy = y.to(corr.dtype) + _parabola_offset(at(-1, 0), at(0, 0), at(1, 0))
    sx = torch.where(sx > w / 2, sx - w, sx)
    sy = torch.where(sy > h / 2, sy - h, sy)
    score = peak.reshape(lead) / norms.expand(lead).clamp_min(1e-8)
    return torch.stack([sx, sy], dim=-1).reshape(*lead, 2), score


def _check_pair(reference: Tensor, frames: Tensor) -> None:
    check(reference.ndim == 3 and frames.ndim == 4 and frames.shape[1:] == reference.shape,
          f"reference (C, H, W) and frames (N, C, H, W) must share C, H, W, got {tuple(reference.shape)} and "
          f"{tuple(frames.shape)}")


def register_similarity(reference: Tensor, frames: Tensor, scales: Tensor = DEFAULT_SCALES) -> Registration:
    """Register ``reference`` (C, H, W) to each of ``frames`` (N, C, H, W): the scale of ``scales`` and the
    shift whose warp of the reference best matches each frame (normalised cross-correlation; see the module
    docstring). Shifts wrap at half the frame size."""
    _check_pair(reference, frames)
    frames, reference = frames.float(), reference.float()
    scales = scales.to(frames).reshape(-1)
    warped = similarity_warp(reference.expand(len(scales), -1, -1, -1), scales, torch.zeros(len(scales), 2))
    chunk = max(1, MAX_CORRELATION_ELEMENTS // warped.numel())  # frames per batch of correlations
    peaks = [_correlation_peaks(warped[None], part[:, None]) for part in frames.split(chunk)]  # each (n, S)
    shift, score = torch.cat([p[0] for p in peaks]), torch.cat([p[1] for p in peaks])
    best = score.argmax(dim=1)
    rows = torch.arange(len(frames), device=frames.device)
    return Registration(scale=scales[best], shift=shift[rows, best], score=score[rows, best])


def register_shift(reference: Tensor, frames: Tensor, scale: Tensor) -> Registration:
    """Like :func:`register_similarity` with the scale of each frame given (``scale``: (N,)): only the shift."""
    _check_pair(reference, frames)
    frames, reference = frames.float(), reference.float()
    scale = scale.to(frames).reshape(len(frames))
    chunk = max(1, MAX_CORRELATION_ELEMENTS // reference.numel())
    shifts, scores = [], []
    for part, part_scale in zip(frames.split(chunk), scale.split(chunk)):
        warped = similarity_warp(reference.expand(len(part), -1, -1, -1), part_scale, torch.zeros(len(part), 2))
        shift, score = _correlation_peaks(warped, part)
        shifts.append(shift)
        scores.append(score)
    return Registration(scale=scale, shift=torch.cat(shifts), score=torch.cat(scores))


def smooth_scales(scale: Tensor, times: Tensor, keep: Tensor) -> Tensor:
    """Scales that vary smoothly in time: ``log scale = a t + b t^2`` (1 at ``t = 0``, the key frame), fitted by
    least squares to the frames where ``keep`` is true (at least two; otherwise ``scale`` is returned). Removes
    the frame-to-frame size jitter of independent estimates on a coarse grid, and the blur bias of single
    frames (a blurred object matches a slightly larger template)."""
    times = times.to(scale.dtype)
    design = torch.stack([times, times ** 2], dim=1)
    if int(keep.sum()) < 2:
        return scale
    coef = torch.linalg.lstsq(design[keep], scale.log()[keep].unsqueeze(1)).solution
    return (design @ coef).squeeze(1).exp()


def refine_init(latents: Tensor, decode: Callable[[Tensor], Tensor], encode: Callable[[Tensor], Tensor],
                key_index: int, min_score: float = DEFAULT_MIN_SCORE,
                frames: Sequence[int] | None = None, key_pixels: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Start latents for the refinement pass: each non-key frame of ``latents`` (B, C, F, h, w) (or only those in
    ``frames``) replaced by the encoded key frame warped onto it, where the registration scores at least
    ``min_score``.

    ``decode``: (B, C, F, h, w) latents -> (B, F, 3, H, W) pixels; ``encode``: (N, 3, H, W) pixels -> (N, C, h, w)
    latents (the pipeline's VAE, which decodes and encodes in chunks of frames; the registration itself runs in
    chunks of :data:`MAX_CORRELATION_ELEMENTS`, so memory stays bounded at SD's sizes). ``key_pixels`` (B, 3, H, W): the key frame to warp (default: the decoded frame
    ``key_index``, which is the key frame when it was pinned). Returns the start latents and the (B, F) bool mask
    of warped frames.
    """
    check(latents.ndim == 5, f"latents must be (B, C, F, h, w), got shape {tuple(latents.shape)}")
    b, _, f = latents.shape[:3]
    check(0 <= key_index < f, f"key_index must be a frame index below {f}, got {key_index}")
    pixels = decode(latents).float()
    init = latents.clone()
    warped_mask = torch.zeros(b, f, dtype=torch.bool)
    others = [i for i in (range(f) if frames is None else frames) if i != key_index]
    check(all(0 <= i < f for i in others), f"frames must be indices below {f}, got {list(others)}")
    times = torch.tensor(others, dtype=torch.float32) - key_index
    if key_pixels is not None:
        check(tuple(key_pixels.shape) == (b, *pixels.shape[2:]),
              f"key_pixels must be (B, 3, H, W) = {(b, *pixels.shape[2:])}, got {tuple(key_pixels.shape)}")
    for n in range(b):
        key = pixels[n, key_index] if key_pixels is None else key_pixels[n].to(pixels)
        first = register_similarity(key, pixels[n, others])
        scale = smooth_scales(first.scale.cpu(), times, (first.score >= min_score).cpu())
        reg = register_shift(key, pixels[n, others], scale.to(pixels.device))
        good = reg.score >= min_score
        if not bool(good.any()):
            continue
        picked = [others[i] for i in torch.nonzero(good.cpu()).flatten().tolist()]
        warped = similarity_warp(key.expand(len(picked), -1, -1, -1), reg.scale[good], reg.shift[good])
        encoded = encode(warped).to(init)
        init[n, :, picked] = rearrange(encoded, "f c h w -> c f h w")
        warped_mask[n, picked] = True
    return init, warped_mask
