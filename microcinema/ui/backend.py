"""What the web UI does, without the web: input checks that give one-line messages, and the jobs of the three
tabs (MicroCinema, ART-V, few-shot tuning) as plain functions over a :class:`~microcinema.ui.jobs.Job`, so they
are tested with pytest and the page only shows their events.

Every finished video becomes a :class:`~microcinema.ui.runs.Run` (mp4, gif, settings with the seed and the
command line that makes the same video). The same seed and settings give the same frames as the CLI.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import shlex
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from microcinema.core.errors import MicroCinemaError, check
from microcinema.ui.jobs import Job
from microcinema.ui.runs import Run, RunStore

#: Largest seed the UI draws (seeds the user types may be any integer >= 0 below 2**63).
MAX_RANDOM_SEED = 2**31 - 1
#: Most frames an ART-V video may have in the UI (the CLI has no limit).
MAX_ARTV_FRAMES = 256
#: Few-shot tuning clips allowed in the UI (the recurrent few-shot paper's setting is 8-16).
MIN_CLIPS, MAX_CLIPS = 2, 16
#: An ART-V preview video is rewritten every this many frames (and at every segment's end).
PREVIEW_EVERY = 8


# ---------------------------------------------------------------------------------------- input checks


def check_prompt(prompt: Any, what: str = "prompt") -> str:
    """The prompt stripped; an empty one is an error."""
    text = "" if prompt is None else str(prompt).strip()
    check(text != "", f"empty {what}: describe what happens, e.g. 'a red circle moving left'")
    return text


def resolve_seed(seed: Any) -> int:
    """The seed to use: a whole number >= 0 as given; empty or -1 draws a random one (echoed back to the user)."""
    if seed is None or (isinstance(seed, str) and seed.strip() == ""):
        return secrets.randbelow(MAX_RANDOM_SEED)
    try:
        value = float(seed)
    except (TypeError, ValueError):
        raise MicroCinemaError(f"seed must be a whole number >= 0 (or -1 for a random one), got {seed!r}") from None
    check(math.isfinite(value) and value == int(value) and -1 <= value < 2**63,
          f"seed must be a whole number >= 0 (or -1 for a random one), got {seed!r}")
    return secrets.randbelow(MAX_RANDOM_SEED) if value == -1 else int(value)


def check_whole(value: Any, name: str, low: int, high: int | None = None) -> int:
    """``value`` as an int in [low, high]."""
    allowed = f"a whole number >= {low}" if high is None else f"a whole number from {low} to {high}"
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MicroCinemaError(f"{name} must be {allowed}, got {value!r}") from None
    check(math.isfinite(number) and number == int(number) and number >= low and (high is None or number <= high),
          f"{name} must be {allowed}, got {value!r}")
    return int(number)


def check_number(value: Any, name: str, low: float = 0.0) -> float:
    """``value`` as a float >= low."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise MicroCinemaError(f"{name} must be a number >= {low:g}, got {value!r}") from None
    check(math.isfinite(number) and number >= low, f"{name} must be a number >= {low:g}, got {value!r}")
    return number


def optional_steps(value: Any) -> int | None:
    """Sampling steps from a form: empty or 0 means the model's own (None), else a whole number 1-200."""
    return None if value in (None, "", 0) else check_whole(value, "steps", 1, 200)


def optional_guidance(value: Any) -> float | None:
    """Guidance from a form: empty means the model's own (None), else a number >= 0."""
    return None if value in (None, "") else check_number(value, "guidance")


def parse_segments(rows: Any, max_frames: int = MAX_ARTV_FRAMES) -> list[tuple[str, int]]:
    """ART-V segments from the table's rows ``[prompt, frames]`` (a list of lists or a pandas DataFrame);
    rows with neither are skipped. One-line errors name the row."""
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a DataFrame
        rows = rows.values.tolist()
    segments = []
    for number, row in enumerate(rows or [], start=1):
        row = list(row) + [None, None]
        prompt, frames = row[0], row[1]
        empty_prompt = prompt is None or str(prompt).strip() == "" or str(prompt) == "nan"
        empty_frames = frames is None or str(frames).strip() in ("", "nan")
        if empty_prompt and empty_frames:
            continue
        check(not empty_prompt, f"row {number}: empty prompt: describe what happens, e.g. 'a red circle moving left'")
        check(not empty_frames, f"row {number}: give the number of frames of this prompt")
        segments.append((str(prompt).strip(), check_whole(frames, f"row {number}: frames", 1, max_frames)))
    check(bool(segments), "add at least one prompt with its number of frames")
    total = sum(n for _, n in segments)
    check(total <= max_frames, f"the prompts add up to {total} frames; the UI makes at most {max_frames}")
    return segments


def _command(*parts: Any) -> str:
    return " ".join(shlex.quote(str(p)) for p in parts if p is not None and p != "")


# ---------------------------------------------------------------------------------------- the studio


@dataclass
class Studio:
    """The models the UI serves (loaded on first use, then kept) and the store of its runs.

    ``model``: a MicroCinema pipeline folder (default the embedded models); ``artv_model``: an ART-V pipeline
    folder (default the embedded one); ``fewshot_base``: the base that few-shot tuning inflates.
    """

    outputs: Path
    model: str | None = None
    artv_model: str | None = None
    fewshot_base: str = "embedded"
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.outputs = Path(self.outputs)
        self.runs = RunStore(self.outputs / "runs")

    # ------------------------------------------------------------------ models
    def _get(self, key: str, load: Any) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = load()
            return self._cache[key]

    def microcinema_pipeline(self) -> Any:
        from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline

        return self._get("microcinema", lambda: MicroCinemaPipeline.embedded() if self.model in (None, "embedded")
                         else MicroCinemaPipeline.from_pretrained(self.model))

    def artv_pipeline(self) -> Any:
        from microcinema.systems.artv.pipeline import ARTVPipeline

        return self._get("artv", lambda: ARTVPipeline.embedded() if self.artv_model in (None, "embedded")
                         else ARTVPipeline.from_pretrained(self.artv_model))

    def fewshot_pipeline(self, adapter: str | Path | None) -> Any:
        """The base with ``adapter`` loaded (None: untuned), one pipeline per adapter file kept."""
        from microcinema.systems.fewshot.pipeline import FewShotPipeline

        if adapter is None:
            return self._get("fewshot:base", lambda: FewShotPipeline.from_base(self.fewshot_base))
        path = Path(adapter)
        check(path.is_file(), f"adapter not found: {path}; train one first")
        key = f"fewshot:{path.resolve()}:{path.stat().st_mtime_ns}"
        return self._get(key, lambda: FewShotPipeline.from_adapter(path))

    def _scratch(self, name: str, keep_seconds: float = 3600.0) -> Path:
        """A folder under ``outputs/tmp`` for files the page shows while a job runs (ART-V's growing video);
        scratch folders older than ``keep_seconds`` are removed first."""
        root = self.outputs / "tmp"
        if root.is_dir():
            for old in root.iterdir():
                if old.is_dir() and old.name != name and time.time() - old.stat().st_mtime > keep_seconds:
                    shutil.rmtree(old, ignore_errors=True)
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    # ------------------------------------------------------------------ MicroCinema
    def microcinema(self, job: Job, prompt: Any, image: Any = None, negative_prompt: str | None = None,
                    steps: Any = None, guidance_scale: Any = None, seed: Any = -1, num_frames: Any = 9) -> Run:
        """Text (and optionally the user's key frame) to video. Events: ``notes`` (what fitting the image
        changed), ``seed``, ``key_frame`` (a PIL image, as soon as stage one has made it), ``progress``."""
        from microcinema.pipelines.key_frame import load_image
        from microcinema.pipelines.text_to_image import to_output

        prompt = check_prompt(prompt)
        negative = (negative_prompt or "").strip() or None
        steps = optional_steps(steps)
        scale = optional_guidance(guidance_scale)
        seed = resolve_seed(seed)
        pipe = self.microcinema_pipeline()
        num_frames = check_whole(num_frames, "frames", 1)
        pipe.check_num_frames(num_frames)
        size = pipe.check_height_width(None, None)
        job.emit("seed", seed)
        if image is not None:
            key, notes = load_image(image, size)
            job.emit("notes", notes)
            job.emit("key_frame", to_output(key[None], "pil")[0])

        def on_step(p: Any, step: int, t: Any, tensors: dict) -> dict:
            job.raise_if_cancelled()
            total = max(1, getattr(p, "_num_timesteps", 1))
            job.progress((step + 1) / total, f"{p.stage.replace('_', ' ')}: step {step + 1} of {total}")
            if p.stage == "key_frame" and step + 1 == total:  # stage one is done: show its key frame now
                pixels = p.decode_latents(tensors["latents"].unsqueeze(2))[:, 0]
                job.emit("key_frame", to_output(pixels[:1], "pil")[0])
            return tensors

        out = pipe(prompt, image=image, negative_prompt=negative, num_frames=num_frames, num_inference_steps=steps,
                   guidance_scale=scale, generator=torch.Generator().manual_seed(seed), output_type="latent",
                   callback_on_step_end=on_step, progress=False)
        job.progress(1.0, "decoding")
        frames = pipe.decode_to_uint8(out.frames)[0]
        job.raise_if_cancelled()
        used_steps = steps or pipe.num_inference_steps
        settings = {"prompt": prompt, "negative_prompt": negative, "seed": seed, "num_frames": num_frames,
                    "steps": used_steps, "guidance_scale": scale if scale is not None
                    else pipe.guidance_scale, "model": self.model or "embedded", "image": image is not None,
                    "command": (_command("microcinema", "animate", "key_frame.png", prompt) if image is not None
                                else _command("microcinema", "generate", prompt))
                    + " " + _command("--seed", seed, "--frames", num_frames, "--steps", used_steps,
                                     *(("--guidance-scale", scale) if scale is not None else ()),
                                     *(("--negative-prompt", negative) if negative else ()),
                                     *(("--model", self.model) if self.model not in (None, "embedded") else ()),
                                     "--out", "video.mp4")}
        return self.runs.save("microcinema", prompt, frames, out.fps, settings,
                              images={"key_frame.png": to_output(out.key_frames[:1], "pil")[0]})

    # ------------------------------------------------------------------ ART-V
    def artv(self, job: Job, segments: Any, image: Any = None, steps: Any = None, guidance_scale: Any = None,
             seed: Any = -1) -> Run:
        """A multi-prompt video, frame by frame. Events: ``seed``, ``notes``, ``frame`` ``(index, total, uint8
        frame)``, ``partial`` (an mp4 of the frames so far, every :data:`PREVIEW_EVERY` frames and at each
        segment's end), ``progress``."""
        from microcinema.core.video_io import write_video

        segments = parse_segments(segments)
        steps = optional_steps(steps)
        scale = optional_guidance(guidance_scale)
        seed = resolve_seed(seed)
        pipe = self.artv_pipeline()
        total = sum(n for _, n in segments)
        ends = np.cumsum([n for _, n in segments]).tolist()  # frame count at each segment's end, in order
        notes: list[str] = []
        job.emit("seed", seed)
        stream = pipe.stream(segments, image=image, num_inference_steps=steps, guidance_scale=scale,
                             generator=torch.Generator().manual_seed(seed), output_type="uint8", progress=False,
                             callback_on_step_end=job.step_callback(), notes=notes)
        frames: list[np.ndarray] = []
        partial_dir = self._scratch(f"artv_{time.time_ns()}")
        fps = float(pipe.fps)
        try:
            for index, frame in enumerate(stream):
                if index == 0 and notes:
                    job.emit("notes", list(notes))
                frames.append(np.asarray(frame))
                segment = next(i for i, end in enumerate(ends) if index < end)
                job.progress((index + 1) / total,
                             f"segment {segment + 1} of {len(segments)}: frame {index + 1} of {total}")
                job.emit("frame", (index, total, frames[-1]))
                if (index + 1) % PREVIEW_EVERY == 0 or (index + 1) in ends:
                    path = write_video(partial_dir / f"frames_{index + 1:04d}.mp4", np.stack(frames), fps)
                    job.emit("partial", path)
        finally:
            stream.close()
        prompts = [p for p, _ in segments]
        counts = [n for _, n in segments]
        settings = {"segments": [{"prompt": p, "frames": n} for p, n in segments], "seed": seed,
                    "steps": steps or pipe.num_inference_steps, "guidance_scale": scale if scale is not None
                    else pipe.guidance_scale, "model": self.artv_model or "embedded", "image": image is not None,
                    "command": _command("microcinema", "artv", *prompts, "--frames-per-prompt", *counts, "--seed", seed,
                                        *(("--steps", steps) if steps else ()),
                                        *(("--guidance-scale", scale) if scale is not None else ()),
                                        *(("--image", "first_frame.png") if image is not None else ()),
                                        *(("--model", self.artv_model) if self.artv_model not in (None, "embedded")
                                          else ()), "--out", "video.mp4")}
        return self.runs.save("artv", " / ".join(prompts), np.stack(frames), fps, settings)

    # ------------------------------------------------------------------ few-shot
    def fewshot_train(self, job: Job, files: Sequence[Any], caption: Any, steps: Any = 300,
                      learning_rate: Any = 2e-4, attention: str = "recurrent", noise: str = "autoregressive",
                      sample_every: Any = None, sample_steps: int = 10, seed: Any = 0, num_frames: Any = 8,
                      fps: Any = 2.0) -> dict[str, Any]:
        """Tune an adapter on 2-16 uploaded clips of one motion with one caption. Events: ``loss`` (a list of
        ``(step, loss)`` since the last one), ``sample`` ``(step, mp4 path)`` (the caption sampled with the
        weights of that step, every ``sample_every`` steps and at the end), ``progress``. Returns the report of
        :func:`~microcinema.systems.fewshot.task.train_fewshot` with ``adapter`` and ``clips``."""
        from microcinema.core.video_io import write_video
        from microcinema.systems.fewshot.task import FewShotSettings, train_fewshot
        from microcinema.training.trainer import LOG_NAME, read_loss_log

        caption = check_prompt(caption, "caption")
        paths = [Path(f) if isinstance(f, (str, os.PathLike)) else Path(f.name) for f in (files or [])]
        check(MIN_CLIPS <= len(paths) <= MAX_CLIPS,
              f"upload {MIN_CLIPS} to {MAX_CLIPS} clips of the motion, got {len(paths)}")
        steps = check_whole(steps, "tuning steps", 1, 100_000)
        lr = check_number(learning_rate, "learning rate", 1e-12)
        seed = resolve_seed(seed)
        num_frames = check_whole(num_frames, "frames", 2, 64)
        fps = check_number(fps, "frames per second", 0.1)
        every = max(1, steps // 4) if sample_every in (None, "", 0) else check_whole(sample_every, "sample every", 1)
        folder = self.outputs / "adapters" / f"{time.strftime('%Y%m%d-%H%M%S')}-{time.time_ns() % 10**6:06d}"
        clips = folder / "clips"
        clips.mkdir(parents=True)
        for i, path in enumerate(paths):
            check(path.is_file(), f"upload {path.name} is missing; upload it again")
            shutil.copyfile(path, clips / f"{i:02d}_{path.name}")
        settings = FewShotSettings(data=str(clips), out=str(folder / "adapter.safetensors"), base=self.fewshot_base,
                                   caption=caption, attention=attention, steps=steps, noise=noise,
                                   num_frames=num_frames, fps=fps,
                                   learning_rate=lr, seed=seed, log_every=max(1, min(10, steps // 50)),
                                   checkpoint_every=max(steps, 1), progress=False)
        log_path = settings.run_path / LOG_NAME
        read = {"step": 0, "time": 0.0}  # the last step reported, and when the log was last read

        def report_losses(force: bool = False) -> None:
            now = time.monotonic()
            if not force and now - read["time"] < 0.5:
                return
            read["time"] = now
            points = [(int(r["step"]), float(r["loss"])) for r in read_loss_log(log_path) if r["step"] > read["step"]]
            if points:
                read["step"] = points[-1][0]
                job.emit("loss", points)
                job.progress(points[-1][0] / steps, f"tuning: step {points[-1][0]} of {steps}")

        sampler = self.fewshot_pipeline(None)

        def probe(model: Any, step: int) -> dict[str, float]:
            with sampler.adapter_state(model.trainable_state_dict()):
                latents = sampler(caption, num_inference_steps=sample_steps, guidance_scale=5.0,
                                  generator=torch.Generator().manual_seed(seed), output_type="latent",
                                  progress=False).frames
            frames = sampler.decode_to_uint8(latents)[0]
            path = write_video(folder / "samples" / f"step_{step:06d}.mp4", frames, sampler.fps)
            job.emit("sample", (step, path))
            return {}

        def should_stop() -> bool:
            report_losses()
            return job.cancelled

        job.emit("notes", [f"{len(paths)} clips, {num_frames} frames at {fps:g} fps; tuning {steps} steps at learning "
                           f"rate {lr:g}, {attention} attention, {noise} noise; a sample every {every} steps"])
        report = train_fewshot(settings, log=lambda message: None, probe=probe, probe_every=every,
                               should_stop=should_stop)
        report_losses(force=True)
        return {**report, "adapter": str(folder / "adapter.safetensors"), "caption": caption, "seed": seed}

    def fewshot_generate(self, job: Job, adapter: Any, prompt: Any, seed: Any = -1, steps: Any = 25,
                         guidance_scale: Any = 5.0) -> Run:
        """The adapter's video and the untuned base's with the same seed, side by side (tuned left)."""
        from microcinema.core.video_io import side_by_side

        prompt = check_prompt(prompt)
        check(adapter not in (None, ""), "no adapter yet: tune one first (or pick a trained one)")
        steps = check_whole(steps, "steps", 1, 200)
        scale = check_number(guidance_scale, "guidance")
        seed = resolve_seed(seed)
        pipe = self.fewshot_pipeline(adapter)
        job.emit("seed", seed)
        videos = []
        for name, untuned in (("tuned", False), ("untuned base", True)):
            def describe(p: Any, step: int, name: str = name) -> tuple[float, str]:
                return (step + 1) / max(1, p._num_timesteps), f"{name}: step {step + 1} of {p._num_timesteps}"

            kwargs = dict(num_inference_steps=steps, guidance_scale=scale,
                          generator=torch.Generator().manual_seed(seed),
                          output_type="latent", progress=False, callback_on_step_end=job.step_callback(describe))
            if untuned:
                with pipe.untuned():
                    latents = pipe(prompt, **kwargs).frames
            else:
                latents = pipe(prompt, **kwargs).frames
            videos.append(pipe.decode_to_uint8(latents)[0])
        settings = {"prompt": prompt, "seed": seed, "steps": steps, "guidance_scale": scale, "adapter": str(adapter),
                    "layout": "tuned (left) | untuned base (right)",
                    "command": _command("microcinema", "fewshot", "generate", adapter, prompt, "--seed", seed,
                                        "--steps", steps, "--guidance-scale", scale, "--out", "video.mp4", "--compare")}
        return self.runs.save("fewshot", prompt, side_by_side(videos), pipe.fps, settings)


__all__ = ["MAX_ARTV_FRAMES", "MAX_CLIPS", "MIN_CLIPS", "Studio", "check_number", "check_prompt", "check_whole",
           "parse_segments", "resolve_seed"]
