"""Flow warping error (Lai et al. 2018, "Learning Blind Video Temporal Consistency"): lower is steadier.

For each pair of consecutive frames ``(I_t, I_t+1)``:

1. optical flow both ways, ``f = flow(I_t -> I_t+1)`` on frame t's grid and ``b = flow(I_t+1 -> I_t)``
   (OpenCV DIS by default, or Farneback: classical methods that need no weights; Lai et al. used FlowNet2);
2. ``W = I_t+1(x + f(x))``: frame t+1 warped back onto frame t (bilinear);
3. occlusion mask (Ruder et al. 2016, as in Lai et al.'s ``detect_occlusion``): a pixel is occluded where
   the forward-backward check fails, ``|f + b_w|^2 > 0.01 (|f|^2 + |b_w|^2) + 0.5`` with ``b_w = b(x + f(x))``,
   on motion boundaries, ``|grad f|^2 > 0.01 |f|^2 + 0.002`` (``motion_boundaries=True``, as Lai et al.'s
   code), and where ``x + f(x)`` leaves the frame;
4. the pair's error is the mean of ``(I_t - W)^2`` over the visible pixels and the 3 channels.

The video's error is the mean over its pairs (pairs with no visible pixel are skipped; all of them ->
NaN), a batch's the mean over videos. Pixels are in ``[0, 1]`` as in Lai et al.'s evaluation
(``pixel_max=255`` gives 0..255 units, 65025x larger). ``flow_videos`` computes flows and masks on other
videos of the same sizes (Lai et al.'s protocol takes them from the unprocessed input video); by default
they come from the video itself, as text-to-video papers do.
"""

from __future__ import annotations

import numpy as np

from microcinema.core.errors import MicroCinemaError, check
from microcinema.core.video_io import to_uint8_frames
from microcinema.eval.metrics._common import Clips, clip_list, progress

FLOW_METHODS = ("dis", "farneback")


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MicroCinemaError("warping error needs OpenCV: pip install 'microcinema[metrics]' "
                               "(opencv-python-headless)") from None
    return cv2


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow ``(H, W, 2)`` (x, y in pixels) from RGB ``uint8`` frame ``a`` to ``b``: ``a(p) ~ b(p + flow(p))``."""
    check(method in FLOW_METHODS, f"optical_flow: method must be one of {FLOW_METHODS}, got {method!r}")
    cv2 = _cv2()
    ga, gb = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY), cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
    if method == "dis":
        return cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM).calc(ga, gb, None)
    return cv2.calcOpticalFlowFarneback(ga, gb, None, pyr_scale=0.5, levels=3, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=0)


def _sample_points(flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h, w = flow.shape[:2]
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    return gx + flow[..., 0], gy + flow[..., 1]


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image(p + flow(p))``: bilinear backward warping (border pixels repeat), any channel count."""
    cv2 = _cv2()
    map_x, map_y = _sample_points(flow)
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def visible_mask(forward: np.ndarray, backward: np.ndarray, motion_boundaries: bool = True) -> np.ndarray:
    """Boolean ``(H, W)``, True where a pixel of the first frame is visible in the second (see module doc)."""
    b_w = warp(backward, forward)
    fb = ((forward + b_w) ** 2).sum(-1)
    occluded = fb > 0.01 * ((forward ** 2).sum(-1) + (b_w ** 2).sum(-1)) + 0.5
    if motion_boundaries:  # forward differences, zero on the last row/column (as Lai et al.)
        du = np.zeros_like(forward)
        dv = np.zeros_like(forward)
        du[:, :-1] = forward[:, :-1] - forward[:, 1:]
        dv[:-1] = forward[:-1] - forward[1:]
        occluded |= (du ** 2 + dv ** 2).sum(-1) > 0.01 * (forward ** 2).sum(-1) + 0.002
    map_x, map_y = _sample_points(forward)
    h, w = forward.shape[:2]
    occluded |= (map_x < 0) | (map_x > w - 1) | (map_y < 0) | (map_y > h - 1)
    return ~occluded


def _clip_error(frames: np.ndarray, flow_frames: np.ndarray, method: str, motion_boundaries: bool,
                pixel_max: float) -> float:
    errors = []
    images = frames.astype(np.float32) * np.float32(pixel_max / 255.0)
    for t in range(frames.shape[0] - 1):
        forward = optical_flow(flow_frames[t], flow_frames[t + 1], method)
        backward = optical_flow(flow_frames[t + 1], flow_frames[t], method)
        mask = visible_mask(forward, backward, motion_boundaries)
        if mask.any():
            diff = images[t] - warp(images[t + 1], forward)
            errors.append(float((diff[mask].astype(np.float64) ** 2).mean()))
    return float(np.mean(errors)) if errors else float("nan")


def warping_error(videos: Clips, *, method: str = "dis", motion_boundaries: bool = True, pixel_max: float = 1.0,
                  flow_videos: Clips | None = None) -> float:
    """Flow warping error of a clip (``uint8 (T, H, W, 3)`` or float ``(T, 3, H, W)`` in ``[-1, 1]``), a batch
    or a list of clips: mean over videos of the mean over frame pairs (see the module docstring)."""
    check(method in FLOW_METHODS, f"warping_error: method must be one of {FLOW_METHODS}, got {method!r}")
    clips = [to_uint8_frames(c) for c in clip_list(videos)]
    flow_clips = clips if flow_videos is None else [to_uint8_frames(c) for c in clip_list(flow_videos)]
    check(len(flow_clips) == len(clips), f"warping_error: {len(clips)} videos but {len(flow_clips)} flow videos")
    scores = []
    for clip, flow_clip in progress(list(zip(clips, flow_clips)), "warping error", unit="video"):
        check(clip.shape[0] >= 2, f"warping_error: a clip has {clip.shape[0]} frame; need at least 2")
        check(flow_clip.shape == clip.shape, f"warping_error: flow video {flow_clip.shape} != video {clip.shape}")
        scores.append(_clip_error(clip, flow_clip, method, motion_boundaries, pixel_max))
    return float(np.mean(scores))
