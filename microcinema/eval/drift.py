"""Drift measures for long videos (issue 17 item 9; DESIGN.md section 7), independent of any model.

Everything here takes frames (``uint8 (F, H, W, 3)``), never a model. Two families:

**Any video** (:func:`video_drift`):

- colour statistics per frame (:func:`colour_statistics`): the mean and standard deviation of each channel
  over the frame's pixels, in CIELAB (default; D65, :func:`~microcinema.eval.judge.rgb_to_lab`) or in RGB
  (0..255), and the brightness (mean L* in 0..100 in Lab; mean Rec. 601 luma ``0.299 R + 0.587 G + 0.114 B``
  in 0..255 in RGB);
- the colour distance to the first frame (:func:`distance_to_first`): the Euclidean distance between frame
  t's per-channel means and frame 0's (in Lab this is Delta E*ab 1976 between the mean colours), the same for
  the per-channel standard deviations (contrast washing out or growing), and the brightness change
  ``brightness[t] - brightness[0]`` (signed);
- feature similarity to the first frame (:func:`feature_similarity`) with a CLIP or DINO image model from a
  local folder (:class:`ImageFeatureModel`): the cosine between frame t's embedding and frame 0's (VBench's
  subject consistency compares every frame with the first; its score also averages in the previous frame:
  :func:`feature_similarity` returns that score too);
- the motion amount (:func:`motion_amount`): the mean optical-flow magnitude (pixels per frame) between
  neighbouring frames, OpenCV DIS as :mod:`microcinema.eval.metrics.warping` uses (long rollouts stall).

**The procedural domain** (:func:`domain_drift`), judged from the pixels by :mod:`microcinema.eval.judge`
against a list of segments (each: colour, object, motion, frame count, frame rate): per frame whether the
colour and the object are kept, against the segment's prompt and against the first frame's judgement,
the object's colour distance to the first frame's (Delta E), whether the background is kept (its colour's
Delta E to the first frame's background, :func:`~microcinema.eval.judge.estimate_background`), and the
motion of each segment (:func:`~microcinema.eval.judge.estimate_motion` on that segment's own frames at
its fps).

**The start-end contrast** (:func:`start_end_contrast`), the drift number of FramePack and Helios, is
defined once and used everywhere: for a per-frame measure ``v`` over ``n`` values,
``contrast(v) = mean(v[-k:]) - mean(v[:k])`` with ``k = max(1, floor(0.15 n + 0.5))`` (the first and last
15 % of the values, rounded to the nearest count), NaN values (frames where the measure is undefined, e.g.
no object) left out of each mean. It is signed (end minus start) and in the measure's own units; no drift
reads 0. FramePack reports its absolute value: take ``abs()`` to compare with it. For the motion amount
(one value per neighbouring pair) ``n`` is the number of pairs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from microcinema.core.errors import MicroCinemaError, check
from microcinema.data.synthetic import BACKGROUNDS, COLOURS, MOTIONS, OBJECTS, TRANSLATIONS, ClipSpec
from microcinema.eval.judge import (ObjectClassifier, estimate_motion, judge_frames,
                                    motion_thresholds, object_colour, rgb_to_lab, segment_frame)

#: Fraction of the values at each end that the start-end contrast compares (FramePack, Helios: 15 %).
START_END_FRACTION = 0.15
COLOUR_SPACES = ("lab", "rgb")
#: Rec. 601 luma weights (brightness in RGB space).
LUMA = np.array([0.299, 0.587, 0.114])
_BACKGROUND_LAB = {name: rgb_to_lab(np.array(rgb, float)) for name, rgb in BACKGROUNDS.items()}
#: A background is kept while its Delta E to the first frame's stays within half the smallest distance
#: between two palette backgrounds (black and charcoal are the closest pair), so a swap to any other
#: background of the domain always counts as not kept.
BACKGROUND_TOLERANCE = 0.5 * min(float(np.linalg.norm(_BACKGROUND_LAB[a] - _BACKGROUND_LAB[b]))
                                 for a, b in itertools.combinations(_BACKGROUND_LAB, 2))


# ---------------------------------------------------------------------------------------------- inputs


def check_frames(frames: Any, what: str = "frames") -> np.ndarray:
    """``frames`` as a uint8 ``(F, H, W, 3)`` array with F >= 1, else a one-line :class:`MicroCinemaError`."""
    check(isinstance(frames, (np.ndarray, torch.Tensor, list, tuple)),
          f"{what}: got {type(frames).__name__}; need a uint8 (F, H, W, 3) array")
    if isinstance(frames, (list, tuple)):
        check(len(frames) > 0, f"{what}: empty list of frames; need a uint8 (F, H, W, 3) array with F >= 1")
        shapes = {np.shape(f) for f in frames}
        check(len(shapes) == 1, f"{what}: frames of different shapes {sorted(shapes)}; need one (H, W, 3) shape")
        frames = np.stack([np.asarray(f) for f in frames])
    frames = frames.cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    check(frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[-1] == 3,
          f"{what}: {frames.dtype} array of shape {frames.shape}; need uint8 (F, H, W, 3) (RGB 0..255; convert a "
          "model's [-1, 1] output with ((x + 1) * 127.5).round().clip(0, 255).astype(uint8))")
    check(frames.shape[0] >= 1 and min(frames.shape[1:3]) >= 1,
          f"{what}: empty video of shape {frames.shape}; need at least one frame")
    return frames


def start_end_count(n: int, fraction: float = START_END_FRACTION) -> int:
    """How many values each end of the start-end contrast takes: ``max(1, floor(fraction * n + 0.5))``."""
    check(0 < fraction <= 0.5, f"fraction must be in (0, 0.5], got {fraction}")
    return max(1, int(math.floor(fraction * n + 0.5)))


def start_end_contrast(values: Sequence[float] | np.ndarray, fraction: float = START_END_FRACTION) -> float:
    """Mean over the last ``fraction`` of the values minus mean over the first (module docstring), NaNs
    left out; NaN when an end holds no finite value. Signed, in the values' units."""
    v = np.asarray(values, dtype=np.float64)
    check(v.ndim == 1 and v.size >= 1,
          f"start_end_contrast: need a 1-D series of at least one value, got shape {v.shape}")
    k = start_end_count(v.size, fraction)
    start, end = v[:k][np.isfinite(v[:k])], v[-k:][np.isfinite(v[-k:])]
    if start.size == 0 or end.size == 0:
        return float("nan")
    return float(end.mean() - start.mean())


# ---------------------------------------------------------------------------------------------- colour


@dataclass
class ColourStatistics:
    """Per-frame colour statistics: ``mean`` and ``std`` ``(F, 3)`` per channel, ``brightness`` ``(F,)``."""

    space: str
    mean: np.ndarray
    std: np.ndarray
    brightness: np.ndarray


def colour_statistics(frames: np.ndarray, space: str = "lab") -> ColourStatistics:
    """Mean and standard deviation of each channel over each frame's pixels, and its brightness.

    ``space="lab"``: CIELAB (L* 0..100, a*, b*), brightness = mean L*; ``"rgb"``: 0..255, brightness = mean
    Rec. 601 luma (:data:`LUMA`).
    """
    check(space in COLOUR_SPACES, f"colour space must be one of {', '.join(COLOUR_SPACES)}, got {space!r}")
    frames = check_frames(frames)
    means, stds, brightness = [], [], []
    for frame in frames:  # frame by frame: memory stays flat in the video's length
        pixels = frame.reshape(-1, 3).astype(np.float64)
        values = rgb_to_lab(pixels) if space == "lab" else pixels
        means.append(values.mean(0))
        stds.append(values.std(0))
        brightness.append(values[:, 0].mean() if space == "lab" else float((pixels @ LUMA).mean()))
    return ColourStatistics(space, np.array(means), np.array(stds), np.array(brightness))


def distance_to_first(values: np.ndarray) -> np.ndarray:
    """``|values[t] - values[0]|`` (Euclidean over the last axis for 2-D input): distance to the first frame."""
    values = np.asarray(values, dtype=np.float64)
    diff = values - values[:1]
    return np.abs(diff) if diff.ndim == 1 else np.linalg.norm(diff, axis=-1)


# ---------------------------------------------------------------------------------------------- motion


def motion_amount(frames: np.ndarray, method: str = "dis", top: float | None = None) -> np.ndarray:
    """Mean optical-flow magnitude (pixels per frame) between each pair of neighbouring frames: ``(F - 1,)``,
    value ``t`` for frames ``t -> t + 1`` (OpenCV DIS, as the warping error; needs ``opencv-python-headless``).

    Over the whole frame by default, so a small object moving on a still background reads small; ``top``
    (e.g. 0.05, as VBench's dynamic degree) averages only the largest ``top`` fraction of the magnitudes.
    """
    from microcinema.eval.metrics.warping import optical_flow

    frames = check_frames(frames)
    check(len(frames) >= 2, f"motion amount needs at least 2 frames, got {len(frames)}")
    check(top is None or 0 < top <= 1, f"motion amount: top must be in (0, 1], got {top}")
    values = []
    for a, b in zip(frames[:-1], frames[1:]):
        magnitude = np.linalg.norm(optical_flow(a, b, method), axis=-1).ravel()
        if top is not None:
            k = max(1, int(round(top * magnitude.size)))
            magnitude = np.partition(magnitude, magnitude.size - k)[-k:]
        values.append(float(magnitude.mean()))
    return np.array(values)


# ---------------------------------------------------------------------------------------------- features


IMAGE_MODEL_FOLDER = ("a local transformers image model folder (config.json and weights): CLIPModel, "
                      "CLIPVisionModel(WithProjection), Dinov2Model or another AutoModel vision backbone")
#: Normalisation when the folder has no preprocessor_config.json: CLIP's for CLIP, ImageNet's otherwise.
_CLIP_MEAN_STD = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class ImageFeatureModel:
    """A frozen image encoder from a local folder, for the similarity of frames (no network).

    The embedding of a frame: a ``CLIPModel``'s projected image embedding (``visual_projection`` of the
    vision tower's pooled output, as :class:`~microcinema.eval.metrics.clip_score.ClipScorer`), a
    ``CLIPVisionModelWithProjection``'s ``image_embeds``, otherwise the backbone's ``pooler_output`` (DINOv2:
    the normalised CLS token) or, without one, the first token of ``last_hidden_state``. Preprocessing: the
    shorter side resized to the folder's ``preprocessor_config.json`` size (bicubic, antialiased), the centre
    crop, the folder's mean/std (defaults: the model's ``image_size``, CLIP's or ImageNet's statistics).
    """

    def __init__(self, path: str | Path, *, device: str | torch.device | None = None, batch_size: int = 32) -> None:
        import json

        import transformers

        from microcinema.core.text_encoders import no_progress_bars

        folder = Path(path).expanduser()
        check(folder.is_dir() and (folder / "config.json").is_file(),
              f"feature model: {folder} is not a model folder; need {IMAGE_MODEL_FOLDER}")
        check(batch_size >= 1, f"feature model: batch_size must be >= 1, got {batch_size}")
        try:
            config = json.loads((folder / "config.json").read_text())
            arch = (config.get("architectures") or [""])[0]
            cls = getattr(transformers, arch, None) if arch in (
                "CLIPModel", "CLIPVisionModel", "CLIPVisionModelWithProjection", "Dinov2Model") else None
            with no_progress_bars():
                model = (cls or transformers.AutoModel).from_pretrained(str(folder), local_files_only=True,
                                                                        dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise MicroCinemaError(f"feature model: cannot load {folder} ({type(exc).__name__}: {exc}); "
                                   f"need {IMAGE_MODEL_FOLDER}") from None
        self.kind = type(model).__name__
        vision = getattr(model.config, "vision_config", model.config)
        side = int(getattr(vision, "image_size", 224))
        clip = "clip" in str(getattr(model.config, "model_type", ""))
        mean, std = _CLIP_MEAN_STD if clip else _IMAGENET_MEAN_STD
        crop, short = side, side
        pre = folder / "preprocessor_config.json"
        if pre.is_file():
            settings = json.loads(pre.read_text())
            mean, std = settings.get("image_mean", mean), settings.get("image_std", std)
            crop_size, size = settings.get("crop_size"), settings.get("size")
            crop = int(crop_size.get("height", side)) if isinstance(crop_size, dict) else int(crop_size or side)
            short = (int(size.get("shortest_edge", size.get("height", crop))) if isinstance(size, dict)
                     else int(size or crop))
        self.crop, self.short = crop, max(short, crop)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.batch_size = batch_size

    def _pixels(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0
        h, w = x.shape[-2:]
        scale = self.short / min(h, w)
        size = (max(self.crop, round(h * scale)), max(self.crop, round(w * scale)))
        if size != (h, w):
            x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        top, left = (size[0] - self.crop) // 2, (size[1] - self.crop) // 2
        x = x[..., top:top + self.crop, left:left + self.crop]
        return (x - self.mean) / self.std

    @torch.no_grad()
    def embeddings(self, frames: np.ndarray) -> torch.Tensor:
        """Unit-norm embeddings ``(F, D)`` of uint8 frames ``(F, H, W, 3)`` (float32, on the CPU)."""
        frames = check_frames(frames)
        out = []
        for start in range(0, len(frames), self.batch_size):
            pixels = self._pixels(frames[start:start + self.batch_size]).to(self.device)
            if self.kind == "CLIPModel":
                pooled = self.model.vision_model(pixel_values=pixels).pooler_output
                emb = self.model.visual_projection(pooled)
            else:
                result = self.model(pixel_values=pixels)
                emb = getattr(result, "image_embeds", None)
                if emb is None:
                    emb = getattr(result, "pooler_output", None)
                if emb is None:
                    emb = result.last_hidden_state[:, 0]
            out.append(emb.reshape(len(pixels), -1).float().cpu())
        return F.normalize(torch.cat(out), dim=-1)


def feature_similarity(frames: np.ndarray, model: ImageFeatureModel | str | Path) -> dict[str, Any]:
    """Cosine similarity of frame embeddings: ``to_first`` ``(F,)`` (frame 0 reads 1), ``to_previous``
    ``(F - 1,)`` (frames t and t + 1), and ``subject_consistency``: VBench's score, the mean over frames
    t >= 1 of ``(cos(f_0, f_t) + cos(f_{t-1}, f_t)) / 2`` (NaN for a single frame)."""
    model = model if isinstance(model, ImageFeatureModel) else ImageFeatureModel(model)
    emb = model.embeddings(frames)
    to_first = (emb @ emb[0]).numpy().astype(np.float64)
    to_previous = (emb[1:] * emb[:-1]).sum(-1).numpy().astype(np.float64)
    consistency = float(np.mean((to_first[1:] + to_previous) / 2)) if len(emb) > 1 else float("nan")
    return {"to_first": to_first, "to_previous": to_previous, "subject_consistency": consistency}


# ---------------------------------------------------------------------------------------------- any video


def video_drift(frames: np.ndarray, *, space: str = "lab", feature_model: ImageFeatureModel | str | Path | None = None,
                motion: bool = True, fraction: float = START_END_FRACTION) -> dict[str, Any]:
    """The model-free drift measures of one video (module docstring): ``curves`` (per frame, lists) and
    their ``start_end_contrast`` (signed, each in its curve's units).

    Curves: ``colour_distance`` (per-channel means' distance to frame 0: Delta E in Lab), ``colour_std_distance``
    (the same for the standard deviations), ``brightness`` and ``brightness_change`` (minus frame 0's),
    ``colour_mean`` / ``colour_std`` ``(F, 3)``; with ``motion``, ``motion_amount`` (``F - 1`` values, px per
    frame; skipped for one frame); with ``feature_model``, ``feature_similarity`` (to frame 0) and the
    scalar ``subject_consistency``.
    """
    frames = check_frames(frames)
    stats = colour_statistics(frames, space)
    curves: dict[str, Any] = {
        "colour_distance": distance_to_first(stats.mean), "colour_std_distance": distance_to_first(stats.std),
        "brightness": stats.brightness, "brightness_change": stats.brightness - stats.brightness[0]}
    if motion and len(frames) >= 2:
        curves["motion_amount"] = motion_amount(frames)
    result: dict[str, Any] = {"space": space, "num_frames": int(len(frames))}
    if feature_model is not None:
        similarity = feature_similarity(frames, feature_model)
        curves["feature_similarity"] = similarity["to_first"]
        result["subject_consistency"] = similarity["subject_consistency"]
    # brightness_change is brightness less a constant: the same contrast, listed once
    result["start_end_contrast"] = {k: start_end_contrast(v, fraction) for k, v in curves.items()
                                    if k != "brightness_change"}
    curves["colour_mean"], curves["colour_std"] = stats.mean, stats.std
    result["curves"] = {k: np.asarray(v).tolist() for k, v in curves.items()}
    return result


# ---------------------------------------------------------------------------------------------- domain


@dataclass
class Segment:
    """One prompt of a multi-prompt video of the domain: what it should show for ``num_frames`` frames
    played at ``fps``. ``colour`` / ``object`` / ``motion`` / ``background`` may be None (not scored)."""

    num_frames: int
    colour: str | None = None
    object: str | None = None
    motion: str | None = None
    fps: float = 8.0
    background: str | None = None
    prompt: str | None = None


def as_segment(segment: Segment | ClipSpec | Mapping) -> Segment:
    """A :class:`Segment` from a Segment, a :class:`~microcinema.data.synthetic.ClipSpec` (its caption is the
    prompt) or a mapping with the same keys (``caption`` accepted for ``prompt``), checked."""
    if isinstance(segment, ClipSpec):
        segment = Segment(segment.num_frames, segment.colour, segment.object, segment.motion, segment.fps,
                          segment.background, segment.caption)
    elif isinstance(segment, Mapping):
        keys = {"num_frames", "colour", "object", "motion", "fps", "background", "prompt", "caption"}
        unknown = sorted(set(segment) - keys)
        check(not unknown, f"segment: unknown keys {unknown}; allowed: {', '.join(sorted(keys))}")
        check("num_frames" in segment, "segment: a mapping needs num_frames")
        values = {k: v for k, v in segment.items() if k != "caption"}
        if "caption" in segment and "prompt" not in segment:
            values["prompt"] = segment["caption"]
        segment = Segment(**values)
    check(isinstance(segment, Segment), f"segment: got {type(segment).__name__}; need a Segment, ClipSpec or mapping")
    n = segment.num_frames
    check(isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1,
          f"segment: num_frames must be an integer >= 1, got {n!r}")
    check(isinstance(segment.fps, (int, float)) and math.isfinite(segment.fps) and segment.fps > 0,
          f"segment: fps must be a positive number, got {segment.fps!r}")
    for name, allowed in (("colour", COLOURS), ("object", OBJECTS), ("motion", MOTIONS), ("background", BACKGROUNDS)):
        value = getattr(segment, name)
        check(value is None or value in allowed, f"segment: unknown {name} {value!r}; allowed: {', '.join(allowed)}")
    return segment


def check_segments(segments: Sequence[Segment | ClipSpec | Mapping], num_frames: int | None = None) -> list[Segment]:
    """Segments checked (at least one; frame counts summing to ``num_frames`` when given)."""
    check(isinstance(segments, (list, tuple)) and len(segments) > 0,
          "segments: need a non-empty list of segments (each with num_frames, colour, object, motion)")
    out = [as_segment(s) for s in segments]
    total = sum(s.num_frames for s in out)
    check(num_frames is None or total == num_frames,
          f"segments: frame counts {[s.num_frames for s in out]} sum to {total}, but the video has {num_frames} frames")
    return out


def segment_bounds(segments: Sequence[Segment]) -> list[tuple[int, int]]:
    """``(start, stop)`` frame indices of each segment (stop exclusive)."""
    stops = np.cumsum([s.num_frames for s in segments]).tolist()
    return list(zip([0] + stops[:-1], stops))


def _lab(rgb: np.ndarray) -> np.ndarray:
    return rgb_to_lab(np.asarray(rgb, dtype=np.float64))


def nearest_background(rgb: np.ndarray) -> tuple[str, float]:
    """The palette background nearest an observed background colour, with its Delta E."""
    lab = _lab(rgb)
    name = min(_BACKGROUND_LAB, key=lambda k: float(np.linalg.norm(_BACKGROUND_LAB[k] - lab)))
    return name, float(np.linalg.norm(_BACKGROUND_LAB[name] - lab))


def _first_false(flags: Sequence[bool]) -> int | None:
    """The first frame whose flag is False (the first frame the property is lost), or None."""
    return next((i for i, ok in enumerate(flags) if not ok), None)


def room_for_motion(motion: str | None, centers: np.ndarray, sizes: np.ndarray, frame_shape: Sequence[int]
                    ) -> float | None:
    """Free pixels between the object and the frame's border in ``motion``'s direction, at the first frame whose
    centre and extent were measured (``centers`` (x, y) and ``sizes`` per frame, NaN where not found): None for
    a motion that is not a translation or a segment where the object is never found."""
    if motion not in TRANSLATIONS:
        return None
    ok = np.flatnonzero(np.isfinite(centers).all(1) & np.isfinite(sizes))
    if len(ok) == 0:
        return None
    axis, sign = TRANSLATIONS[motion]
    centre, half = float(centers[ok[0], axis]), float(sizes[ok[0]]) / 2
    length = int(frame_shape[1] if axis == 0 else frame_shape[0])
    return max(0.0, centre - half) if sign < 0 else max(0.0, length - centre - half)


def domain_drift(frames: np.ndarray, segments: Sequence[Segment | ClipSpec | Mapping], *,
                 classifier: ObjectClassifier | None = None, fraction: float = START_END_FRACTION) -> dict[str, Any]:
    """Judge a multi-segment video of the procedural domain from its pixels against its segments.

    Per frame (lists over the F frames): ``found``, ``colour`` / ``object`` (the judge's),
    ``colour_kept_prompt`` / ``object_kept_prompt`` (equal to the frame's segment's colour / object; None
    where the segment gives none), ``colour_kept_first`` / ``object_kept_first`` (equal to frame 0's
    judgement, which must have found the object), ``colour_kept`` / ``object_kept`` (the scored flag: against
    the prompt where it names one, else against frame 0), ``object_colour_distance`` (Delta E between the
    object's colour and frame 0's, NaN where either frame has no object), ``background_distance`` (Delta E
    between the background and frame 0's) and ``background_kept`` (that distance <= :data:`BACKGROUND_TOLERANCE`).

    The background also has a name: ``first_background`` is the palette background nearest frame 0's.

    Per segment: ``room_px``, for a translation, the free pixels between the object's edge and the frame's
    border in the asked direction at the segment's first frame that shows the object (:func:`room_for_motion`),
    and ``possible``: whether that room holds the judge's threshold for the segment's duration (the domain keeps
    every trajectory inside the frame, so a smaller room cannot show the motion); None for other motions.
    Its ``motion`` judged by :func:`~microcinema.eval.judge.estimate_motion` on the segment's
    own frames only, at its own fps (duration ``(n - 1) / fps``), and ``motion_right`` against the
    segment's motion (None when it gives none). Segment boundaries: the step from a segment's last frame to
    the next segment's first frame (the join) belongs to no judgement, so a model that turns at the join
    or at the first frame of the new segment is judged the same; a segment of one frame has no motion (None,
    scored wrong when a motion is asked for).

    ``summary``: ``motion_right_per_segment`` (fraction of the segments with a motion target), ``motion_right_all``,
    ``motion_right_where_possible`` (the same fraction leaving out the translations with ``possible`` False),
    ``colour_kept_every_frame`` / ``object_kept_every_frame`` (against the prompts where they give colour /
    object, else against frame 0), their per-frame fractions, the first frame where each is lost
    (``colour_lost_at`` / ``object_lost_at``, None if never), ``background_kept_every_frame`` and the
    start-end contrasts (:func:`start_end_contrast`, Delta E) of ``object_colour_distance`` and
    ``background_distance``.
    """
    frames = check_frames(frames)
    segs = check_segments(segments, len(frames))
    judged = judge_frames(frames, classifier)
    n = len(frames)
    bounds = segment_bounds(segs)
    seg_of = np.concatenate([np.full(b - a, k) for k, (a, b) in enumerate(bounds)])

    backgrounds, object_lab = [], []
    for frame, judgement in zip(frames, judged):
        seg = segment_frame(frame)
        backgrounds.append(seg.background)
        object_lab.append(_lab(object_colour(frame, seg.mask, seg.background)) if seg.found and judgement.found
                          else np.full(3, np.nan))
    background_lab = _lab(np.array(backgrounds))
    background_distance = np.linalg.norm(background_lab - background_lab[0], axis=-1)
    object_lab = np.array(object_lab)
    object_colour_distance = np.linalg.norm(object_lab - object_lab[0], axis=-1)  # NaN rows stay NaN

    first = judged[0]
    colour_kept_first = [bool(first.found and j.colour == first.colour) for j in judged]
    object_kept_first = [bool(first.found and j.object == first.object) for j in judged]
    colour_kept = [None if segs[k].colour is None else j.colour == segs[k].colour for j, k in zip(judged, seg_of)]
    object_kept = [None if segs[k].object is None else j.object == segs[k].object for j, k in zip(judged, seg_of)]
    background_kept = [bool(d <= BACKGROUND_TOLERANCE) for d in background_distance]

    per_segment = []
    for seg, (a, b) in zip(segs, bounds):
        part = judged[a:b]
        centers = np.array([j.center if j.found else (np.nan, np.nan) for j in part], float)
        sizes = np.array([j.size if j.found else np.nan for j in part], float)
        motion, displacement, log_ratio = estimate_motion(np.arange(b - a) / seg.fps, centers, sizes,
                                                          min(frames.shape[1:3]))
        room = room_for_motion(seg.motion, centers, sizes, frames.shape[1:3])
        possible = None if room is None else bool(
            room >= motion_thresholds((b - a - 1) / seg.fps, min(frames.shape[1:3])).translation)
        per_segment.append({
            "start": a, "stop": b, "prompt": seg.prompt, "target_motion": seg.motion, "motion": motion,
            "motion_right": None if seg.motion is None else motion == seg.motion,
            "room_px": room, "possible": possible,
            "displacement_px": [float(d) for d in displacement], "log_size_ratio": float(log_ratio)})

    # scored: against the prompt where it names the colour / object, else against frame 0
    colour_ok = [p if p is not None else f for p, f in zip(colour_kept, colour_kept_first)]
    object_ok = [p if p is not None else f for p, f in zip(object_kept, object_kept_first)]
    scored = [s["motion_right"] for s in per_segment if s["motion_right"] is not None]
    where_possible = [s["motion_right"] for s in per_segment
                      if s["motion_right"] is not None and s["possible"] is not False]
    summary = {
        "motion_right_per_segment": float(np.mean(scored)) if scored else None,
        "motion_right_all": bool(all(scored)) if scored else None,
        "motion_right_where_possible": float(np.mean(where_possible)) if where_possible else None,
        "colour_kept_every_frame": bool(all(colour_ok)), "object_kept_every_frame": bool(all(object_ok)),
        "colour_kept_fraction": float(np.mean(colour_ok)), "object_kept_fraction": float(np.mean(object_ok)),
        "colour_lost_at": _first_false(colour_ok), "object_lost_at": _first_false(object_ok),
        "found_fraction": float(np.mean([j.found for j in judged])),
        "background_kept_every_frame": bool(all(background_kept)),
        "object_colour_start_end_contrast": start_end_contrast(object_colour_distance, fraction),
        "background_start_end_contrast": start_end_contrast(background_distance, fraction),
    }
    first_background = nearest_background(backgrounds[0])[0]
    return {
        "num_frames": n, "boundaries": [a for a, _ in bounds[1:]], "first_background": first_background,
        "frames": {
            "found": [bool(j.found) for j in judged], "colour": [j.colour for j in judged],
            "object": [j.object for j in judged], "colour_kept": colour_ok, "object_kept": object_ok,
            "colour_kept_prompt": colour_kept, "object_kept_prompt": object_kept,
            "colour_kept_first": colour_kept_first, "object_kept_first": object_kept_first,
            "object_colour_distance": object_colour_distance.tolist(),
            "background_distance": background_distance.tolist(), "background_kept": background_kept},
        "segments": per_segment, "summary": summary}


@dataclass
class DriftReport:
    """Both families of measures for one video: ``generic`` (:func:`video_drift`) and ``domain``
    (:func:`domain_drift`, None without segments)."""

    generic: dict[str, Any]
    domain: dict[str, Any] | None = None
    boundaries: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"generic": self.generic, "domain": self.domain, "boundaries": self.boundaries}


def measure_drift(frames: np.ndarray, segments: Sequence[Segment | ClipSpec | Mapping] | None = None, *,
                  space: str = "lab", feature_model: ImageFeatureModel | str | Path | None = None,
                  classifier: ObjectClassifier | None = None, fraction: float = START_END_FRACTION) -> DriftReport:
    """:func:`video_drift` and, with ``segments``, :func:`domain_drift` of one video (checked up front)."""
    frames = check_frames(frames)
    if segments is not None:
        check_segments(segments, len(frames))
    generic = video_drift(frames, space=space, feature_model=feature_model, fraction=fraction)
    domain = domain_drift(frames, segments, classifier=classifier, fraction=fraction) if segments is not None else None
    return DriftReport(generic, domain, domain["boundaries"] if domain else [])


# ---------------------------------------------------------------------------------------------- report


def plot_drift(path: str | Path, report: DriftReport | Sequence[DriftReport], title: str | None = None) -> Path:
    """Curves over time as a PNG: colour distance to frame 0, feature similarity (if measured), motion amount,
    and for the domain the object colour and background distances and the fraction of videos keeping colour
    and object, with the segment boundaries as dashed lines. Several reports (videos of equal length): the
    mean curve with the 10-90 % band across videos."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    reports = [report] if isinstance(report, DriftReport) else list(report)
    check(len(reports) > 0, "plot_drift: no reports to plot")
    lengths = {r.generic["num_frames"] for r in reports}
    check(len(lengths) == 1, f"plot_drift: videos of different lengths {sorted(lengths)} cannot share curves")
    panels: list[tuple[str, str, list[np.ndarray], float]] = []  # title, unit, per-video series, x offset

    def add(title_: str, unit: str, series: list, offset: float = 0.0) -> None:
        if series and all(s is not None for s in series):
            panels.append((title_, unit, [np.asarray(s, dtype=np.float64) for s in series], offset))

    unit = "Delta E" if reports[0].generic["space"] == "lab" else "RGB 0..255"
    add("frame colour distance to frame 0", unit, [r.generic["curves"]["colour_distance"] for r in reports])
    add("brightness change from frame 0", "L*" if unit == "Delta E" else "luma",
        [r.generic["curves"]["brightness_change"] for r in reports])
    add("feature similarity to frame 0", "cosine", [r.generic["curves"].get("feature_similarity") for r in reports])
    add("motion amount (neighbouring frames)", "px / frame",
        [r.generic["curves"].get("motion_amount") for r in reports], offset=0.5)
    if all(r.domain is not None for r in reports):
        add("object colour distance to frame 0", "Delta E",
            [r.domain["frames"]["object_colour_distance"] for r in reports])
        add("background distance to frame 0", "Delta E", [r.domain["frames"]["background_distance"] for r in reports])
        ok = lambda r, key: [bool(v) for v in r.domain["frames"][key]]  # noqa: E731
        add("colour kept (fraction of videos)", "fraction", [ok(r, "colour_kept") for r in reports])
        add("object kept (fraction of videos)", "fraction", [ok(r, "object_kept") for r in reports])
    rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.6 * rows), squeeze=False)
    for ax, (name, unit_, series, offset) in zip(axes.ravel(), panels):
        data = np.stack(series)
        x = np.arange(data.shape[1]) + offset
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (no object anywhere)
            mean = np.nanmean(data, axis=0)
            if len(data) > 1:
                lo, hi = np.nanpercentile(data, 10, axis=0), np.nanpercentile(data, 90, axis=0)
                ax.fill_between(x, lo, hi, alpha=0.25, linewidth=0)
        ax.plot(x, mean, linewidth=1.5)
        for b in reports[0].boundaries:
            ax.axvline(b - 0.5, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(unit_, fontsize=8)
        ax.set_xlabel("frame", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path



def _fmt(value: Any, spec: str = "+.3g") -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, spec)


def save_drift_report(out: str | Path, report: DriftReport, title: str = "drift") -> dict[str, Path]:
    """One video's measures to ``out``: ``drift.json`` (:meth:`DriftReport.to_dict`), ``drift.png``
    (:func:`plot_drift`) and ``drift.md`` (the start-end contrasts and, for the domain, the summary and the
    judged motion of each segment)."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "drift.json", "png": out / "drift.png", "md": out / "drift.md"}
    paths["json"].write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    plot_drift(paths["png"], report, title=title)
    g = report.generic
    lines = [f"# {title}", "", f"{g['num_frames']} frames; start-end contrast = mean over the last "
             f"{START_END_FRACTION:.0%} of frames minus mean over the first (signed, the measure's units).", "",
             "| measure | start-end contrast |", "|---|---|",
             *[f"| {k} | {_fmt(v)} |" for k, v in g["start_end_contrast"].items()]]
    if "subject_consistency" in g:
        lines += [f"| subject consistency (VBench) | {_fmt(g['subject_consistency'], '.4f')} |"]
    if report.domain is not None:
        s = report.domain["summary"]
        lines += ["", "| domain measure | value |", "|---|---|",
                  *[f"| {k} | {v if not isinstance(v, float) else _fmt(v, '.4g')} |" for k, v in s.items()], "",
                  "| segment | frames | prompt | motion asked | judged | right |", "|---|---|---|---|---|---|",
                  *[f"| {i + 1} | {x['start']}-{x['stop'] - 1} | {x['prompt'] or ''} | {x['target_motion']} | "
                    f"{x['motion']} | {x['motion_right']} |" for i, x in enumerate(report.domain["segments"])]]
    lines += ["", f"![curves over time]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(lines))
    return paths
