"""Choose the embedded ART-V model's default sampler, steps and guidance from measurements (issue 17 item 6).

The paper samples every frame with DPM++ 2S ancestral at 50 steps (appendix A), two model evaluations per step,
with the compositional guidance of eq. 8 (four branches batched). On a 2-core CPU that is far from the issue's
0.5 s per frame, so this script times and judges candidate settings on a *tuning* set of prompt sequences
(prompt seed 555, apart from the long-video benchmark's 999 on which the chosen setting is then reported):

    python experiments/artv/choose_default.py --model runs/artv --out runs/artv_choose

Each row: ``num_sequences`` videos of ``num_segments`` x ``frames_per_segment`` frames, frame 0 the ground
truth's (so only the auto-regressive model is measured), the same seed for every row; seconds per frame (wall
and this process's CPU time, both threads) and the long-video measures (:func:`~microcinema.eval.longvideo.main_rates`).
Writes ``choose.md`` and ``choose.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ablations import COLUMNS, _fmt, load_artv  # noqa: E402

from microcinema.eval.drift import measure_drift  # noqa: E402
from microcinema.eval.judge import default_object_classifier  # noqa: E402
from microcinema.eval.longvideo import artv_video_fn, benchmark_sequences, main_rates, summarise  # noqa: E402

#: (label, sampler, steps, guidance weights (text, ref, anchor), reference noise level)
CANDIDATES: tuple[tuple[str, str, int, tuple[float, float, float], int], ...] = (
    ("paper_2s_a_6", "dpmpp_2s_ancestral", 6, (6.5, 0.25, 0.25), 200),  # the paper's settings at 6 steps
    ("ddim_10_w6.5_l0", "ddim", 10, (6.5, 0.25, 0.25), 0),
    ("ddim_10_w2.5_l0", "ddim", 10, (2.5, 0.25, 0.25), 0),               # the training probe's settings
    ("ddim_10_w2.5_l100", "ddim", 10, (2.5, 0.25, 0.25), 100),
    ("ddim_8_w2.5_l0", "ddim", 8, (2.5, 0.25, 0.25), 0),
    ("ddim_6_w2.5_l0", "ddim", 6, (2.5, 0.25, 0.25), 0),
    ("dpmpp_2m_6_w2.5_l0", "dpmpp_2m", 6, (2.5, 0.25, 0.25), 0),
    ("ddim_8_w4_l0", "ddim", 8, (4.0, 0.25, 0.25), 0),
    # the reference and anchor guidance weights (eq. 8; the paper's 0.25 each), tried for the object kept rate
    ("ddim_8_w2.5_a1", "ddim", 8, (2.5, 0.25, 1.0), 0),
    ("ddim_8_w2.5_a2", "ddim", 8, (2.5, 0.25, 2.0), 0),
    ("ddim_8_w2.5_r1_a1", "ddim", 8, (2.5, 1.0, 1.0), 0),
    ("ddim_8_w4_a1", "ddim", 8, (4.0, 0.25, 1.0), 0),
    ("ddim_8_w2.5_a4", "ddim", 8, (2.5, 0.25, 4.0), 0),
    ("ddim_8_w2.5_a8", "ddim", 8, (2.5, 0.25, 8.0), 0),
    ("ddim_8_w2.5_r1_a2", "ddim", 8, (2.5, 1.0, 2.0), 0),
)
#: The long-video measures of the table (the ablation table's columns but its seconds per video).
MEASURES = tuple(c for c in COLUMNS if c[1] != "seconds")


def run(model: str, out: Path, *, num_sequences: int, num_segments: int, frames_per_segment: int,
        prompt_seed: int, seed: int, only: list[str] | None) -> list[dict[str, Any]]:
    pipe = load_artv(model)
    pipe.set_progress_bar_config(disable=True)
    classifier = default_object_classifier()
    sequences = benchmark_sequences(num_sequences, seed=prompt_seed, num_segments=num_segments,
                                    frames_per_segment=frames_per_segment)
    frames_total = num_sequences * num_segments * frames_per_segment
    rows = []
    for label, sampler, steps, (w_text, w_ref, w_anchor), level in CANDIDATES:
        if only and label not in only:
            continue
        pipe.sampler = sampler  # a pipeline setting (register_settings), not a call argument
        make_video = artv_video_fn(pipe, num_inference_steps=steps, guidance_scale=w_text,
                                   ref_guidance_scale=w_ref, anchor_guidance_scale=w_anchor, ref_noise_level=level)
        wall, cpu, reports = 0.0, 0.0, []
        for segments in sequences:
            t0, c0 = time.perf_counter(), time.process_time()
            frames = make_video(segments, seed)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            reports.append(measure_drift(frames, segments, classifier=classifier))
        row = {"label": label, "sampler": sampler, "steps": steps, "guidance": [w_text, w_ref, w_anchor], "ref_noise_level": level,
               "seconds": round(wall / frames_total, 3), "cpu_seconds": round(cpu / frames_total, 3),
               **main_rates(summarise(reports))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "choose.json").write_text(json.dumps({"model": model, "num_sequences": num_sequences,
                                                 "num_segments": num_segments, "frames_per_segment": frames_per_segment,
                                                 "prompt_seed": prompt_seed, "seed": seed,
                                                 "threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    lines = [f"# ART-V sampler and steps on the tuning set (prompt seed {prompt_seed})", "",
             f"model `{model}`, {num_sequences} sequences x {num_segments} segments x {frames_per_segment} frames, "
             f"frame 0 the ground truth's, seed {seed}, torch threads {torch.get_num_threads()}", "",
             "| row | sampler | steps | guidance text/ref/anchor | ref level | s/frame (wall) | s/frame (CPU) | "
             + " | ".join(label for label, _, _ in MEASURES) + " |",
             "|---" * (7 + len(MEASURES)) + "|"]
    for r in rows:
        cells = [_fmt(r.get(key), kind) for _, key, kind in MEASURES]
        lines.append(f"| {r['label']} | {r['sampler']} | {r['steps']} | {'/'.join(str(w) for w in r['guidance'])} | {r['ref_noise_level']} | "
                     f"{r['seconds']:.3f} | {r['cpu_seconds']:.3f} | " + " | ".join(cells) + " |")
    (out / "choose.md").write_text("\n".join(lines) + "\n")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="embedded, a pipeline folder or a training run folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--num-sequences", type=int, default=6)
    parser.add_argument("--num-segments", type=int, default=3)
    parser.add_argument("--frames-per-segment", type=int, default=8)
    parser.add_argument("--prompt-seed", type=int, default=555)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="*", default=None, help="row labels to run (default: all)")
    args = parser.parse_args(argv)
    run(args.model, args.out, num_sequences=args.num_sequences, num_segments=args.num_segments,
        frames_per_segment=args.frames_per_segment, prompt_seed=args.prompt_seed, seed=args.seed, only=args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
