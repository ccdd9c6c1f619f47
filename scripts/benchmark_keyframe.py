"""Seconds per key frame of the embedded text-to-image model (stage one), on this machine.

Median of --runs single-prompt generations at --steps (default 25, DDIM, guidance on: two U-Net
evaluations per step in one batch), after one warm-up run. Also prints the time of the parts.

    python scripts/benchmark_keyframe.py --runs 7 --steps 25
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from microcinema.pipelines.text_to_image import TextToImagePipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipe = TextToImagePipeline.embedded()
    load = time.perf_counter() - t0
    prompt = "a red circle moving left"
    pipe(prompt, num_inference_steps=args.steps)  # warm-up (also fills the prompt cache: as a repeated prompt)
    times = []
    for run in range(args.runs):
        pipe.text_encoder.clear_cache()
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(run))
        times.append(time.perf_counter() - t)
    print(f"torch threads: {torch.get_num_threads()}; load: {load:.2f} s")
    print(f"seconds per key frame at {args.steps} steps: median {statistics.median(times):.3f} "
          f"(min {min(times):.3f}, max {max(times):.3f}, {args.runs} runs)")


if __name__ == "__main__":
    main()
