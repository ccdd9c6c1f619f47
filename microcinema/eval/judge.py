"""Judge generated frames and videos of the procedural domain from their pixels (DESIGN.md section 5).

A generated frame is read back into the domain's vocabulary so it can be scored against the prompt's
ground truth: its object's colour (one of :data:`~microcinema.data.synthetic.COLOURS`), the object (one of
:data:`~microcinema.data.synthetic.OBJECTS`), the object's centre and extent, and, for a video, the motion
(one of :data:`~microcinema.data.synthetic.MOTIONS`) and whether colour and object are kept in every frame.

Pipeline of one frame (:func:`judge_frame`):

1. :func:`segment`: the background is the median of the border pixels (the generator keeps every object
   at least one pixel off the border); a pixel belongs to the object when its RGB distance to the
   background is at least :data:`LOW_FRACTION` of the frame's peak contrast (and above a noise floor, so
   a background-only frame yields nothing); the largest component is kept with the components near it
   (handwritten digits can come apart into several strokes).
2. :func:`judge_colour`: the median colour of the most opaque object pixels, matched to the palette by a
   CIELAB distance after accounting for partial coverage over the known background.
3. :class:`ObjectClassifier`: a small MLP over a colour-free coverage map of the object's square crop,
   trained on frames rendered by the generator itself and degraded the way a small diffusion model
   degrades them (blur, noise, colour shift, JPEG loss, slight warps). Its weights ship as
   ``microcinema/embedded/weights/judge/object_classifier.npz`` (141 KiB: float16 weights, plain arrays, loaded
   without pickle); they were produced by::

       OMP_NUM_THREADS=1 python -m microcinema.eval.judge --train --out microcinema/embedded/weights/judge/object_classifier.npz

   (defaults: ``--num-samples 16000 --seed 0``; about 30 s of one CPU core: ~23 s rendering, ~7 s fitting;
   bit-for-bit deterministic). ``scripts/judge_accuracy.py`` measures the judge (numbers in its docstring).

A video (:func:`judge_video`) is judged frame by frame; the motion comes from robust (Theil-Sen) slopes
of the centre and log-extent trajectories, with thresholds derived from the generator's own motion
parameters (see :func:`motion_thresholds`).
"""

from __future__ import annotations

import argparse
import ast
import io
import os
import time
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import numpy as np
from PIL import Image
from scipy import ndimage

from microcinema.data import synthetic
from microcinema.data.synthetic import BACKGROUNDS, COLOURS, MOTIONS, OBJECTS, ClipSpec, render_mask
from microcinema.embedded import WEIGHTS_DIR
from microcinema.core.errors import MicroCinemaError, check

# ----------------------------------------------------------------------------------------------
# Constants (all justified where they are used)
# ----------------------------------------------------------------------------------------------

#: Border width (px) whose pixels estimate the background.
BORDER = 2
#: Smallest RGB distance (0..255 units) that can count as object. The weakest object/background contrast
#: of the palette is green on forest (137), so 30 keeps every object while staying far above 8-bit
#: rounding and codec noise; on noisy frames the floor rises to ``NOISE_FLOOR_SIGMAS`` noise deviations.
CONTRAST_FLOOR = 30.0
#: For 3-channel Gaussian noise of deviation s, the distance to the background exceeds 5.5 s for about
#: 1 pixel in 10^5 (chi distribution, 3 degrees of freedom), i.e. well under one pixel per 64x64 frame.
NOISE_FLOOR_SIGMAS = 5.5
#: Object pixels: distance >= LOW_FRACTION x peak contrast. Below the anti-aliased edge (coverage 0.5)
#: so thin, blurred digit strokes stay connected, above the blur halo of the edge.
LOW_FRACTION = 0.35
#: A component only counts if it reaches HIGH_FRACTION x peak somewhere (rejects noise specks and halos).
HIGH_FRACTION = 0.6
#: Components within this fraction of the main component's extent join it (broken digit strokes).
NEAR_FRACTION = 0.3
#: Smallest object (px of mask) that counts as found; the smallest rendered object (extent 0.16 x 64 px,
#: a thin digit) still has about 20.
MIN_AREA = 4
#: Object pixels whose contrast is at least this fraction of the object's 90th percentile are "opaque".
OPAQUE_FRACTION = 0.8
#: Coverage range used when matching a colour to a palette entry (see :func:`judge_colour`).
ALPHA_RANGE = (0.45, 1.0)
#: Side (px) of the object crop fed to the classifier, and its padding around the bounding box.
CROP = 20
CROP_PAD = 0.12

OBJECT_NAMES: tuple[str, ...] = tuple(OBJECTS)
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = np.array([COLOURS[c][0] for c in COLOUR_NAMES], dtype=np.float64)

DEFAULT_WEIGHTS = WEIGHTS_DIR / "judge" / "object_classifier.npz"
DEFAULT_NUM_SAMPLES = 16000
_FORMAT_VERSION = 1


# ----------------------------------------------------------------------------------------------
# Segmentation
# ----------------------------------------------------------------------------------------------


@dataclass
class Segmentation:
    """The object found in one frame: ``mask`` (bool, H x W), the background colour, per-pixel contrast
    (RGB distance to the background), the peak contrast and the floor under which nothing is object."""

    mask: np.ndarray
    background: np.ndarray
    contrast: np.ndarray
    peak: float
    floor: float

    @property
    def found(self) -> bool:
        return int(self.mask.sum()) >= MIN_AREA


def _as_frame(frame: np.ndarray) -> np.ndarray:
    frame = np.asarray(frame)
    check(frame.ndim == 3 and frame.shape[2] == 3 and min(frame.shape[:2]) > 2 * BORDER,
          f"a frame must be (H, W, 3) with H, W > {2 * BORDER}, got shape {frame.shape}")
    return frame.astype(np.float64)


def _check_uint8(frames: np.ndarray) -> np.ndarray:
    """Frames given to the judge must be uint8 0..255 (a model's [-1, 1] output: ``((x + 1) * 127.5).round()``)."""
    frames = np.asarray(frames)
    check(frames.dtype == np.uint8, f"frames must be uint8 RGB 0..255, got {frames.dtype}; convert a model's [-1, 1] "
          "output with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8)")
    return frames


def _border_pixels(frame: np.ndarray) -> np.ndarray:
    b = BORDER
    parts = [frame[:b].reshape(-1, 3), frame[-b:].reshape(-1, 3), frame[b:-b, :b].reshape(-1, 3),
             frame[b:-b, -b:].reshape(-1, 3)]
    return np.concatenate(parts)


def estimate_background(frame: np.ndarray) -> tuple[np.ndarray, float]:
    """Background RGB (median of the border pixels) and the per-channel noise deviation there (MAD)."""
    border = _border_pixels(_as_frame(frame))
    background = np.median(border, axis=0)
    mad = np.median(np.abs(border - background), axis=0) * 1.4826
    return background, float(mad.max())


def _components(candidate: np.ndarray, contrast: np.ndarray, high: float) -> tuple[np.ndarray, list[int]]:
    """8-connected components of ``candidate``; the labels of those reaching ``high`` somewhere."""
    labels, count = ndimage.label(candidate, structure=np.ones((3, 3), bool))
    strong = labels[(contrast >= high) & candidate]
    return labels, [int(k) for k in np.unique(strong) if k > 0]


def _extent_of(mask: np.ndarray) -> float:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return float(max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1)


def _join_near(labels: np.ndarray, keep: list[int], contrast: np.ndarray) -> np.ndarray:
    """The component with the most contrast mass plus every kept component near it."""
    if len(keep) == 1:
        return labels == keep[0]
    masses = np.bincount(labels.ravel(), weights=contrast.ravel())[keep]
    main = labels == keep[int(np.argmax(masses))]
    gap = max(2.0, NEAR_FRACTION * _extent_of(main))
    distance = ndimage.distance_transform_edt(~main)
    mask = main.copy()
    for k in keep:
        part = labels == k
        if not part[main].any() and distance[part].min() <= gap:
            mask |= part
    return mask


def segment_frame(frame: np.ndarray) -> Segmentation:
    """Segment one frame (uint8 H x W x 3) into background and object; see :func:`segment`."""
    pixels = _as_frame(_check_uint8(frame))
    background, noise = estimate_background(pixels)
    contrast = np.linalg.norm(pixels - background, axis=2)
    floor = max(CONTRAST_FLOOR, NOISE_FLOOR_SIGMAS * noise)
    # 5th largest contrast: a few noise spikes cannot pose as the object's peak
    peak = float(np.partition(contrast.ravel(), -5)[-5])
    empty = Segmentation(np.zeros(contrast.shape, bool), background, contrast, peak, floor)
    if peak < floor:
        return empty
    candidate = contrast >= max(floor, LOW_FRACTION * peak)
    labels, keep = _components(candidate, contrast, max(floor, HIGH_FRACTION * peak))
    if not keep:
        return empty
    mask = _join_near(labels, keep, contrast)
    return Segmentation(mask, background, contrast, peak, floor)


def segment(frame: np.ndarray) -> np.ndarray:
    """Object mask (bool H x W) of a frame; all False when the frame shows only background.

    Background = median of the ``BORDER``-px border; contrast = RGB distance to it; object pixels have
    contrast >= max(noise floor, ``LOW_FRACTION`` x peak); the largest component (by contrast mass) is
    kept with the components within ``NEAR_FRACTION`` of its extent (broken digit strokes).
    """
    return segment_frame(frame).mask


# ----------------------------------------------------------------------------------------------
# Colour
# ----------------------------------------------------------------------------------------------


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (..., 3) in 0..255 -> CIELAB (..., 3) (D65 white)."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    matrix = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                       [0.0193339, 0.1191920, 0.9503041]])
    xyz = linear @ matrix.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def object_colour(frame: np.ndarray, mask: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Median RGB of the most opaque object pixels (contrast >= ``OPAQUE_FRACTION`` x its 90th percentile)."""
    pixels = _as_frame(frame)
    check(mask.shape == pixels.shape[:2] and mask.any(), "the mask must match the frame and select some pixels")
    background = estimate_background(pixels)[0] if background is None else np.asarray(background, float)
    inside = pixels[mask]
    contrast = np.linalg.norm(inside - background, axis=1)
    opaque = contrast >= OPAQUE_FRACTION * np.percentile(contrast, 90)
    return np.median(inside[opaque], axis=0)


def match_colour(colour: np.ndarray, background: np.ndarray) -> tuple[str, float]:
    """Nearest palette colour to an observed object colour, with its CIELAB distance (Delta E 1976).

    Each palette colour ``c`` is first mixed with the background at the coverage ``a`` that best explains
    the observation (least squares in RGB, ``a`` clamped to :data:`ALPHA_RANGE`): thin or blurred strokes
    are partly background, which darkens them along the line background -> c, not towards another hue.
    The comparison is then made in CIELAB, where distances follow perceived difference: hue and lightness
    both count, so white is not confused with pale yellow or cyan, as it would be after normalising
    brightness, and a darker orange is not pulled towards red, as it can be in raw RGB.
    """
    colour, background = np.asarray(colour, float), np.asarray(background, float)
    direction = _PALETTE - background
    alpha = ((colour - background) @ direction.T) / np.maximum((direction ** 2).sum(1), 1e-9)
    alpha = np.clip(alpha, *ALPHA_RANGE)
    predicted = background + alpha[:, None] * direction
    distance = np.linalg.norm(rgb_to_lab(predicted) - rgb_to_lab(colour), axis=1)
    best = int(np.argmin(distance))
    return COLOUR_NAMES[best], float(distance[best])


def judge_colour(frame: np.ndarray, mask: np.ndarray, background: np.ndarray | None = None) -> tuple[str, float]:
    """``(colour name, Delta E)`` of the object under ``mask``: :func:`object_colour` -> :func:`match_colour`.

    A distance above about 40 means the colour is far from every palette entry.
    """
    pixels = _as_frame(_check_uint8(frame))
    background = estimate_background(pixels)[0] if background is None else np.asarray(background, float)
    return match_colour(object_colour(pixels, mask, background), background)


# ----------------------------------------------------------------------------------------------
# Geometry and the classifier's input
# ----------------------------------------------------------------------------------------------


def coverage_map(frame: np.ndarray, seg: Segmentation) -> np.ndarray:
    """Per-pixel object coverage in [0, 1] (float32 H x W): the projection of (pixel - background) onto
    (object colour - background), kept only on the object mask grown by one pixel (anti-aliased edges)."""
    pixels = _as_frame(frame)
    if not seg.found:
        return np.zeros(seg.mask.shape, np.float32)
    direction = object_colour(pixels, seg.mask, seg.background) - seg.background
    alpha = (pixels - seg.background) @ direction / max(float(direction @ direction), 1e-9)
    support = ndimage.binary_dilation(seg.mask, structure=np.ones((3, 3), bool))
    return np.where(support, np.clip(alpha, 0.0, 1.0), 0.0).astype(np.float32)


def centre_and_extent(alpha: np.ndarray) -> tuple[tuple[float, float], float]:
    """Coverage-weighted centroid (x, y) and sub-pixel extent: the larger of the width and the height,
    each the sum over columns (rows) of the column's (row's) peak coverage, which for an anti-aliased
    edge counts the partly covered pixel by its covered fraction."""
    total = float(alpha.sum())
    ys, xs = np.indices(alpha.shape) + 0.5  # pixel (i, j) covers [j, j + 1) x [i, i + 1), like the renderer
    centre = (float((alpha * xs).sum() / total), float((alpha * ys).sum() / total))
    extent = max(float(alpha.max(0).sum()), float(alpha.max(1).sum()))
    return centre, extent


def object_crop(alpha: np.ndarray, mask: np.ndarray, side: int = CROP) -> np.ndarray:
    """The coverage map's square crop around the mask's bounding box (padded by ``CROP_PAD`` each side,
    aspect ratio kept), resampled to ``side`` x ``side`` (antialiased when shrinking)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    cy, cx = (rows[0] + rows[-1] + 1) / 2, (cols[0] + cols[-1] + 1) / 2
    half = max(rows[-1] - rows[0], cols[-1] - cols[0], 1) * (0.5 + CROP_PAD) + 0.5
    pad = int(np.ceil(half)) + 2
    padded = np.pad(alpha.astype(np.float32), pad)
    box = (cx - half + pad, cy - half + pad, cx + half + pad, cy + half + pad)
    image = Image.fromarray(padded, mode="F").resize((side, side), Image.BILINEAR, box=box)
    return np.asarray(image, dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Degradations (used to train the classifier and to test robustness)
# ----------------------------------------------------------------------------------------------


def degrade_frame(frame: np.ndarray, *, blur_sigma: float = 0.0, noise_sigma: float = 0.0,
                  colour_shift: Sequence[float] = (0.0, 0.0, 0.0), jpeg_quality: int | None = None,
                  rng: np.random.Generator | None = None) -> np.ndarray:
    """Mimic a generative model's output: Gaussian blur (px), additive Gaussian noise (0..255 units), a global
    colour shift, optional JPEG loss; returns uint8. Deterministic given ``rng``."""
    out = np.asarray(frame, dtype=np.float64)
    if blur_sigma > 0:
        out = ndimage.gaussian_filter(out, sigma=(blur_sigma, blur_sigma, 0), mode="nearest")
    out = out + np.asarray(colour_shift, float)
    if noise_sigma > 0:
        rng = np.random.default_rng(0) if rng is None else rng
        out = out + rng.normal(0.0, noise_sigma, out.shape)
    out = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    if jpeg_quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(out).save(buffer, format="JPEG", quality=int(jpeg_quality))
        out = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    return out


def _warp(alpha: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A slight random affine warp about the object's centre (rotation, anisotropic scale, shear)."""
    angle = np.deg2rad(rng.uniform(-8, 8))
    scale = rng.uniform(0.9, 1.1, size=2)
    shear = rng.uniform(-0.08, 0.08)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = rotation @ np.array([[scale[0], shear], [0.0, scale[1]]])
    inverse = np.linalg.inv(matrix)
    ys, xs = np.indices(alpha.shape)
    total = max(float(alpha.sum()), 1e-9)
    centre = np.array([(alpha * ys).sum() / total, (alpha * xs).sum() / total])
    return ndimage.affine_transform(alpha, inverse, offset=centre - inverse @ centre, order=1)


def _training_frame(obj: str, rng: np.random.Generator, digit_pool: Mapping[str, np.ndarray],
                    size: int = 64) -> np.ndarray:
    """One randomly placed, coloured, warped and degraded rendering of ``obj``."""
    digit = obj.startswith("digit")
    if rng.random() < 0.6:
        lo, hi = synthetic.DIGIT_SIZE if digit else synthetic.SIZE
    else:  # the range grow / shrink clips sweep
        lo, hi = synthetic.GROW_START[0], synthetic.MAX_SIZE
    extent = rng.uniform(lo, hi) * size
    half = extent / 2 + 1
    centre = rng.uniform(half, size - half, size=2)
    instance = int(rng.choice(digit_pool[obj])) if digit else None
    alpha = render_mask(obj, (float(centre[0]), float(centre[1])), float(extent), size, instance)
    if rng.random() < 0.5:
        alpha = _warp(alpha, rng)
    colour = np.array(COLOURS[COLOUR_NAMES[rng.integers(len(COLOURS))]][0], float)
    colour = np.clip(colour * rng.uniform(0.8, 1.05) + rng.normal(0, 12, 3), 0, 255)
    background = np.array(list(BACKGROUNDS.values())[rng.integers(len(BACKGROUNDS))], float)
    background = np.clip(background + rng.normal(0, 8, 3), 0, 255)
    frame = background * (1 - alpha[..., None]) + colour * alpha[..., None]
    return degrade_frame(frame, blur_sigma=rng.uniform(0, 1.2) if rng.random() < 0.8 else 0.0,
                         noise_sigma=rng.uniform(0, 12), colour_shift=rng.normal(0, 6, 3),
                         jpeg_quality=int(rng.integers(35, 95)) if rng.random() < 0.25 else None, rng=rng)


def frame_features(frame: np.ndarray, seg: Segmentation | None = None) -> np.ndarray | None:
    """The classifier's input for one frame: the flattened ``CROP`` x ``CROP`` coverage crop (None if empty)."""
    seg = segment_frame(frame) if seg is None else seg
    if not seg.found:
        return None
    return object_crop(coverage_map(frame, seg), seg.mask).ravel()


# ----------------------------------------------------------------------------------------------
# Object classifier
# ----------------------------------------------------------------------------------------------


class ObjectClassifier:
    """Predicts one of :data:`OBJECT_NAMES` from a frame: a one-hidden-layer ReLU MLP (scikit-learn) over
    the object's coverage crop (:func:`frame_features`). Inference is plain numpy, so a saved classifier is
    a small ``.npz`` of arrays that loads without pickle.

    ``ObjectClassifier().fit(num_samples, seed)`` trains on frames the generator renders (balanced over the
    objects, every colour and background, all sizes the motions produce) degraded as by a generative
    model; see :func:`_training_frame`.
    """

    def __init__(self, hidden: int = 192, max_iter: int = 60) -> None:
        self.hidden, self.max_iter = hidden, max_iter
        self.weights: list[np.ndarray] = []
        self.biases: list[np.ndarray] = []
        self.classes: tuple[str, ...] = OBJECT_NAMES
        self.info: dict = {}

    # -- training --------------------------------------------------------------------------------

    @staticmethod
    def training_set(num_samples: int, seed: int = 0, digit_instances: Sequence[int] | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
        """``(features (N, CROP*CROP), labels (N,))``, balanced over the objects, deterministic in ``seed``.
        ``digit_instances`` restricts the ``load_digits`` images used (to test unseen handwriting)."""
        check(num_samples >= len(OBJECT_NAMES), f"num_samples must be >= {len(OBJECT_NAMES)}, got {num_samples}")
        targets = synthetic.digit_images()[1]
        allowed = np.arange(len(targets)) if digit_instances is None else np.asarray(digit_instances)
        pool = {f"digit{d}": allowed[targets[allowed] == d] for d in range(10)}
        check(all(len(v) for v in pool.values()), "digit_instances must include every digit")
        rng = np.random.default_rng([seed, 20240917])
        features, labels = [], []
        for i in range(num_samples):
            label = i % len(OBJECT_NAMES)
            x = frame_features(_training_frame(OBJECT_NAMES[label], rng, pool))
            if x is not None:
                features.append(x)
                labels.append(label)
        return np.stack(features), np.array(labels)

    def fit(self, num_samples: int = DEFAULT_NUM_SAMPLES, seed: int = 0,
            digit_instances: Sequence[int] | None = None) -> "ObjectClassifier":
        """Render ``num_samples`` degraded training frames and fit the MLP (single-threaded, deterministic)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.neural_network import MLPClassifier
        from threadpoolctl import threadpool_limits

        start = time.perf_counter()
        x, y = self.training_set(num_samples, seed, digit_instances)
        rendered = time.perf_counter()
        mlp = MLPClassifier(hidden_layer_sizes=(self.hidden,), alpha=1e-4, batch_size=128, learning_rate_init=2e-3,
                            max_iter=self.max_iter, n_iter_no_change=8, tol=1e-4, random_state=seed)
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is a deliberate time budget
            mlp.fit(x, y)
        classes = [OBJECT_NAMES[int(k)] for k in mlp.classes_]
        check(tuple(classes) == OBJECT_NAMES, "every object must occur in the training set")
        self.weights = [w.astype(np.float32) for w in mlp.coefs_]
        self.biases = [b.astype(np.float32) for b in mlp.intercepts_]
        self.info = {"num_samples": num_samples, "seed": seed, "epochs": mlp.n_iter_,
                     "train_accuracy": float(mlp.score(x, y)), "render_s": rendered - start,
                     "fit_s": time.perf_counter() - rendered}
        return self

    # -- inference -------------------------------------------------------------------------------

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 14) for feature rows (N, CROP*CROP)."""
        check(bool(self.weights), "the classifier is not trained: call fit() or ObjectClassifier.load()")
        h = np.asarray(features, np.float32)
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            h = np.maximum(h @ w + b, 0.0)
        logits = h @ self.weights[-1] + self.biases[-1]
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def predict_with_confidence(self, frames: np.ndarray) -> list[tuple[str | None, float]]:
        """``(object or None when no object is found, probability)`` per frame of (N, H, W, 3)."""
        frames = _check_uint8(frames)
        frames = frames[None] if frames.ndim == 3 else frames
        features = [frame_features(f) for f in frames]
        return self._decide(features)

    def _decide(self, features: Sequence[np.ndarray | None]) -> list[tuple[str | None, float]]:
        rows = [x for x in features if x is not None]
        probs = iter(self.predict_proba_features(np.stack(rows)) if rows else [])
        out = []
        for x in features:
            p = next(probs) if x is not None else None
            out.append((None, 0.0) if p is None else (self.classes[int(np.argmax(p))], float(p.max())))
        return out

    def predict(self, frames: np.ndarray) -> list[str | None]:
        """Object name per frame of ``frames`` (N, H, W, 3) or one frame (H, W, 3); None where none is found."""
        return [name for name, _ in self.predict_with_confidence(frames)]

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the weights (float16, plain arrays) and metadata to an ``.npz``; returns the path."""
        check(bool(self.weights), "the classifier is not trained: nothing to save")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"w{i}": w.astype(np.float16) for i, w in enumerate(self.weights)}
        arrays.update({f"b{i}": b.astype(np.float32) for i, b in enumerate(self.biases)})
        meta = {"version": _FORMAT_VERSION, "crop": CROP, "crop_pad": CROP_PAD, "classes": list(self.classes),
                **{k: v for k, v in self.info.items() if not k.endswith("_s")}}
        tmp = path.with_name(f".{path.name}.tmp.npz")
        np.savez_compressed(tmp, meta=np.array(repr(meta)), **arrays)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ObjectClassifier":
        """Load a classifier written by :meth:`save` (no pickle involved)."""
        path = Path(path)
        check(path.is_file(),
              f"no object classifier at {path}: train one with `python -m microcinema.eval.judge --train`")
        with np.load(path, allow_pickle=False) as data:
            meta = ast.literal_eval(str(data["meta"]))
            layers = sum(1 for k in data.files if k.startswith("w"))
            weights = [data[f"w{i}"].astype(np.float32) for i in range(layers)]
            biases = [data[f"b{i}"].astype(np.float32) for i in range(layers)]
        check(meta.get("version") == _FORMAT_VERSION and meta.get("crop") == CROP
              and meta.get("crop_pad") == CROP_PAD and tuple(meta.get("classes", ())) == OBJECT_NAMES,
              f"{path} was made for another judge version or object list: retrain it")
        model = cls(hidden=weights[0].shape[1])
        model.weights, model.biases, model.info = weights, biases, meta
        return model


def _cache_path() -> Path:
    root = os.environ.get("MICROCINEMA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "microcinema")
    return Path(root) / "judge" / "object_classifier.npz"


@lru_cache(maxsize=1)
def default_object_classifier() -> ObjectClassifier:
    """The shipped classifier (:data:`DEFAULT_WEIGHTS`); if absent, one trained with the defaults and cached
    under ``$MICROCINEMA_CACHE/judge`` (default ``~/.cache/microcinema/judge``)."""
    for path in (DEFAULT_WEIGHTS, _cache_path()):
        if path.is_file():
            return ObjectClassifier.load(path)
    model = ObjectClassifier().fit(DEFAULT_NUM_SAMPLES, seed=0)
    try:
        model.save(_cache_path())
    except OSError:
        pass  # an unwritable cache only costs retraining next time
    return model


# ----------------------------------------------------------------------------------------------
# Frame and video judgements
# ----------------------------------------------------------------------------------------------


@dataclass
class FrameJudgement:
    """What one frame shows. ``center`` (x, y) and ``size`` (extent) are in pixels, like
    :class:`~microcinema.data.synthetic.ClipSpec`'s; ``colour``/``object`` are None when nothing is found."""

    found: bool
    colour: str | None = None
    object: str | None = None
    center: tuple[float, float] | None = None
    size: float = 0.0
    colour_distance: float = float("nan")
    object_confidence: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def _judge_parts(frame: np.ndarray) -> tuple[FrameJudgement, np.ndarray | None]:
    """The judgement without the object, and the classifier's features (None when nothing is found)."""
    seg = segment_frame(frame)
    if not seg.found:
        return FrameJudgement(found=False), None
    colour, distance = match_colour(object_colour(frame, seg.mask, seg.background), seg.background)
    alpha = coverage_map(frame, seg)
    center, extent = centre_and_extent(alpha)
    judgement = FrameJudgement(found=True, colour=colour, center=center, size=extent, colour_distance=distance)
    return judgement, object_crop(alpha, seg.mask).ravel()


def judge_frames(frames: np.ndarray, classifier: ObjectClassifier | None = None) -> list[FrameJudgement]:
    """:func:`judge_frame` for each frame of (N, H, W, 3), classifying the objects in one batch."""
    frames = _check_uint8(frames)
    check(frames.ndim == 4, f"frames must be (N, H, W, 3), got shape {frames.shape}")
    classifier = default_object_classifier() if classifier is None else classifier
    parts = [_judge_parts(f) for f in frames]
    for (judgement, _), (name, confidence) in zip(parts, classifier._decide([x for _, x in parts])):
        judgement.object, judgement.object_confidence = name, confidence
    return [j for j, _ in parts]


def judge_frame(frame: np.ndarray, classifier: ObjectClassifier | None = None) -> FrameJudgement:
    """Judge one frame (uint8 H x W x 3): found?, colour, object, centre (x, y) and extent in pixels."""
    return judge_frames(np.asarray(frame)[None], classifier)[0]


@dataclass
class MotionThresholds:
    """Smallest net change over a clip that counts as motion: ``translation`` in px, ``log_size`` as
    |log(final extent / first extent)|."""

    translation: float
    log_size: float


def motion_thresholds(duration: float, frame_size: int) -> MotionThresholds:
    """Half the smallest change the generator makes in ``duration`` seconds (frame of ``frame_size`` px).

    Translation: the slowest drift is ``SPEED[0]`` frame widths per second, capped by the room left by the
    largest object (``1 - DIGIT_SIZE[1]`` of the frame, less 2 px); 9 frames at 2 fps (4 s) at 64 px -> 11.5 px.
    Size: the least growth starts at ``GROW_START[1]`` and gains ``GROW_RATE[0]`` per second (capped at
    ``MAX_SIZE``), a factor 1.9 in 4 s; the threshold is half of it in log terms (factor 1.38). A still
    object changes by neither, so both margins are wide against the judge's ~1 px measurement error.
    """
    s = synthetic
    travel = min(s.SPEED[0] * duration, 1 - s.DIGIT_SIZE[1] - 2 / frame_size)
    growth = min(s.GROW_RATE[0] * duration, s.MAX_SIZE - s.GROW_START[1]) / s.GROW_START[1]
    return MotionThresholds(translation=0.5 * travel * frame_size, log_size=0.5 * float(np.log1p(growth)))


def _theil_sen(t: np.ndarray, v: np.ndarray) -> float:
    """Median of pairwise slopes: robust to a few misjudged frames."""
    i, j = np.triu_indices(len(t), k=1)
    return float(np.median((v[j] - v[i]) / (t[j] - t[i])))


def estimate_motion(times: np.ndarray, centers: np.ndarray, sizes: np.ndarray, frame_size: int
                    ) -> tuple[str | None, tuple[float, float], float]:
    """``(motion, (dx, dy) px over the clip, log size ratio over the clip)`` from per-frame measurements
    (rows with NaN are frames without an object). None when fewer than two frames show the object."""
    times, centers, sizes = np.asarray(times, float), np.asarray(centers, float), np.asarray(sizes, float)
    ok = np.isfinite(centers).all(1) & np.isfinite(sizes) & (sizes > 0)
    if ok.sum() < 2 or np.ptp(times[ok]) <= 0:
        return None, (float("nan"), float("nan")), float("nan")
    duration = float(times[-1] - times[0])
    t = times[ok]
    dx, dy = (_theil_sen(t, centers[ok, k]) * duration for k in range(2))
    log_ratio = _theil_sen(t, np.log(sizes[ok])) * duration
    limits = motion_thresholds(duration, frame_size)
    scores = {"x": abs(dx) / limits.translation, "y": abs(dy) / limits.translation,
              "size": abs(log_ratio) / limits.log_size}
    kind = max(scores, key=scores.get)
    if scores[kind] < 1.0:
        motion = "still"
    elif kind == "x":
        motion = "right" if dx > 0 else "left"
    elif kind == "y":
        motion = "down" if dy > 0 else "up"
    else:
        motion = "grow" if log_ratio > 0 else "shrink"
    return motion, (dx, dy), log_ratio


@dataclass
class VideoJudgement:
    """What a video shows: per-frame judgements, the motion, and how consistently colour and object hold.

    ``colour``/``object`` are the majority over frames with an object; ``colour_kept``/``object_kept`` are
    the fractions of all frames that agree with the target given to :func:`judge_video` (else with the
    majority); a frame without an object agrees with nothing.
    """

    frames: list[FrameJudgement]
    motion: str | None
    displacement: tuple[float, float]
    log_size_ratio: float
    colour: str | None
    object: str | None
    colour_kept: float
    object_kept: float
    found_fraction: float
    thresholds: MotionThresholds = field(default_factory=lambda: MotionThresholds(float("nan"), float("nan")))

    def colour_fraction(self, colour: str) -> float:
        """Fraction of frames judged ``colour``."""
        return sum(f.colour == colour for f in self.frames) / max(len(self.frames), 1)

    def object_fraction(self, obj: str) -> float:
        """Fraction of frames judged ``obj``."""
        return sum(f.object == obj for f in self.frames) / max(len(self.frames), 1)


def _majority(values: Iterable[str | None]) -> str | None:
    counts = Counter(v for v in values if v is not None)
    return counts.most_common(1)[0][0] if counts else None


def judge_video(frames: np.ndarray, fps: float = 2.0, *, colour: str | None = None, object: str | None = None,
                classifier: ObjectClassifier | None = None) -> VideoJudgement:
    """Judge a video (uint8 T x H x W x 3) played at ``fps`` (default: 9 frames at 2 fps, MicroCinema's base).

    The motion uses the clip's duration ``(T - 1) / fps`` for its thresholds (:func:`motion_thresholds`).
    ``colour`` / ``object`` (optional targets) make ``colour_kept`` / ``object_kept`` count agreement with
    them instead of with the majority.
    """
    frames = _check_uint8(frames)
    check(frames.ndim == 4 and len(frames) >= 1, f"frames must be (T, H, W, 3), got shape {frames.shape}")
    check(fps > 0, f"fps must be positive, got {fps}")
    judged = judge_frames(frames, classifier)
    times = np.arange(len(frames)) / fps
    centers = np.array([j.center if j.found else (np.nan, np.nan) for j in judged], float)
    sizes = np.array([j.size if j.found else np.nan for j in judged], float)
    frame_size = min(frames.shape[1:3])
    motion, displacement, log_ratio = estimate_motion(times, centers, sizes, frame_size)
    major_colour, major_object = _majority(j.colour for j in judged), _majority(j.object for j in judged)
    want_colour, want_object = colour or major_colour, object or major_object
    n = len(judged)
    limits = motion_thresholds(max(times[-1], 1e-9), frame_size)
    return VideoJudgement(
        frames=judged, motion=motion, displacement=displacement, log_size_ratio=log_ratio, colour=major_colour,
        object=major_object, colour_kept=sum(j.colour == want_colour for j in judged) / n if want_colour else 0.0,
        object_kept=sum(j.object == want_object for j in judged) / n if want_object else 0.0,
        found_fraction=sum(j.found for j in judged) / n, thresholds=limits)


# ----------------------------------------------------------------------------------------------
# Scoring against the ground truth
# ----------------------------------------------------------------------------------------------


def _truth(truth: ClipSpec | Mapping | Sequence) -> dict:
    """Ground truth as a dict with ``colour``, ``object``, ``motion`` (each may be None)."""
    if isinstance(truth, ClipSpec):
        return {"colour": truth.colour, "object": truth.object, "motion": truth.motion}
    if isinstance(truth, Mapping):
        return {k: truth.get(k) for k in ("colour", "object", "motion")}
    values = list(truth) + [None] * 3
    return dict(zip(("colour", "object", "motion"), values[:3]))


def score_against(judgement: FrameJudgement | VideoJudgement, colour: str | None = None, object: str | None = None,
                  motion: str | None = None) -> dict[str, bool]:
    """Booleans for the targets given: ``found``; ``colour`` / ``object`` (frame: that frame; video: the
    majority); for videos also ``motion``, ``colour_every_frame``, ``object_every_frame``."""
    for name, value, allowed in (("colour", colour, COLOURS), ("object", object, OBJECTS), ("motion", motion, MOTIONS)):
        check(value is None or value in allowed, f"unknown {name} {value!r}: allowed are {', '.join(allowed)}")
    video = isinstance(judgement, VideoJudgement)
    found = judgement.found_fraction == 1.0 if video else judgement.found
    scores = {"found": bool(found)}
    if colour is not None:
        scores["colour"] = judgement.colour == colour
    if object is not None:
        scores["object"] = judgement.object == object
    if video:
        if motion is not None:
            scores["motion"] = judgement.motion == motion
        if colour is not None:
            scores["colour_every_frame"] = judgement.colour_fraction(colour) == 1.0
        if object is not None:
            scores["object_every_frame"] = judgement.object_fraction(object) == 1.0
    return scores


def accuracy_table(pairs: Iterable[tuple[FrameJudgement | VideoJudgement, ClipSpec | Mapping | Sequence]],
                   group_by: str | None = None) -> dict:
    """Mean of every :func:`score_against` boolean over ``(judgement, ground truth)`` pairs, plus ``n``.

    Ground truth: a :class:`ClipSpec`, a mapping or a ``(colour, object, motion)`` tuple. With ``group_by``
    (``"colour"``, ``"object"`` or ``"motion"``) returns ``{group: table}`` per ground-truth value instead.
    """
    pairs = list(pairs)
    if group_by is not None:
        check(group_by in ("colour", "object", "motion"),
              f"group_by must be colour, object or motion, got {group_by!r}")
        groups: dict[str, list] = {}
        for judgement, truth in pairs:
            groups.setdefault(_truth(truth)[group_by], []).append((judgement, truth))
        return {key: accuracy_table(value) for key, value in groups.items()}
    totals: dict[str, list[bool]] = {}
    for judgement, truth in pairs:
        for key, ok in score_against(judgement, **_truth(truth)).items():
            totals.setdefault(key, []).append(ok)
    table = {key: float(np.mean(values)) for key, values in totals.items()}
    table["n"] = len(pairs)
    return table


# ----------------------------------------------------------------------------------------------
# Command line: train and ship the classifier
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m microcinema.eval.judge", description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="train the object classifier and save it")
    parser.add_argument("--out", type=Path, default=DEFAULT_WEIGHTS, help="where to save it (.npz)")
    parser.add_argument("--num-samples", type=int, default=DEFAULT_NUM_SAMPLES)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.train:
        parser.print_help()
        return 0
    try:
        model = ObjectClassifier().fit(args.num_samples, seed=args.seed)
        path = model.save(args.out)
    except MicroCinemaError as error:
        print(f"error: {error}")
        return 2
    info = model.info
    print(f"saved {path} ({path.stat().st_size / 1024:.0f} KiB): {info['epochs']} epochs, train accuracy "
          f"{info['train_accuracy']:.4f}, rendering {info['render_s']:.1f} s + fitting {info['fit_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
