"""Seconds per video of the embedded MicroCinema pipeline (text -> 9 frames -> 33 frames, 64x64), on this machine.

Median of --runs single-prompt generations at --steps sampling steps per stage (default 25, DDIM: stage one
with text guidance, stage two with text guidance, interpolation without), after one warm-up run; prints
the median time of each stage and the peak resident memory of the process during the timed runs (Linux
VmHWM, reset before the runs). Reference runs in the same process are printed too, with their ratios: with
interpolation off, and with the key-frame refinement off (``refine_strength=0``).

    python scripts/benchmark_video.py --runs 5 --steps 25
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from microcinema import MicroCinemaPipeline


def peak_rss_mib() -> float | None:
    """Peak resident set size of this process since the last reset (Linux), MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def time_runs(pipe: MicroCinemaPipeline, prompt: str, runs: int, steps: int, interpolate: bool,
              refine_strength: float | None = None) -> tuple[list[float], dict[str, float], int]:
    totals, stages = [], {}
    frames = 0
    for run in range(runs):
        pipe.text_embedder.clear_cache()
        start = time.perf_counter()
        out = pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(run),
                   interpolate=interpolate, refine_strength=refine_strength, output_type="np", progress=False)
        totals.append(time.perf_counter() - start)
        frames = out.frames.shape[1]
        for name, seconds in out.timings.items():
            stages.setdefault(name, []).append(seconds)
    return totals, {name: statistics.median(v) for name, v in stages.items()}, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--prompt", default="a red circle moving left")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = MicroCinemaPipeline.embedded()
    load = time.perf_counter() - t0
    pipe(args.prompt, num_inference_steps=args.steps, output_type="np", progress=False)  # warm-up
    print(f"torch threads: {torch.get_num_threads()}; load: {load:.2f} s; peak RSS after load + warm-up: "
          f"{peak_rss_mib():.0f} MiB")
    reset_peak_rss()
    totals, stages, frames = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=True)
    peak = peak_rss_mib()
    median = statistics.median(totals)
    print(f"seconds per video ({frames} frames at 64x64, {args.steps} steps per stage): median {median:.2f} "
          f"(min {min(totals):.2f}, max {max(totals):.2f}, {args.runs} runs)")
    print("median seconds per stage: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
    print(f"peak RSS during the timed runs: {peak:.0f} MiB" if peak else "peak RSS: not available on this OS")
    base_totals, _, base_frames = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=False)
    base = statistics.median(base_totals)
    print(f"reference, same process, no interpolation ({base_frames} frames): median {base:.2f} s; "
          f"interpolated / base-only = {median / base:.2f}x")
    plain_totals, plain_stages, _ = time_runs(pipe, args.prompt, args.runs, args.steps, interpolate=True,
                                              refine_strength=0.0)
    plain = statistics.median(plain_totals)
    print(f"reference, same process, key-frame refinement off: median {plain:.2f} s ("
          + ", ".join(f"{k} {v:.2f}" for k, v in plain_stages.items()) + f"); refined / not = {median / plain:.2f}x")


if __name__ == "__main__":
    main()
