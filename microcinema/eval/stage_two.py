"""Evaluate MicroCinema's stage two (image&text-to-video + x4 interpolation), judged from the generated pixels.

Prompts are captions of procedural clips (by default 75 % training combinations and 25 % held-out ones, from
a prompt seed never used in training), so each has exact ground truth (colour, object, motion). Two modes:

* ``animate``: the key frame is the ground-truth clip's centre frame (rendered by the domain), so stage two
  is measured on its own: motion from the text, appearance kept, and the centre frame's PSNR against the
  key frame it was given (paper section 3.2: the video must keep the key frame's appearance).
* ``generate``: end to end, the key frame from stage one (text-to-image), so stage one's mistakes count too.

Every video is judged by :mod:`microcinema.eval.judge`: the motion from the 9 base frames at 2 fps (and
again from the 33 interpolated frames at 8 fps), colour and object in *every* frame of the final video.
Writes ``metrics.json``, ``report.md``, ``grid_<mode>.png`` (base frames of the first videos, captioned)
and a few mp4s to ``--out``. Run::

    python -m microcinema.eval.stage_two --out docs/results/stage_two --num 100 --mode animate generate
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from microcinema.data.synthetic import render_frame
from microcinema.systems.microcinema.pipeline import INTERPOLATION_FACTOR, MicroCinemaPipeline
from microcinema.core.video_io import save_grid, write_video
from microcinema.eval.judge import accuracy_table, default_object_classifier, judge_video
from microcinema.eval.stage_one import domain_prompts

MODES = ("animate", "generate")
#: PSNR of a frame identical to the key frame is infinite; averages over frames cap it here (dB).
PSNR_CAP = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two uint8 images."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@dataclass
class GeneratedVideos:
    """Videos of one evaluation run: ``videos`` (N, T, H, W, 3) uint8 as generated (33 frames at 8 fps when
    interpolated), ``keys`` (N, H, W, 3) uint8 key frames, ``base_fps`` of the base model, ``stride`` between
    base frames in ``videos`` and the wall-clock ``seconds`` spent generating."""

    videos: np.ndarray
    keys: np.ndarray
    base_fps: float
    stride: int
    seconds: float

    @property
    def base(self) -> np.ndarray:
        """The base frames (N, F, H, W, 3) at ``base_fps`` (the key frame is the centre one)."""
        return self.videos[:, ::self.stride]

    @property
    def fps(self) -> float:
        return self.base_fps * self.stride


#: The pipeline settings that decide sampling, recorded in ``metrics.json``.
SAMPLING_SETTINGS = ("sampler", "num_inference_steps", "guidance_scale", "key_frame_sampler",
                     "key_frame_num_inference_steps",
                     "interp_sampler", "interp_num_inference_steps", "refine_strength", "pin_key_frame")


def set_sampling(pipe: MicroCinemaPipeline, **settings: Any) -> dict[str, Any]:
    """Set the given pipeline settings (those not None: command-line overrides) and return the sampling
    settings now in force (:data:`SAMPLING_SETTINGS`, as recorded in ``metrics.json``)."""
    for name, value in settings.items():
        if value is not None:
            setattr(pipe, name, value)
    return {k: pipe.config.get(k) for k in SAMPLING_SETTINGS}


def truth_key_frames(specs: Sequence) -> list[Image.Image]:
    """The ground-truth key frames of clip specs: each clip's rendered centre frame (stage two measured alone)."""
    return [Image.fromarray(render_frame(s, s.num_frames // 2)) for s in specs]


def iter_videos(pipe: MicroCinemaPipeline, prompts: Sequence[str], *, images: Sequence | None = None,
                num_frames: int = 9, steps: int, batch_size: int, seed: int, interpolate: bool,
                desc: str = "videos") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Generate in batches (batch ``i`` seeded ``seed + i * batch_size``), yielding ``(frames, key frames)``
    uint8 per batch, so callers can measure features as they go instead of holding every video."""
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc, unit="batch"):
        batch = list(prompts[start:start + batch_size])
        out = pipe(batch, image=None if images is None else list(images[start:start + batch_size]),
                   num_frames=num_frames, num_inference_steps=steps, output_type="latent",
                   generator=torch.Generator().manual_seed(seed + start), interpolate=interpolate, progress=False)
        keys = np.stack([((k.permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
                         for k in out.key_frames])
        yield pipe.decode_to_uint8(out.frames), keys


def generate_videos(pipe: MicroCinemaPipeline, specs: list, mode: str, *, steps: int, batch_size: int, seed: int,
                    interpolate: bool) -> GeneratedVideos:
    """One video per spec: key frame from stage one (``generate``) or the clip's centre frame (``animate``)."""
    images = truth_key_frames(specs) if mode == "animate" else None
    started = time.time()
    batches = list(iter_videos(pipe, [s.caption for s in specs], images=images, num_frames=specs[0].num_frames,
                               steps=steps, batch_size=batch_size, seed=seed, interpolate=interpolate,
                               desc=f"{mode} videos"))
    return GeneratedVideos(np.concatenate([v for v, _ in batches]), np.concatenate([k for _, k in batches]),
                           pipe.base_fps, INTERPOLATION_FACTOR if interpolate else 1, time.time() - started)


def judge_videos(specs: list, generated: GeneratedVideos, mode: str, *, steps: int) -> tuple[dict, np.ndarray, list[dict]]:
    """Judge generated videos against their specs; returns (metrics, base frames (N, F, H, W, 3), per-video rows)."""
    classifier = default_object_classifier()
    videos, keys, stride, seconds = generated.videos, generated.keys, generated.stride, generated.seconds
    base = generated.base
    centre = base.shape[1] // 2
    base_pairs, full_pairs, key_pairs, rows = [], [], [], []
    for spec, video, key in zip(specs, videos, keys):
        on_base = judge_video(video[::stride], fps=generated.base_fps, classifier=classifier)
        on_full = judge_video(video, fps=generated.fps, colour=spec.colour, object=spec.object, classifier=classifier)
        key_judged = judge_video(key[None], classifier=classifier)
        base_pairs.append((on_base, spec))
        full_pairs.append((on_full, spec))
        # "kept": every frame shows what the key frame shows (the model's job when the key frame is given)
        key_pairs.append((on_full, {"colour": key_judged.colour, "object": key_judged.object}))
        rows.append({"caption": spec.caption, "split": spec.split, "truth": [spec.colour, spec.object, spec.motion],
                     "motion": on_base.motion, "motion_33": on_full.motion,
                     "colour_kept": on_full.colour_fraction(spec.colour),
                     "object_kept": on_full.object_fraction(spec.object),
                     "key_frame": [key_judged.colour, key_judged.object],
                     "centre_psnr": psnr(video[centre * stride], key),
                     "mean_psnr": float(np.mean([min(psnr(frame, key), PSNR_CAP) for frame in video]))})
    split = lambda pairs, name: [p for p, s in zip(pairs, specs) if s.split == name]  # noqa: E731
    every = lambda pairs: {k: v for k, v in accuracy_table(pairs).items()  # noqa: E731
                           if k in ("n", "found", "motion", "colour_every_frame", "object_every_frame")}
    psnrs = np.array([r["centre_psnr"] for r in rows])
    metrics = {
        "mode": mode, "num": len(specs), "steps": steps, "interpolate": stride > 1, "frames": int(videos.shape[1]),
        "seconds_generating": round(seconds, 1), "seconds_per_video": round(seconds / len(specs), 2),
        "against_prompt": {"all": every(full_pairs), "train_combos": every(split(full_pairs, "train")),
                           "heldout_combos": every(split(full_pairs, "heldout"))},
        "motion_from_base_frames": {"all": accuracy_table(base_pairs)["motion"],
                                    "by_motion": {k: v["motion"] for k, v in
                                                  accuracy_table(base_pairs, group_by="motion").items()}},
        "kept_from_key_frame": {k: v for k, v in accuracy_table(key_pairs).items()
                                if k in ("colour_every_frame", "object_every_frame")},
        "centre_frame_psnr_db": {"median": float(np.median(psnrs)), "mean": float(np.mean(psnrs)),
                                 "min": float(np.min(psnrs)), "fraction_at_least_25": float(np.mean(psnrs >= 25))},
        "all_frames_psnr_db": {"mean": float(np.mean([r["mean_psnr"] for r in rows]))},
    }
    return metrics, base, rows


def evaluate_mode(pipe: MicroCinemaPipeline, specs: list, mode: str, *, steps: int, batch_size: int, seed: int,
                  interpolate: bool) -> tuple[dict, np.ndarray, list[dict]]:
    """Generate one video per spec and judge it; returns (metrics, base frames (N, 9, H, W, 3), per-video rows)."""
    generated = generate_videos(pipe, specs, mode, steps=steps, batch_size=batch_size, seed=seed,
                                interpolate=interpolate)
    return judge_videos(specs, generated, mode, steps=steps)


def write_report(out: Path, results: dict) -> None:
    lines = ["# Stage two: videos judged from pixels", "",
             "Regenerate: `python -m microcinema.eval.stage_two " + results["command"] + "`", ""]
    if results.get("settings"):
        lines += ["Sampling settings: " + ", ".join(f"{k} {v}" for k, v in results["settings"].items()), ""]
    for mode, m in results["modes"].items():
        p = m["against_prompt"]
        lines += [f"## {mode} ({m['num']} prompts, {m['steps']} steps, {m['frames']} frames, "
                  f"{m['seconds_per_video']} s per video)", "",
                  "| prompts | n | motion right | colour right in every frame | object right in every frame |",
                  "|---|---|---|---|---|"]
        for name, key in (("all", "all"), ("training combinations", "train_combos"),
                          ("held-out combinations", "heldout_combos")):
            if p[key].get("n"):
                lines.append(f"| {name} | {p[key]['n']} | {p[key]['motion']:.1%} | {p[key]['colour_every_frame']:.1%} "
                             f"| {p[key]['object_every_frame']:.1%} |")
        kept, c = m["kept_from_key_frame"], m["centre_frame_psnr_db"]
        by_motion = ", ".join(f"{k} {v:.0%}" for k, v in sorted(m["motion_from_base_frames"]["by_motion"].items()))
        lines += ["", f"- motion by kind (9 base frames): {by_motion}",
                  f"- same colour / object as the key frame in every frame: {kept['colour_every_frame']:.1%} / "
                  f"{kept['object_every_frame']:.1%}",
                  f"- centre frame vs key frame: median PSNR {c['median']:.1f} dB (min {c['min']:.1f}; "
                  f"{c['fraction_at_least_25']:.0%} of videos >= 25 dB)", "",
                  f"![{mode}](grid_{mode}.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="a MicroCinema pipeline folder (default: the embedded models)")
    parser.add_argument("--num", type=int, default=100)
    parser.add_argument("--mode", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--steps", type=int, default=None,
                        help="the base model's steps (default: the pipeline's; its other stages keep their own)")
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--no-interpolate", action="store_true")
    parser.add_argument("--prompt-seed", type=int, default=999,
                        help="seed of the prompt set (999: the reported evaluation; use another to tune settings)")
    parser.add_argument("--no-pin-key-frame", action="store_true",
                        help="let the model redraw the key frame (the paper's sampling; default: kept exactly)")
    parser.add_argument("--refine-strength", type=float, default=None,
                        help="key-frame refinement of the base and in-between frames, 0 = off "
                             "(default: the pipeline's)")
    parser.add_argument("--key-frame-steps", type=int, default=None,
                        help="stage one's steps (default: the pipeline's setting, else --steps)")
    parser.add_argument("--interp-steps", type=int, default=None,
                        help="the interpolation's steps (default: the pipeline's setting, else --steps)")
    parser.add_argument("--sampler", default=None, help="the base model's sampler (default: the pipeline's)")
    parser.add_argument("--interp-sampler", default=None,
                        help="the interpolation's sampler (default: the pipeline's)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe = MicroCinemaPipeline.from_pretrained(args.model) if args.model else MicroCinemaPipeline.embedded()
    pipe.pin_key_frame = not args.no_pin_key_frame
    settings = set_sampling(pipe, num_inference_steps=args.steps, refine_strength=args.refine_strength,
                            key_frame_num_inference_steps=args.key_frame_steps,
                            interp_num_inference_steps=args.interp_steps, sampler=args.sampler,
                            interp_sampler=args.interp_sampler)
    specs = domain_prompts(args.num, seed=args.prompt_seed)
    results = {"command": " ".join(argv if argv is not None else __import__("sys").argv[1:]),
               "settings": settings, "modes": {}}
    for mode in args.mode:
        metrics, base, rows = evaluate_mode(pipe, specs, mode, steps=pipe.num_inference_steps,
                                            batch_size=args.batch_size,
                                            seed=0, interpolate=not args.no_interpolate)
        results["modes"][mode] = metrics
        (args.out / f"videos_{mode}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        save_grid(args.out / f"grid_{mode}.png", list(base[:8]), captions=[s.caption for s in specs[:8]])
        print(json.dumps({mode: {k: metrics[k] for k in ("against_prompt", "kept_from_key_frame",
                                                         "centre_frame_psnr_db", "seconds_per_video")}}, indent=2))
    (args.out / "metrics.json").write_text(json.dumps(results, indent=2) + "\n")
    write_report(args.out, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
