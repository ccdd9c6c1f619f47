"""Evaluation of few-shot motion tuning (recurrent few-shot paper, section 4; issue 18 items 6-8).

The paper's automatic metrics (section 4.2.1), with the shared implementations:

* **CLIP score** (frame-prompt cosine, averaged over frames then videos) and **CLIP-Temp** (cosine of neighbouring
  frames) with a CLIP model from a local folder
  (:class:`~microcinema.eval.metrics.clip_score.ClipScorer`); reported on the paper's 0-100 scale;
* **warping error** (:func:`~microcinema.eval.metrics.warping.warping_error`: OpenCV DIS flow, occlusion mask;
  pixels in [0, 1], so the paper's numbers, in 0-255 units, are 65025x larger).

And what the paper judged by eye, measured:

* **motion fidelity on the procedural domain** (:func:`motion_fidelity`): the generated object's centre track,
  judged from the pixels (:func:`~microcinema.eval.judge.judge_frames`), is fitted with the ground-truth
  trajectory family of the taught motion (:data:`~microcinema.data.synthetic.FEWSHOT_MOTIONS`); the start
  position (and, for the periodic motions, the phase) is free, periods, speeds and amplitudes must lie in the
  generator's ranges widened by ``slack``. The score is ``1 - (residual - noise floor) / template motion``
  (both root-mean-square in pixels; clipped to [0, 1]) times the fraction of frames where an object is found:
  1 is the taught shape exactly, 0 leaves as much unexplained as the motion itself moves (a still object
  scores 0). A video's motion is **right** when its score is at least :data:`MOTION_RIGHT_THRESHOLD`;
* **colour and object kept in every frame** (the judge's per-frame colour and object against the prompt's);
* **motion statistics in general** (:func:`flow_statistics_distance`, any videos): per pair of neighbouring
  frames, the mean flow (x, y) and magnitude of the most moving pixels (OpenCV DIS) in percent of the frame
  side; the Frechet distance (not squared) between Gaussians fitted to these over two sets of videos, e.g. the
  generated videos and the tuning clips (0 for identical sets).

:func:`evaluate_videos` computes all of them for a set of videos; :func:`evaluate_adapter` generates the videos
with an adapter and with the untuned base (same prompts, same seeds: the reference) and writes ``metrics.json``,
``report.md``, ``samples.png`` and ``samples.gif`` (``microcinema fewshot evaluate``).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from microcinema.core.errors import MicroCinemaError, check

#: A video's motion is judged right when its motion fidelity is at least this.
MOTION_RIGHT_THRESHOLD = 0.5
#: How far outside the generator's ranges a period, speed or amplitude may lie (a fraction of the bound).
DEFAULT_SLACK = 0.25
#: The judge's measurement error that is not held against a track (fraction of the frame side: ~1 px at 64).
NOISE_FLOOR = 0.015
#: Fraction of the most moving pixels whose flow :func:`flow_statistics` averages.
FLOW_TOP = 0.1
#: Grid sizes of the fit: periods tried in a range, phases tried per period.
_PERIODS, _PHASES = 9, 36


# ---------------------------------------------------------------------------------------------- motion fidelity


@dataclass
class MotionFit:
    """The fit of a centre track to a few-shot motion: ``score`` in [0, 1] (``fit`` times ``found_fraction``),
    ``right`` (score >= the threshold), ``residual_px`` / ``template_px`` (root-mean-square, pixels),
    ``params`` (the best template's period, phase, speed or amplitude)."""

    motion: str
    score: float
    right: bool
    fit: float
    residual_px: float
    template_px: float
    found_fraction: float
    params: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ranges(motion: str, size: int, slack: float) -> dict[str, tuple[float, float]]:
    """The generator's parameter ranges of ``motion`` (pixels, seconds), widened by ``slack``."""
    from microcinema.data import synthetic as s

    def widen(bounds: tuple[float, float], scale: float = 1.0) -> tuple[float, float]:
        return bounds[0] * scale * (1 - slack), bounds[1] * scale * (1 + slack)

    if motion == "bounce":
        return {"period": widen(s.BOUNCE_PERIOD), "height": widen(s.BOUNCE_HEIGHT, size)}
    if motion == "circling":
        return {"period": widen(s.CIRCLE_PERIOD), "radius": widen(s.CIRCLE_RADIUS, size)}
    if motion == "zigzag":
        return {"period": widen(s.ZIGZAG_PERIOD), "amplitude": widen(s.ZIGZAG_AMPLITUDE, size),
                "speed": widen(s.SPEED, size)}
    return {"speed": widen(s.DIAGONAL_SPEED, size)}


def _templates(motion: str, times: np.ndarray, ranges: dict[str, tuple[float, float]]
               ) -> list[tuple[dict[str, float], list[tuple[str, np.ndarray, tuple[float, float]]]]]:
    """For each point of the nonlinear grid (period, phase): its values and the linear terms
    ``(name, basis (F, 2), bounds)``; terms of one point act on different axes (independent least squares)."""
    from microcinema.data.synthetic import triangle_wave

    f = len(times)
    out = []
    if motion == "diagonal":
        return [({}, [("speed", np.stack([times, times], 1), ranges["speed"])])]
    for period in np.linspace(*ranges["period"], _PERIODS):
        for phase in np.arange(_PHASES) / _PHASES:  # a fraction of the period
            u = times / period + phase
            if motion == "bounce":  # y = floor - height |sin(pi u)|
                terms = [("height", np.stack([np.zeros(f), -np.abs(np.sin(np.pi * u))], 1), ranges["height"])]
            elif motion == "circling":  # clockwise on screen (y grows downwards)
                angle = 2 * np.pi * u
                terms = [("radius", np.stack([np.cos(angle), np.sin(angle)], 1), ranges["radius"])]
            else:  # zigzag: rightward at a speed, a triangle wave up first
                terms = [("speed", np.stack([times, np.zeros(f)], 1), ranges["speed"]),
                         ("amplitude", np.stack([np.zeros(f), -triangle_wave(u)], 1), ranges["amplitude"])]
            out.append(({"period": float(period), "phase": float(phase)}, terms))
    return out


def _explained(residual: float, template: float, floor: float) -> float:
    """``1 - (residual - floor) / (template - floor)`` clipped to [0, 1]: the part of a template's motion that a
    track shows (a residual within the noise floor is 1; as large as the template's motion is 0)."""
    if template <= floor:
        return 1.0 if residual <= floor else 0.0
    return float(np.clip(1.0 - max(0.0, residual - floor) / (template - floor), 0.0, 1.0))


def motion_fidelity(motion: str, centers: np.ndarray | Sequence, fps: float, size: int, *,
                    slack: float = DEFAULT_SLACK, threshold: float = MOTION_RIGHT_THRESHOLD,
                    noise_floor: float = NOISE_FLOOR) -> MotionFit:
    """How well a centre track ``(F, 2)`` (x, y pixels; NaN rows: frames without an object) played at ``fps`` in
    a frame of ``size`` pixels has the shape of the few-shot ``motion`` (see the module docstring).

    The track is fitted with the motion's trajectory family: ``bounce`` x fixed, y = floor - h |sin(pi (t/T + p))|;
    ``circling`` clockwise, radius r, period T, any start angle; ``zigzag`` rightward at a speed v with a triangle
    wave of amplitude a and period T (up first, any phase); ``diagonal`` down-right at 45 degrees at a speed v.
    The start position is free; T, h, r, a and v lie in the generator's ranges widened by ``slack``. Needs 3
    frames with an object, else the score is 0.
    """
    from microcinema.data.synthetic import FEWSHOT_MOTIONS

    check(motion in FEWSHOT_MOTIONS, f"unknown few-shot motion {motion!r}; allowed: {', '.join(FEWSHOT_MOTIONS)}")
    c = np.asarray(centers, dtype=np.float64)
    check(c.ndim == 2 and c.shape[1] == 2 and len(c) >= 3,
          f"centers must be (F >= 3, 2) x, y pixels, got shape {c.shape}")
    check(fps > 0 and math.isfinite(fps), f"fps must be a positive number, got {fps!r}")
    check(size > 0, f"size must be positive (pixels), got {size!r}")
    check(0 <= slack < 1, f"slack must be in [0, 1), got {slack}")
    found = np.isfinite(c).all(axis=1)
    fraction = float(found.mean())
    if found.sum() < 3:
        return MotionFit(motion, 0.0, False, 0.0, float("nan"), float("nan"), fraction)
    times = (np.arange(len(c)) / fps)[found]
    track = c[found] - c[found].mean(axis=0)
    best: tuple[float, float, dict[str, float]] | None = None
    for values, terms in _templates(motion, times, _ranges(motion, size, slack)):
        fitted = np.zeros_like(track)
        params = dict(values)
        for name, basis, (lo, hi) in terms:
            b = basis - basis.mean(axis=0)
            norm = float((b * b).sum())
            amount = float(np.clip((track * b).sum() / norm, lo, hi)) if norm > 1e-12 else lo
            fitted += amount * b
            params[name] = amount
        residual = float(np.sqrt(((track - fitted) ** 2).sum(axis=1).mean()))
        if best is None or residual < best[0]:
            rms = lambda x: float(np.sqrt((x ** 2).mean()))  # noqa: E731
            axes = [(rms(track[:, k] - fitted[:, k]), rms(fitted[:, k])) for k in range(2)]
            best = (residual, float(np.sqrt((fitted ** 2).sum(axis=1).mean())), params, axes)
    residual, template, params, axes = best
    floor = noise_floor * size
    fit = _explained(residual, template, floor)
    for res_axis, template_axis in axes:  # every axis the template moves on must move that way
        if template_axis > floor / math.sqrt(2):
            fit = min(fit, _explained(res_axis, template_axis, floor / math.sqrt(2)))
    score = fit * fraction
    return MotionFit(motion=motion, score=score, right=score >= threshold, fit=fit, residual_px=residual,
                     template_px=template, found_fraction=fraction, params=params)


# ---------------------------------------------------------------------------------------------- per video


def _uint8(frames: Any) -> np.ndarray:
    from microcinema.core.video_io import to_uint8_frames

    clip = to_uint8_frames(frames)
    check(clip.ndim == 4 and clip.shape[-1] == 3 and len(clip) >= 1,
          f"a video must be (T, H, W, 3) uint8 or (T, 3, H, W) float, got shape {tuple(clip.shape)}")
    return clip


def judge_fewshot_video(frames: Any, fps: float, *, motion: str | None = None, colour: str | None = None,
                        object: str | None = None, classifier: Any = None,
                        slack: float = DEFAULT_SLACK) -> dict[str, Any]:
    """Judge one domain video from its pixels (:func:`~microcinema.eval.judge.judge_frames`): found, colour and
    object kept in every frame (against ``colour`` / ``object``), the centre track and, with ``motion``, its
    :func:`motion_fidelity`. Returns a JSON-ready dict."""
    from microcinema.eval.judge import judge_frames

    clip = _uint8(frames)
    judged = judge_frames(clip, classifier)
    centers = np.array([j.center if j.found else (np.nan, np.nan) for j in judged], dtype=np.float64)
    n = len(judged)
    row: dict[str, Any] = {
        "found_every_frame": all(j.found for j in judged),
        "colours": [j.colour for j in judged], "objects": [j.object for j in judged],
        "centers": [[round(float(x), 2), round(float(y), 2)] if np.isfinite(x) else None for x, y in centers]}
    if colour is not None:
        row["colour_fraction"] = sum(j.colour == colour for j in judged) / n
        row["colour_every_frame"] = row["colour_fraction"] == 1.0
    if object is not None:
        row["object_fraction"] = sum(j.object == object for j in judged) / n
        row["object_every_frame"] = row["object_fraction"] == 1.0
    if colour is not None and object is not None:
        row["kept_every_frame"] = row["colour_every_frame"] and row["object_every_frame"]
    if motion is not None:
        if len(clip) >= 3:
            fit = motion_fidelity(motion, centers, fps, min(clip.shape[1:3]), slack=slack)
            row.update(motion_fidelity=fit.score, motion_right=fit.right,
                       motion_fit={k: v for k, v in fit.to_dict().items() if k not in ("score", "right", "motion")})
        else:
            row.update(motion_fidelity=0.0, motion_right=False)
    return row


# ---------------------------------------------------------------------------------------------- flow statistics


def flow_statistics(frames: Any, *, top: float = FLOW_TOP, method: str = "dis") -> np.ndarray:
    """Per pair of neighbouring frames ``(F - 1, 3)``: the mean flow x, y and the mean flow magnitude of the ``top``
    fraction of most moving pixels (OpenCV DIS, :func:`~microcinema.eval.metrics.warping.optical_flow`), in
    percent of the frame's shorter side per frame."""
    from microcinema.eval.metrics.warping import optical_flow

    clip = _uint8(frames)
    check(len(clip) >= 2, f"flow statistics need at least 2 frames, got {len(clip)}")
    check(0 < top <= 1, f"top must be in (0, 1], got {top}")
    scale = 100.0 / min(clip.shape[1:3])
    rows = []
    for a, b in zip(clip[:-1], clip[1:]):
        flow = optical_flow(a, b, method).reshape(-1, 2).astype(np.float64)
        magnitude = np.linalg.norm(flow, axis=1)
        k = max(1, int(round(top * len(magnitude))))
        idx = np.argpartition(magnitude, len(magnitude) - k)[-k:]
        rows.append([flow[idx, 0].mean() * scale, flow[idx, 1].mean() * scale, magnitude[idx].mean() * scale])
    return np.array(rows)


def flow_statistics_distance(videos_a: Sequence[Any], videos_b: Sequence[Any], *, top: float = FLOW_TOP,
                             method: str = "dis") -> float:
    """The Frechet distance (the square root of FID's ``d^2``) between Gaussians fitted to the
    :func:`flow_statistics` of every frame pair of two sets of videos: 0 for identical sets, in percent of the
    frame per frame. Each set needs at least 2 frame pairs in all."""
    from microcinema.eval.metrics.frechet import frechet_distance_from_features

    feats = []
    for name, videos in (("first", videos_a), ("second", videos_b)):
        check(len(videos) >= 1, f"flow statistics distance: the {name} set of videos is empty")
        stats = np.concatenate([flow_statistics(v, top=top, method=method) for v in videos])
        check(len(stats) >= 2, f"flow statistics distance: the {name} set has {len(stats)} frame pair; need 2")
        feats.append(stats)
    return float(math.sqrt(max(0.0, frechet_distance_from_features(*feats))))


# ---------------------------------------------------------------------------------------------- CLIP, pixels


def clip_scores(videos: Sequence[Any], prompts: Sequence[str], clip: Any, *, scale: float = 100.0
                ) -> list[dict[str, float]]:
    """Per video: ``clip_score`` (mean frame-prompt CLIP cosine) and ``clip_temp`` (mean cosine of neighbouring
    frames; NaN for one frame), times ``scale`` (the paper's 0-100). ``clip``: a
    :class:`~microcinema.eval.metrics.clip_score.ClipScorer` or a CLIP model folder."""
    from microcinema.eval.metrics.clip_score import ClipScorer

    check(len(videos) == len(prompts), f"clip scores: {len(videos)} videos but {len(prompts)} prompts")
    scorer = clip if isinstance(clip, ClipScorer) else ClipScorer(clip)
    text = scorer.text_embeddings(list(prompts))
    out = []
    for i, video in enumerate(videos):
        emb = scorer.image_embeddings(_uint8(video))
        temp = float((emb[:-1] * emb[1:]).sum(-1).mean()) * scale if len(emb) > 1 else float("nan")
        out.append({"clip_score": float((emb @ text[i]).mean()) * scale, "clip_temp": temp})
    return out


def frame_change(frames: Any) -> float:
    """Mean absolute difference of neighbouring frames (pixels in [0, 1]): how much a video changes per frame."""
    clip = _uint8(frames).astype(np.float32) / 255.0
    return float(np.abs(np.diff(clip, axis=0)).mean()) if len(clip) > 1 else 0.0


def sharpness(frames: Any) -> float:
    """Mean over frames of the variance of the grey image's Laplacian (pixels in [0, 1]): lower is blurrier."""
    from scipy import ndimage

    clip = _uint8(frames).astype(np.float64) / 255.0
    grey = clip @ np.array([0.299, 0.587, 0.114])
    return float(np.mean([ndimage.laplace(g).var() for g in grey]))


def diversity(videos: Sequence[Any], prompts: Sequence[str]) -> float:
    """Mean absolute pixel difference (in [0, 1]) between videos of the same prompt (different seeds), averaged
    over the pairs; NaN when no prompt has two videos."""
    groups: dict[str, list[np.ndarray]] = {}
    for video, prompt in zip(videos, prompts):
        groups.setdefault(prompt, []).append(_uint8(video).astype(np.float32) / 255.0)
    pairs = [float(np.abs(a - b).mean()) for g in groups.values() for i, a in enumerate(g) for b in g[i + 1:]
             if a.shape == b.shape]
    return float(np.mean(pairs)) if pairs else float("nan")


# ---------------------------------------------------------------------------------------------- a set of videos


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [float(r[key]) for r in rows if key in r and r[key] is not None and np.isfinite(float(r[key]))]
    return float(np.mean(values)) if values else None


def evaluate_videos(videos: Sequence[Any], prompts: Sequence[str], fps: float, *,
                    truths: Sequence[dict[str, Any]] | None = None, reference: Sequence[Any] | None = None,
                    clip: Any = None, warping: bool = True, classifier: Any = None,
                    slack: float = DEFAULT_SLACK, progress: Callable[[str], None] | None = None
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every metric of the module docstring for a set of videos; returns ``(summary, rows)`` (one row per video).

    ``truths``: per video ``{"motion", "colour", "object"}`` (the procedural domain: judged from pixels);
    ``reference``: videos to compare the motion statistics with (e.g. the tuning clips; adds ``flow_distance``);
    ``clip``: a CLIP folder or scorer (adds ``clip_score`` and ``clip_temp``, 0-100); ``warping``: the warping
    error per video (pixels in [0, 1]). Fractions in the summary are over all videos."""
    from microcinema.eval.metrics.warping import warping_error

    check(len(videos) >= 1, "evaluate: no videos")
    check(len(prompts) == len(videos), f"evaluate: {len(videos)} videos but {len(prompts)} prompts")
    check(truths is None or len(truths) == len(videos),
          f"evaluate: {len(videos)} videos but {len(truths or [])} truths")
    clips = [_uint8(v) for v in videos]
    rows: list[dict[str, Any]] = []
    for i, clip_frames in enumerate(clips):
        row: dict[str, Any] = {"prompt": prompts[i], "frame_change": frame_change(clip_frames),
                               "sharpness": sharpness(clip_frames)}
        if truths is not None:
            truth = truths[i]
            row.update({k: truth.get(k) for k in ("motion", "colour", "object", "seed") if k in truth})
            row.update(judge_fewshot_video(clip_frames, fps, motion=truth.get("motion"), colour=truth.get("colour"),
                                           object=truth.get("object"), classifier=classifier, slack=slack))
        if warping and len(clip_frames) >= 2:
            row["warping_error"] = warping_error(clip_frames)
        rows.append(row)
        if progress is not None:
            progress(f"judged {i + 1}/{len(clips)}")
    if clip is not None:
        for row, scores in zip(rows, clip_scores(clips, prompts, clip)):
            row.update(scores)
    summary: dict[str, Any] = {"n": len(rows), "fps": fps, "num_frames": [int(len(c)) for c in clips][0]}
    for key in ("motion_right", "found_every_frame", "colour_every_frame", "object_every_frame", "kept_every_frame"):
        if any(key in r for r in rows):
            summary[key] = float(np.mean([bool(r.get(key, False)) for r in rows]))
    for key in ("motion_fidelity", "warping_error", "clip_score", "clip_temp", "frame_change", "sharpness"):
        value = _mean(rows, key)
        if value is not None:
            summary[key] = value
    summary["diversity"] = diversity(clips, prompts)
    if reference is not None:
        summary["flow_distance"] = flow_statistics_distance(clips, [_uint8(v) for v in reference])
    return summary, rows


# ---------------------------------------------------------------------------------------------- domain prompts


def _shapes() -> list[str]:
    from microcinema.data.synthetic import OBJECTS

    return [o for o in OBJECTS if not o.startswith("digit")]


def read_tuning_truth(data: str | os.PathLike) -> list[dict[str, Any]]:
    """The ground truth rows (``colour``, ``object``, ``motion``, ``file``) of a procedural caption table written by
    :func:`~microcinema.systems.fewshot.data.write_fewshot_clips` (``captions.jsonl``); [] for any other data."""
    path = Path(data)
    if path.is_dir():
        path = path / "captions.jsonl"
    if path.suffix.lower() != ".jsonl" or not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise MicroCinemaError(f"{path} line {number} is not JSON") from None
            if {"colour", "object", "motion"} <= set(row):
                rows.append({k: row.get(k) for k in ("colour", "object", "motion", "file")})
    return rows


def held_out(tuning: Sequence[dict[str, Any]], colours: Sequence[str] | None = None,
             objects: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Colours and objects for the evaluation prompts: the given ones, else those not in the tuning clips (objects:
    the shapes; digits only when asked for). Any of them seen in the tuning clips is a one-line error."""
    from microcinema.data.synthetic import COLOURS, OBJECTS

    seen_colours = {r["colour"] for r in tuning}
    seen_objects = {r["object"] for r in tuning}
    colours = [c for c in COLOURS if c not in seen_colours] if colours is None else list(colours)
    objects = [o for o in _shapes() if o not in seen_objects] if objects is None else list(objects)
    check(all(c in COLOURS for c in colours), f"unknown colour in {colours}; allowed: {', '.join(COLOURS)}")
    check(all(o in OBJECTS for o in objects), f"unknown object in {objects}; allowed: {', '.join(OBJECTS)}")
    check(bool(colours), f"no colour is left for evaluation: the tuning clips show {', '.join(sorted(seen_colours))}")
    check(bool(objects), f"no object is left for evaluation: the tuning clips show {', '.join(sorted(seen_objects))}")
    both = sorted(set(colours) & seen_colours) + sorted(set(objects) & seen_objects)
    check(not both, f"{', '.join(both)} appear in the tuning clips; evaluate on colours and objects they do not show")
    return colours, objects


def domain_prompts(motion: str, num: int, colours: Sequence[str], objects: Sequence[str], *, seed: int = 0
                   ) -> list[dict[str, Any]]:
    """``num`` evaluation prompts of ``motion``: the (colour, object) pairs in turn (all colours of the first object,
    then the next), a caption drawn once per pair (the domain's templates and synonyms, so the videos of one pair
    share a prompt), and a sampling seed per video (``seed * 100000 + i``). Rows: ``prompt``, ``colour``,
    ``object``, ``motion``, ``seed``."""
    from microcinema.data.synthetic import BACKGROUNDS, FEWSHOT_MOTIONS, make_caption

    check(motion in FEWSHOT_MOTIONS, f"unknown few-shot motion {motion!r}; allowed: {', '.join(FEWSHOT_MOTIONS)}")
    check(isinstance(num, int) and num >= 1, f"--num-videos must be an integer >= 1, got {num!r}")
    pairs = [(c, o) for o in objects for c in colours]
    check(bool(pairs), "no colour/object pairs to evaluate")
    captions = []
    for k, (colour, obj) in enumerate(pairs):
        rng = np.random.default_rng([seed, 7, k])
        captions.append(make_caption(colour, obj, motion, str(rng.choice(list(BACKGROUNDS))), rng))
    return [{"prompt": captions[i % len(pairs)], "colour": pairs[i % len(pairs)][0],
             "object": pairs[i % len(pairs)][1], "motion": motion, "seed": seed * 100000 + i} for i in range(num)]


# ---------------------------------------------------------------------------------------------- generation


def generate_videos(pipe: Any, prompts: Sequence[str], seeds: Sequence[int], *, num_frames: int | None = None,
                    num_inference_steps: int = 50, guidance_scale: float | None = None, batch_size: int = 4,
                    progress: Callable[[str], None] | None = None) -> tuple[list[np.ndarray], float]:
    """One video per ``(prompt, seed)`` with a :class:`~microcinema.systems.fewshot.pipeline.FewShotPipeline`,
    ``batch_size`` per call. Each video's initial noise is the pipeline's structured prior drawn by
    ``torch.Generator().manual_seed(seed)`` (what ``microcinema fewshot generate --seed`` draws), so a video does
    not depend on the batch it is in. Returns the uint8 videos and the seconds per video."""
    import torch

    from microcinema.systems.fewshot.structured_noise import structured_noise

    check(len(prompts) == len(seeds), f"{len(prompts)} prompts but {len(seeds)} seeds")
    check(batch_size >= 1, f"batch size must be >= 1, got {batch_size}")
    frames = pipe.num_frames if num_frames is None else num_frames
    height, width = pipe.tuned_size or pipe.check_height_width(None, None)
    m = pipe.vae_scale_factor
    shape = (1, pipe.unet.unet.config.in_channels, frames, height // m, width // m)
    videos: list[np.ndarray] = []
    started = time.time()
    for start in range(0, len(prompts), batch_size):
        part = list(range(start, min(start + batch_size, len(prompts))))
        noise = torch.cat([structured_noise(pipe.noise, shape, torch.Generator().manual_seed(int(seeds[i])),
                                            alpha=pipe.noise_alpha) for i in part])
        latents = pipe([prompts[i] for i in part], num_frames=frames, num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, latents=noise, output_type="latent", progress=False).frames
        videos.extend(pipe.decode_to_uint8(latents))
        if progress is not None:
            progress(f"generated {len(videos)}/{len(prompts)}")
    return videos, (time.time() - started) / max(len(prompts), 1)


# ---------------------------------------------------------------------------------------------- an adapter


#: The issue's targets on the procedural domain (issue 18).
TARGETS = {"motion_right": 0.8, "kept_every_frame": 0.9, "tuning_seconds": 600.0}


def _fmt(value: Any, spec: str = ".3f") -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


#: Rows of the metrics table: (key, label, format, higher is better?).
METRIC_ROWS = (
    ("motion_right", "taught motion right (judged from pixels)", ".1%", True),
    ("motion_fidelity", "motion fidelity (0-1)", ".3f", True),
    ("kept_every_frame", "colour and object kept in every frame", ".1%", True),
    ("colour_every_frame", "colour kept in every frame", ".1%", True),
    ("object_every_frame", "object kept in every frame", ".1%", True),
    ("found_every_frame", "an object in every frame", ".1%", True),
    ("warping_error", "warping error (pixels in [0, 1])", ".5f", False),
    ("clip_score", "CLIP score (0-100)", ".2f", True),
    ("clip_temp", "CLIP-Temp (0-100)", ".2f", True),
    ("flow_distance", "flow-statistics distance to the tuning clips", ".3f", False),
    ("frame_change", "mean change between frames", ".4f", None),
    ("sharpness", "sharpness (Laplacian variance)", ".5f", None),
    ("diversity", "diversity between seeds of a prompt", ".4f", None),
    ("seconds_per_video", "seconds per video", ".1f", False),
)


def metrics_table(columns: dict[str, dict[str, Any]]) -> str:
    """A markdown table: one row per metric present in any column, one column per set of videos."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, label, spec, better in METRIC_ROWS:
        if any(key in c for c in columns.values()):
            arrow = "" if better is None else (" (higher is better)" if better else " (lower is better)")
            lines.append(f"| {label}{arrow} | " + " | ".join(_fmt(columns[n].get(key), spec) for n in names) + " |")
    return "\n".join(lines)


def save_samples(out: Path, tuned: Sequence[np.ndarray], base: Sequence[np.ndarray] | None, prompts: Sequence[str],
                 fps: float, count: int = 6) -> dict[str, str]:
    """``samples.png`` (per prompt: the tuned video's frames, then the base's) and ``samples.gif`` (tuned videos
    side by side on top, the base's below)."""
    from microcinema.core.video_io import save_grid, side_by_side, write_video

    count = min(count, len(tuned))
    clips, captions = [], []
    for i in range(count):
        clips.append(tuned[i])
        captions.append(f"tuned: {prompts[i]}")
        if base is not None:
            clips.append(base[i])
            captions.append(f"untuned base, same seed: {prompts[i]}")
    grid = save_grid(out / "samples.png", clips, captions=captions)
    frames = min(len(v) for v in list(tuned[:count]) + list(base[:count] if base is not None else []))

    def row(videos: Sequence[np.ndarray]) -> np.ndarray:
        return side_by_side([v[:frames] for v in videos])

    top = row(tuned[:count])
    if base is not None:
        top = np.concatenate([top, np.full((frames, 2, top.shape[2], 3), 255, np.uint8), row(base[:count])], axis=1)
    gif = write_video(out / "samples.gif", top, fps)
    return {"grid": str(grid), "gif": str(gif)}


def evaluate_adapter(adapter: str | os.PathLike, out: str | os.PathLike, *, base: Any = None,
                     motion: str | None = None, data: str | os.PathLike | None = None,
                     prompts: Sequence[str] | None = None, num_videos: int = 30,
                     colours: Sequence[str] | None = None, objects: Sequence[str] | None = None,
                     num_inference_steps: int = 50, guidance_scale: float | None = None, seed: int = 0,
                     num_frames: int | None = None, clip: Any = None, reference_base: bool = True,
                     batch_size: int = 4, save_videos: bool = True, title: str | None = None,
                     log: Callable[[str], None] = print) -> dict[str, Any]:
    """Generate with an adapter and with the untuned base (same prompts and seeds; ``reference_base=False`` skips
    it), evaluate both (:func:`evaluate_videos`) and write ``metrics.json``, ``report.md``, ``samples.png``,
    ``samples.gif``, ``videos.jsonl`` (per video) and, with ``save_videos``, ``videos/*.mp4`` under ``out``.

    Domain mode (``motion`` given, or ``data`` a procedural tuning table whose clips show one few-shot motion):
    ``num_videos`` prompts of the motion for colours and objects not in the tuning clips (:func:`held_out`,
    :func:`domain_prompts`), judged from the pixels. Otherwise ``prompts`` (one video each, seeds ``seed``,
    ``seed + 1``, ...). With ``data`` the motion statistics are compared with the tuning clips
    (``flow_distance``); with ``clip`` (a CLIP folder) the CLIP score and CLIP-Temp are added."""
    from microcinema.systems.fewshot.adapter import read_adapter_metadata
    from microcinema.systems.fewshot.pipeline import FewShotPipeline

    out = Path(out)
    metadata = read_adapter_metadata(adapter)
    tuning = read_tuning_truth(data) if data is not None else []
    if data is not None:
        check(Path(data).exists(), f"tuning data not found: {data}")
    if motion is None and prompts is None:
        motions = {r["motion"] for r in tuning}
        check(len(motions) == 1, "give --motion (a few-shot motion) or --prompts: the tuning data names "
                                 + (f"several motions ({', '.join(sorted(motions))})" if motions else "no motion"))
        motion = motions.pop()
    if motion is not None:
        check(prompts is None, "give either --motion (domain prompts, judged from pixels) or --prompts, not both")
        check(bool(tuning) or (colours is not None and objects is not None),
              "domain evaluation holds out the tuning clips' colours and objects: give --data (the tuning "
              "captions.jsonl written by 'microcinema fewshot data') or both --colours and --objects")
        eval_colours, eval_objects = held_out(tuning, colours, objects)
        rows = domain_prompts(motion, num_videos, eval_colours, eval_objects, seed=seed)
    else:
        prompts = [p for p in (prompts or []) if p.strip()]
        check(bool(prompts), "no prompts to evaluate")
        rows = [{"prompt": p, "seed": seed + i} for i, p in enumerate(prompts)]
        eval_colours = eval_objects = None
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MicroCinemaError(f"cannot write to output folder {out}: {error.strerror or error}") from None
    clip_name = None if clip is None else (str(clip) if isinstance(clip, (str, os.PathLike)) else type(clip).__name__)
    if clip is not None and not hasattr(clip, "image_embeddings"):
        from microcinema.eval.metrics.clip_score import ClipScorer

        clip = ClipScorer(clip)  # load (and check) before the long generation
    pipe = FewShotPipeline.from_adapter(adapter, base=base)
    fps = pipe.fps
    frames = pipe.num_frames if num_frames is None else num_frames
    reference = None
    if data is not None:
        from microcinema.core.video_io import to_uint8_frames
        from microcinema.systems.fewshot.data import read_tuning_clips

        size = pipe.tuned_size
        reference = [to_uint8_frames(c.pixels) for c in read_tuning_clips(
            data, num_frames=frames, fps=fps, size=size, log=False)]
    texts, seeds = [r["prompt"] for r in rows], [r["seed"] for r in rows]
    truths = rows if motion is not None else None
    settings = dict(num_frames=frames, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                    batch_size=batch_size)
    log(f"fewshot evaluate: {len(rows)} videos of {frames} frames, {num_inference_steps} steps, adapter "
        f"{metadata.describe()}")
    results: dict[str, Any] = {}
    videos: dict[str, list[np.ndarray]] = {}
    for name in ("tuned", "base") if reference_base else ("tuned",):
        if name == "tuned":
            videos[name], per_video = generate_videos(pipe, texts, seeds, progress=log, **settings)
        else:
            with pipe.untuned():
                videos[name], per_video = generate_videos(pipe, texts, seeds, progress=log, **settings)
        summary, per = evaluate_videos(videos[name], texts, fps, truths=truths, reference=reference, clip=clip)
        summary["seconds_per_video"] = per_video
        results[name] = {"summary": summary, "videos": per}
        log(f"fewshot evaluate: {name}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in summary.items()
                                                       if k in ("motion_right", "kept_every_frame", "warping_error")))
    if save_videos:
        from microcinema.core.video_io import write_video

        (out / "videos").mkdir(exist_ok=True)
        for name, vids in videos.items():
            for i, video in enumerate(vids):
                write_video(out / "videos" / f"{name}_{i:03d}.mp4", video, fps)
    with open(out / "videos.jsonl", "w") as handle:
        for name, result in results.items():
            for i, row in enumerate(result["videos"]):
                handle.write(json.dumps(clean_json({"model": name, "index": i, **row}), default=_json_default) + "\n")
    samples = save_samples(out, videos["tuned"], videos.get("base"), texts, fps)
    tuned = results["tuned"]["summary"]
    metrics: dict[str, Any] = {
        "adapter": str(adapter), "adapter_metadata": asdict(metadata), "adapter_bytes": Path(adapter).stat().st_size,
        "mode": "domain" if motion is not None else "prompts", "motion": motion,
        "colours": eval_colours, "objects": eval_objects,
        "tuning_colours": sorted({r["colour"] for r in tuning}) or None,
        "tuning_objects": sorted({r["object"] for r in tuning}) or None,
        "num_videos": len(rows), "num_inference_steps": num_inference_steps,
        "guidance_scale": guidance_scale if guidance_scale is not None else pipe.guidance_scale, "seed": seed,
        "clip_model": clip_name,
        "tuned": tuned, "base": results.get("base", {}).get("summary"), "samples": samples}
    if motion is not None:
        metrics["targets"] = {
            "motion_right": {"target": TARGETS["motion_right"], "value": tuned.get("motion_right"),
                             "met": bool(tuned.get("motion_right", 0) >= TARGETS["motion_right"])},
            "kept_every_frame": {"target": TARGETS["kept_every_frame"], "value": tuned.get("kept_every_frame"),
                                 "met": bool(tuned.get("kept_every_frame", 0) >= TARGETS["kept_every_frame"])}}
    metrics = clean_json(metrics)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=_json_default) + "\n")
    (out / "report.md").write_text(evaluation_report(metrics, title=title))
    log(f"fewshot evaluate: wrote {out / 'metrics.json'}, {out / 'report.md'}, {samples['grid']}, {samples['gif']}")
    return metrics


def clean_json(value: Any) -> Any:
    """``value`` with NaN/inf floats as None and numpy scalars as Python ones (strict JSON)."""
    if isinstance(value, dict):
        return {k: clean_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean_json(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, np.generic):
        return value.item()
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def evaluation_report(metrics: dict[str, Any], title: str | None = None) -> str:
    """``report.md`` of :func:`evaluate_adapter`'s metrics."""
    meta = metrics["adapter_metadata"]
    lines = [f"# {title or 'Few-shot adapter evaluation'}", ""]
    lines.append(f"Adapter `{metrics['adapter']}` ({metrics['adapter_bytes'] / 2**20:.2f} MiB): {meta['attention']} "
                 f"attention, {meta['noise']} noise (alpha {meta['noise_alpha']:g}), {meta['steps']} steps, "
                 f"{meta['num_frames']} frames at {meta['fps']:g} fps, {meta['height']}x{meta['width']}, base "
                 f"{meta['base']}.")
    if metrics["mode"] == "domain":
        lines.append(f"Motion **{metrics['motion']}**; {metrics['num_videos']} videos for colours "
                     f"{', '.join(metrics['colours'])} and objects {', '.join(metrics['objects'])} (tuning clips: "
                     f"colours {', '.join(metrics['tuning_colours'] or ['?'])}, objects "
                     f"{', '.join(metrics['tuning_objects'] or ['?'])}).")
    else:
        lines.append(f"{metrics['num_videos']} prompts.")
    lines.append(f"Sampling: {metrics['num_inference_steps']} steps, guidance {metrics['guidance_scale']:g}, seeds "
                 f"from {metrics['seed']} (the untuned base with the same prompts and seeds).")
    lines += ["", metrics_table({"tuned": metrics["tuned"], **({"untuned base": metrics["base"]}
                                                               if metrics.get("base") else {})}), ""]
    if "targets" in metrics:
        lines.append("Targets (issue 18): " + "; ".join(
            f"{k} >= {v['target']:.0%}: {_fmt(v['value'], '.1%')} ({'met' if v['met'] else 'not met'})"
            for k, v in metrics["targets"].items()) + ".")
        lines.append("")
    lines += ["Motion right: motion fidelity >= "
              f"{MOTION_RIGHT_THRESHOLD} (the judged centre track fitted with the taught motion's trajectory family; "
              "microcinema.systems.fewshot.evaluate.motion_fidelity). Warping error in [0, 1] pixel units (the "
              "paper's are 0-255: x65025).", "",
              f"![samples]({Path(metrics['samples']['grid']).name}) (animated: "
              f"[{Path(metrics['samples']['gif']).name}]({Path(metrics['samples']['gif']).name}))", ""]
    return "\n".join(lines)


__all__ = ["DEFAULT_SLACK", "FLOW_TOP", "METRIC_ROWS", "MOTION_RIGHT_THRESHOLD", "MotionFit", "NOISE_FLOOR", "TARGETS",
           "clean_json", "clip_scores", "diversity", "domain_prompts", "evaluate_adapter", "evaluate_videos",
           "evaluation_report", "flow_statistics", "flow_statistics_distance", "frame_change", "generate_videos",
           "held_out", "judge_fewshot_video", "metrics_table", "motion_fidelity", "read_tuning_truth", "save_samples",
           "sharpness"]
