"""``microcinema eval``: benchmarks of a MicroCinema pipeline (DESIGN.md section 5).

* ``shapes``: the procedural domain, where every prompt has exact ground truth. End to end by default
  (stage one makes the key frame), or ``key_frames="truth"`` (the clip's rendered centre frame: stage two
  alone). Measured: the judge's accuracies (:mod:`.stage_two`), appearance preservation (centre-frame PSNR
  against the key frame, the paper's section 3.2 goal, and the mean PSNR of all frames), temporal
  consistency (flow warping error; CLIP-Temp with a CLIP folder), a domain FVD against the real rendered
  clips of the same prompts (9 frames at 2 fps, features of the shipped domain classifier), and FVD / FID /
  IS / CLIPSIM when their weights are given.
* ``ucf101`` (paper section 4, "Evaluation metrics"; Tables 1-4): zero-shot FVD and IS with prompts made
  from the 101 class names through the template of Table 3's "simple" prompts, ``"a video of <class>"``,
  classes taken in turn. Needs the UCF-101 videos (``--data``, the real side of FVD), I3D and Inception
  weights.
* ``msrvtt`` (Table 1): CLIPSIM (mean frame-caption CLIP cosine) on MSR-VTT captions, plus FID (and FVD)
  against MSR-VTT videos when ``--data`` and the weights are given. Caption files, see
  :func:`read_captions`: JSON (the official ``videodatainfo.json`` with ``sentences``: the first caption of
  each video; or a list of strings / of objects with ``caption``, ``sentence`` or ``text``), JSONL (objects
  as above), CSV (a ``sentence``, ``caption``, ``text`` or ``name`` column, e.g. ``MSRVTT_JSFUSION_test.csv``)
  or TXT (one caption per line).

Frames for FVD: a 16-frame window (the standard clip length) centred on the key frame: 33 frames at 8 fps
with interpolation, else 17 base frames at 2 fps (the paper's ablation setting, "17 frames without TSR");
real clips are sampled at the same rate. FID and IS use the frames of that window (both sides). FVD, FID
and IS are biased by the sample count: the protocols use 2,048 (or 10K) samples; compare equal counts only.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from microcinema.data.synthetic import render_clip, sample_clip
from microcinema.core.errors import MicroCinemaError, check
from microcinema.systems.microcinema.pipeline import INTERPOLATION_FACTOR, MicroCinemaPipeline
from microcinema.core.video_io import save_grid
from microcinema.eval.domain_classifier import DomainVideoClassifier, domain_fvd, load_domain_classifier
from microcinema.eval.stage_one import domain_prompts
from microcinema.eval.stage_two import GeneratedVideos, generate_videos, iter_videos, judge_videos

BENCHMARKS = ("shapes", "ucf101", "msrvtt")
#: Table 3's "simple" prompt: "a video of" joined with the class name (Tables 1 and 2 use it on UCF-101).
UCF101_TEMPLATE = "a video of {}"
UCF101_CLASSES = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching", "BaseballPitch",
    "Basketball", "BasketballDunk", "BenchPress", "Biking", "Billiards", "BlowDryHair", "BlowingCandles",
    "BodyWeightSquats", "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BreastStroke", "BrushingTeeth",
    "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "CuttingInKitchen", "Diving", "Drumming",
    "Fencing", "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl", "GolfSwing", "Haircut",
    "Hammering", "HammerThrow", "HandstandPushups", "HandstandWalking", "HeadMassage", "HighJump", "HorseRace",
    "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow", "JugglingBalls", "JumpingJack", "JumpRope",
    "Kayaking", "Knitting", "LongJump", "Lunges", "MilitaryParade", "Mixing", "MoppingFloor", "Nunchucks",
    "ParallelBars", "PizzaTossing", "PlayingCello", "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingGuitar",
    "PlayingPiano", "PlayingSitar", "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps",
    "Punch", "PushUps", "Rafting", "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "ShavingBeard",
    "Shotput", "SkateBoarding", "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty", "StillRings",
    "SumoWrestling", "Surfing", "Swing", "TableTennisShot", "TaiChi", "TennisSwing", "ThrowDiscus",
    "TrampolineJumping", "Typing", "UnevenBars", "VolleyballSpiking", "WalkingWithDog", "WallPushups",
    "WritingOnBoard", "YoYo",
)
FVD_FRAMES = 16
VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov")
CAPTION_KEYS = ("caption", "sentence", "text", "name")

#: What each input is, for the missing-input message: flag -> description.
INPUTS = {
    "data": ("--data", "the real videos: a folder of video files or a caption table (.csv/.jsonl)"),
    "i3d_weights": ("--i3d-weights", "Kinetics-400 I3D weights for FVD, e.g. pytorch-i3d's rgb_imagenet.pt"),
    "inception_weights": ("--inception-weights", "Inception weights for FID/IS, pytorch-fid's pt_inception-2015-12-05"),
    "clip_model": ("--clip-model", "a local CLIP model folder for CLIPSIM, e.g. openai/clip-vit-base-patch32"),
    "captions": ("--captions", "MSR-VTT captions: JSON, JSONL, CSV or TXT"),
}


@dataclass
class EvalOptions:
    """Settings of one ``microcinema eval`` run (see the CLI's help for each)."""

    benchmark: str
    num_samples: int
    out: Path
    model: str | None = None
    steps: int = 25
    seed: int = 0
    interpolate: bool = True
    key_frames: str = "generate"  # shapes: "generate" (stage one) or "truth" (rendered centre frames)
    batch_size: int = 8
    prompt_seed: int = 999
    i3d_weights: Path | None = None
    inception_weights: Path | None = None
    clip_model: Path | None = None
    data: Path | None = None
    captions: Path | None = None
    domain_classifier: Path | None = None
    command: str = ""


@dataclass
class Timer:
    """Seconds per named step, with a running total."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)

    @property
    def total(self) -> float:
        return round(sum(self.seconds.values()), 3)


# ------------------------------------------------------------------------------------------ inputs


def ucf101_prompts(num: int) -> list[str]:
    """``num`` prompts, the 101 class names in turn through :data:`UCF101_TEMPLATE` (CamelCase split, lower case)."""
    words = [re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name).lower() for name in UCF101_CLASSES]
    return [UCF101_TEMPLATE.format(words[i % len(words)]) for i in range(num)]


def _caption_of(row: Any, where: str) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, dict):
        for key in CAPTION_KEYS:
            if isinstance(row.get(key), str):
                return row[key]
    raise MicroCinemaError(f"{where}: a caption row must be a string or have one of {', '.join(CAPTION_KEYS)}")


def read_captions(path: Path) -> list[str]:
    """Captions from an MSR-VTT caption file (layouts in the module docstring), in file order."""
    check(path.is_file(), f"--captions {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and isinstance(data.get("sentences"), list):  # official annotation file
                first: dict[str, str] = {}
                for row in data["sentences"]:
                    first.setdefault(str(row.get("video_id")), _caption_of(row, str(path)))
                captions = list(first.values())
            else:
                check(isinstance(data, list), f"{path}: JSON captions must be a list or have a 'sentences' list")
                captions = [_caption_of(row, str(path)) for row in data]
        elif suffix in (".jsonl", ".ndjson"):
            captions = [_caption_of(json.loads(line), str(path)) for line in path.read_text().splitlines() if line.strip()]
        elif suffix == ".csv":
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            column = next((k for k in CAPTION_KEYS if rows and k in rows[0]), None)
            check(column is not None, f"{path}: CSV captions need a column named one of {', '.join(CAPTION_KEYS)}")
            captions = [row[column] for row in rows]
        elif suffix == ".txt":
            captions = [line.strip() for line in path.read_text().splitlines()]
        else:
            raise MicroCinemaError(f"--captions {path}: unknown layout; allowed: .json, .jsonl, .csv, .txt")
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise MicroCinemaError(f"--captions {path} cannot be read: {error}") from None
    captions = [c.strip() for c in captions if c and c.strip()]
    check(bool(captions), f"--captions {path} holds no caption")
    return captions


def check_inputs(opts: EvalOptions) -> None:
    """Fail fast, in one line, on what a benchmark needs and was not given (nothing is downloaded)."""
    check(opts.benchmark in BENCHMARKS, f"unknown benchmark {opts.benchmark!r}: allowed are {', '.join(BENCHMARKS)}")
    check(opts.num_samples >= 1, f"--num-samples must be >= 1, got {opts.num_samples}")
    check(opts.key_frames in ("generate", "truth"), f"--key-frames must be generate or truth, got {opts.key_frames!r}")
    needed = {"ucf101": ["data", "i3d_weights", "inception_weights"], "msrvtt": ["captions", "clip_model"]}
    required = list(needed.get(opts.benchmark, []))
    if opts.benchmark == "msrvtt" and (opts.inception_weights or opts.i3d_weights):
        required.append("data")  # FID / FVD compare with real MSR-VTT videos
    if opts.benchmark == "msrvtt" and opts.data and not (opts.inception_weights or opts.i3d_weights):
        required.append("inception_weights")  # real videos are only used by FID / FVD
    missing = [name for name in required if getattr(opts, name) is None]
    if missing:
        what = "; ".join(f"{INPUTS[n][0]} ({INPUTS[n][1]})" for n in missing)
        raise MicroCinemaError(f"the {opts.benchmark} benchmark needs inputs that were not given: {what}")
    for name, (flag, _) in INPUTS.items():
        value = getattr(opts, name)
        check(value is None or Path(value).exists(), f"{flag} {value} does not exist")
    check(opts.domain_classifier is None or Path(opts.domain_classifier).exists(),
          f"--domain-classifier {opts.domain_classifier} does not exist")


def load_pipeline(opts: EvalOptions) -> MicroCinemaPipeline:
    pipe = MicroCinemaPipeline.from_pretrained(opts.model) if opts.model else MicroCinemaPipeline.embedded()
    check(not opts.interpolate or pipe.interp_unet is not None,
          f"{opts.model or 'the embedded pipeline'} has no interpolation model (interp/): add --no-interpolate")
    return pipe


# ------------------------------------------------------------------------------------------ metrics


def load_classifier_or_note(path: str | Path | None = None) -> tuple[DomainVideoClassifier | None, str | None]:
    """The domain classifier (default: the shipped one), or ``None`` and why the domain FVD is skipped."""
    try:
        return load_domain_classifier(path), None
    except MicroCinemaError as error:
        return None, f"domain FVD skipped: {error}"


def domain_fvd_or_note(real: np.ndarray, fake: np.ndarray, model: DomainVideoClassifier | None,
                       note: str | None) -> tuple[float | None, str | None]:
    """Domain FVD of uint8 videos (both at 2 fps), or ``None`` and a note saying why not."""
    if model is None:
        return None, note or "domain FVD skipped: no domain classifier"
    if len(real) < 2:
        return None, "domain FVD skipped: needs at least 2 samples"
    return domain_fvd(real, fake, model), None


def fvd_window(num_frames: int) -> slice:
    """The :data:`FVD_FRAMES` frames centred on the key frame (frame ``num_frames // 2``)."""
    check(num_frames >= FVD_FRAMES, f"FVD needs {FVD_FRAMES} frames, the videos have {num_frames}: "
                                    "drop --no-interpolate (33 frames) or generate 17 base frames")
    start = min(max(0, num_frames // 2 - FVD_FRAMES // 2), num_frames - FVD_FRAMES)
    return slice(start, start + FVD_FRAMES)


def real_clips(specs: list) -> np.ndarray:
    """The real rendered clips (N, 9, H, W, 3) of domain prompts: 9 frames at 2 fps, as the base frames."""
    return np.stack([render_clip(s) for s in specs])


def shapes_metrics(real: np.ndarray, generated: GeneratedVideos, timer: Timer, *,
                   domain_model: DomainVideoClassifier | None, domain_note: str | None) -> dict[str, Any]:
    """Temporal consistency and distribution metrics of domain videos that need no user weights:
    warping error on the generated videos and the domain FVD against ``real`` (shared with :mod:`.ablations`)."""
    from microcinema.eval.metrics import warping_error

    notes = []
    with timer("warping_error"):
        try:
            warp = warping_error(generated.videos)
        except MicroCinemaError as error:  # OpenCV is an optional extra: skip the metric, say why
            warp = None
            notes.append(f"warping error skipped: {error}")
    with timer("domain_fvd"):
        value, note = domain_fvd_or_note(real, generated.base, domain_model, domain_note)
    return {"warping_error": warp, "domain_fvd": value, "notes": notes + ([note] if note else [])}


def _weighted_metrics(opts: EvalOptions, specs: list, real: np.ndarray, generated: GeneratedVideos,
                      timer: Timer) -> dict[str, Any]:
    """FVD, FID/IS and CLIPSIM/CLIP-Temp on the domain, when their weights are given."""
    from microcinema.eval.metrics import (ClipScorer, I3DFeatureExtractor, InceptionFeatureExtractor, clip_temp, clipsim, fid, fvd,
                          inception_score)

    out: dict[str, Any] = {"notes": []}
    if opts.clip_model:
        with timer("clip"):
            scorer = ClipScorer(opts.clip_model)
            out["clipsim"] = clipsim(generated.videos, [s.caption for s in specs], scorer)
            out["clip_temp"] = clip_temp(generated.videos, scorer)
    if opts.inception_weights:
        with timer("fid_is"):
            extractor = InceptionFeatureExtractor(opts.inception_weights)
            out["fid"] = fid(real, generated.base, extractor)
            out["inception_score"] = inception_score(generated.base, extractor, splits=min(10, len(specs)))[0]
    if opts.i3d_weights:
        if generated.videos.shape[1] < FVD_FRAMES:
            out["notes"].append(f"FVD skipped: I3D needs {FVD_FRAMES} frames, the videos have "
                                f"{generated.videos.shape[1]} (drop --no-interpolate)")
        else:
            with timer("fvd"):
                frames = generated.videos.shape[1]
                real = np.stack([render_clip(sample_clip(s.index, seed=s.seed, split=s.split, num_frames=frames,
                                                         fps=generated.fps, size=s.size)) for s in specs])
                window = fvd_window(frames)
                out["fvd"] = fvd(real[:, window], generated.videos[:, window], I3DFeatureExtractor(opts.i3d_weights))
    return out


# ------------------------------------------------------------------------------------------ shapes


def run_shapes(opts: EvalOptions, pipe: MicroCinemaPipeline, domain_model: DomainVideoClassifier | None = None,
               ) -> dict[str, Any]:
    """The procedural-domain benchmark; ``domain_model`` overrides the shipped domain classifier."""
    note = None
    if domain_model is None:
        domain_model, note = load_classifier_or_note(opts.domain_classifier)
    specs = domain_prompts(opts.num_samples, seed=opts.prompt_seed)
    mode = "animate" if opts.key_frames == "truth" else "generate"
    generated = generate_videos(pipe, specs, mode, steps=opts.steps, batch_size=opts.batch_size, seed=opts.seed,
                                interpolate=opts.interpolate)
    timer = Timer()
    with timer("judge"):
        judged, base, _ = judge_videos(specs, generated, mode, steps=opts.steps)
    with timer("render_real_clips"):
        real = real_clips(specs)
    domain = shapes_metrics(real, generated, timer, domain_model=domain_model, domain_note=note)
    weighted = _weighted_metrics(opts, specs, real, generated, timer)
    n = len(specs)
    metrics = {
        "benchmark": "shapes", "key_frames": opts.key_frames, "num_samples": n, "steps": opts.steps,
        "seed": opts.seed, "frames": int(generated.videos.shape[1]), "fps": generated.fps, "judge": judged,
        "appearance": {"centre_frame_psnr_db": judged["centre_frame_psnr_db"],
                       "all_frames_psnr_db": judged["all_frames_psnr_db"]},
        "temporal": {"warping_error": domain["warping_error"], "clip_temp": weighted.get("clip_temp")},
        "distribution": {"domain_fvd": domain["domain_fvd"], "fvd": weighted.get("fvd"), "fid": weighted.get("fid"),
                         "inception_score": weighted.get("inception_score"), "clipsim": weighted.get("clipsim")},
        "notes": domain["notes"] + weighted["notes"],
        "timings": {"generation_s": round(generated.seconds, 2), "generation_s_per_video": round(generated.seconds / n, 3),
                    "metrics_s": timer.total, "metrics_s_per_video": round(timer.total / n, 3),
                    "metrics_breakdown_s": timer.seconds},
        "command": opts.command,
    }
    save_grid(opts.out / "grid.png", list(base[:8]), captions=[s.caption for s in specs[:8]])
    plot_motion_accuracy(judged["motion_from_base_frames"]["by_motion"], opts.out / "motion_accuracy.png")
    return metrics


def plot_motion_accuracy(by_motion: dict[str, float], out: Path) -> Path:
    """Bar plot of motion accuracy per motion kind (9 base frames judged) to a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = sorted(by_motion)
    fig = Figure(figsize=(6, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(kinds, [100 * by_motion[k] for k in kinds], color="#4c72b0")
    ax.set_ylim(0, 100)
    ax.set_ylabel("motion right (%)")
    ax.set_title("motion accuracy per motion kind")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out)
    return out


# ------------------------------------------------------------------------------------------ ucf101 / msrvtt


def real_clip_batches(data: Path, num: int, *, num_frames: int, fps: float, size: int, out: Path,
                      batch_size: int) -> Iterator[torch.Tensor]:
    """Batches (B, T, 3, H, W) in [-1, 1] of up to ``num`` real clips, evenly spread over ``data`` (a folder of
    videos, listed into ``out/real_videos.jsonl``, or a caption table), centred windows, short videos padded."""
    from microcinema.data.video_dataset import VideoCaptionDataset

    table, root = Path(data), None
    if table.is_dir():
        files = sorted(p for p in table.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
        check(bool(files), f"--data {data}: no video files ({', '.join(VIDEO_SUFFIXES)})")
        root, table = Path(data), out / "real_videos.jsonl"
        table.write_text("".join(json.dumps({"file": str(f.relative_to(data)), "text": f.stem}) + "\n" for f in files))
    dataset = VideoCaptionDataset(table, root, num_frames=num_frames, fps=fps, size=size, sample="center",
                                  too_short="pad")
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(num, len(dataset))).round().astype(int))
    for start in range(0, len(picks), batch_size):
        yield torch.stack([dataset[int(i)]["pixel_values"] for i in picks[start:start + batch_size]])


def run_open_domain(opts: EvalOptions, pipe: MicroCinemaPipeline) -> dict[str, Any]:
    """UCF-101 (FVD, IS) or MSR-VTT (CLIPSIM; FID, FVD with ``--data``), features measured batch by batch."""
    from microcinema.eval.metrics import ClipScorer, I3DFeatureExtractor, InceptionFeatureExtractor, clip_temp, clipsim
    from microcinema.eval.metrics.fid import inception_score_from_logits
    from microcinema.eval.metrics.frechet import frechet_distance_from_features

    if opts.benchmark == "ucf101":
        prompts = ucf101_prompts(opts.num_samples)
    else:
        prompts = read_captions(opts.captions)[:opts.num_samples]
    n = len(prompts)
    num_frames = 9 if opts.interpolate else 17
    fps = pipe.base_fps * (INTERPOLATION_FACTOR if opts.interpolate else 1)
    timer = Timer()
    with timer("load_metric_models"):
        i3d = I3DFeatureExtractor(opts.i3d_weights) if opts.i3d_weights else None
        inception = InceptionFeatureExtractor(opts.inception_weights) if opts.inception_weights else None
        scorer = ClipScorer(opts.clip_model) if opts.clip_model else None
    fid_wanted = inception is not None and opts.benchmark == "msrvtt"
    fake: dict[str, list] = {"i3d": [], "pool": [], "logits": []}
    clip_sums, shown, generation_s, clock = [0.0, 0.0], [], 0.0, time.perf_counter()
    for start, (frames, _) in zip(range(0, n, opts.batch_size), iter_videos(
            pipe, prompts, num_frames=num_frames, steps=opts.steps, batch_size=opts.batch_size, seed=opts.seed,
            interpolate=opts.interpolate, desc=f"{opts.benchmark} videos")):
        generation_s += time.perf_counter() - clock
        window = frames[:, fvd_window(frames.shape[1])]
        shown += list(frames[:8 - len(shown)])
        with timer("fake_features"):
            if i3d:
                fake["i3d"].append(i3d.features(window))
            if inception:
                pool, logits = inception.features_and_logits(window)
                fake["pool"].append(pool)
                fake["logits"].append(logits)
            if scorer:  # batch means weighted by batch size: the mean over videos
                clip_sums[0] += len(frames) * clipsim(frames, prompts[start:start + len(frames)], scorer)
                clip_sums[1] += len(frames) * clip_temp(frames, scorer)
        clock = time.perf_counter()
    metrics: dict[str, Any] = {"benchmark": opts.benchmark, "num_samples": n, "steps": opts.steps, "seed": opts.seed,
                               "frames": INTERPOLATION_FACTOR * (num_frames - 1) + 1 if opts.interpolate else num_frames,
                               "fps": fps, "fvd_frames": FVD_FRAMES,
                               "prompt_template": UCF101_TEMPLATE if opts.benchmark == "ucf101" else None}
    if scorer:
        metrics["clipsim"], metrics["clip_temp"] = clip_sums[0] / n, clip_sums[1] / n
    if inception:
        metrics["inception_score"] = inception_score_from_logits(np.concatenate(fake["logits"]), splits=min(10, n))[0]
    if opts.data and (i3d or fid_wanted):
        real: dict[str, list] = {"i3d": [], "pool": []}
        metrics["num_real"] = 0
        with timer("real_features"):
            for clips in real_clip_batches(opts.data, n, num_frames=FVD_FRAMES, fps=fps, size=pipe.image_size,
                                           out=opts.out, batch_size=opts.batch_size):
                metrics["num_real"] += len(clips)
                if i3d:
                    real["i3d"].append(i3d.features(clips))
                if fid_wanted:
                    real["pool"].append(inception.features(clips))
        with timer("frechet"):
            if i3d:
                metrics["fvd"] = frechet_distance_from_features(np.concatenate(real["i3d"]), np.concatenate(fake["i3d"]))
            if fid_wanted:
                metrics["fid"] = frechet_distance_from_features(np.concatenate(real["pool"]), np.concatenate(fake["pool"]))
    metrics["timings"] = {"generation_s": round(generation_s, 2), "generation_s_per_video": round(generation_s / n, 3),
                          "metrics_s": timer.total, "metrics_s_per_video": round(timer.total / n, 3),
                          "metrics_breakdown_s": timer.seconds}
    metrics["notes"], metrics["command"] = [], opts.command
    save_grid(opts.out / "grid.png", [v[::INTERPOLATION_FACTOR if opts.interpolate else 1] for v in shown],
              captions=prompts[:len(shown)])
    return metrics


# ------------------------------------------------------------------------------------------ running, report


def run_benchmark(opts: EvalOptions, *, pipe: MicroCinemaPipeline | None = None,
                  domain_model: DomainVideoClassifier | None = None) -> dict[str, Any]:
    """Check the inputs, generate, measure; writes ``metrics.json``, ``report.md`` and PNGs to ``opts.out``."""
    check_inputs(opts)
    pipe = pipe or load_pipeline(opts)
    opts.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(opts.seed)
    metrics = run_shapes(opts, pipe, domain_model) if opts.benchmark == "shapes" else run_open_domain(opts, pipe)
    (opts.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    write_report(opts.out, metrics)
    return metrics


def _fmt(value: Any, spec: str = ".4g") -> str:
    """A number formatted, ``None`` as "not measured", a text (a note in place of a value) as it is."""
    if value is None:
        return "not measured"
    return value if isinstance(value, str) else format(value, spec)


def metric_rows(m: dict[str, Any]) -> list[tuple[str, str]]:
    """(name, value) rows of the report's metrics table."""
    if m["benchmark"] != "shapes":
        return [(name, _fmt(m.get(key))) for name, key in (
            ("FVD (I3D, 16 frames) ↓", "fvd"), ("IS (Inception, frames) ↑", "inception_score"),
            ("FID (Inception, frames) ↓", "fid"), ("CLIPSIM ↑", "clipsim"), ("CLIP-Temp ↑", "clip_temp"))]
    p, j = m["judge"]["against_prompt"], m["judge"]
    pct = lambda table, key: "-" if table.get(key) is None else f"{table[key]:.1%}"  # noqa: E731
    kept = j["kept_from_key_frame"]  # empty where the judge found nothing in the key frames
    return [
        ("motion right (all / held-out combinations)", f"{pct(p['all'], 'motion')} / {pct(p['heldout_combos'], 'motion')}"),
        ("colour / object right in every frame",
         f"{pct(p['all'], 'colour_every_frame')} / {pct(p['all'], 'object_every_frame')}"),
        ("colour / object kept from the key frame in every frame",
         f"{pct(kept, 'colour_every_frame')} / {pct(kept, 'object_every_frame')}"),
        ("centre-frame PSNR vs key frame (median / mean, dB)",
         f"{j['centre_frame_psnr_db']['median']:.2f} / {j['centre_frame_psnr_db']['mean']:.2f}"),
        ("all frames PSNR vs key frame (mean, dB)", f"{j['all_frames_psnr_db']['mean']:.2f}"),
        ("warping error ↓ (pixels in [0, 1])", _fmt(m["temporal"]["warping_error"])),
        ("CLIP-Temp ↑", _fmt(m["temporal"]["clip_temp"])),
        ("domain FVD ↓ (vs real rendered clips, 2 fps)", _fmt(m["distribution"]["domain_fvd"])),
        ("FVD ↓ (I3D)", _fmt(m["distribution"]["fvd"])), ("FID ↓", _fmt(m["distribution"]["fid"])),
        ("IS ↑", _fmt(m["distribution"]["inception_score"])), ("CLIPSIM ↑", _fmt(m["distribution"]["clipsim"])),
    ]


def write_report(out: Path, m: dict[str, Any]) -> Path:
    t = m["timings"]
    lines = [f"# microcinema eval: {m['benchmark']}", "", f"Regenerate: `{m['command']}`", "",
             f"{m['num_samples']} samples, {m['steps']} sampling steps, seed {m['seed']}, {m['frames']} frames at "
             f"{m['fps']:g} fps" + (f", key frames: {m['key_frames']}" if "key_frames" in m else ""), "",
             "| metric | value |", "|---|---|", *[f"| {name} | {value} |" for name, value in metric_rows(m)], "",
             f"Time: generation {t['generation_s']} s ({t['generation_s_per_video']} s per video), metrics "
             f"{t['metrics_s']} s ({t['metrics_s_per_video']} s per video; "
             + ", ".join(f"{k} {v} s" for k, v in t["metrics_breakdown_s"].items()) + ").", ""]
    lines += [f"- {note}" for note in m["notes"]] + ([""] if m["notes"] else [])
    lines += ["![first videos, base frames](grid.png)", ""]
    if m["benchmark"] == "shapes":
        lines += ["![motion accuracy per motion kind](motion_accuracy.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
