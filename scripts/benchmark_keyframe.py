"""Seconds per key frame of a text-to-image model of this project (stage one), on this machine.

Median of --runs single-prompt generations at --steps (default 25, DDIM, guidance on: two U-Net
evaluations per step in one batch), after one warm-up run. With --reference, a second model is timed in
the same process, the runs interleaved (one of each in turn), and the ratio printed: on a machine whose
speed drifts, the ratio is the number to trust.

    python scripts/benchmark_keyframe.py --runs 7 --steps 25
    python scripts/benchmark_keyframe.py --model runs/t2i/final --reference embedded --runs 15
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from microcinema.pipelines.text_to_image import TextToImagePipeline


def _load(name: str) -> TextToImagePipeline:
    return TextToImagePipeline.embedded() if name == "embedded" else TextToImagePipeline.from_pretrained(name)


def _time_one(pipe: TextToImagePipeline, prompt: str, steps: int, seed: int) -> float:
    pipe.text_encoder.clear_cache()
    t = time.perf_counter()
    pipe(prompt, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed))
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded", help="'embedded' (default) or a model folder")
    parser.add_argument("--reference", default=None, help="a second model timed in the same process (ratio)")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pipes = {args.model: _load(args.model)}
    load = time.perf_counter() - t0
    if args.reference:
        pipes[args.reference] = _load(args.reference)
    prompt = "a red circle moving left"
    for pipe in pipes.values():
        pipe(prompt, num_inference_steps=args.steps)  # warm-up
    times: dict[str, list[float]] = {name: [] for name in pipes}
    for run in range(args.runs):
        for name, pipe in pipes.items():
            times[name].append(_time_one(pipe, prompt, args.steps, run))
    print(f"torch threads: {torch.get_num_threads()}; load: {load:.2f} s")
    for name, values in times.items():
        print(f"{name}: seconds per key frame at {args.steps} steps: median {statistics.median(values):.3f} "
              f"(min {min(values):.3f}, max {max(values):.3f}, {args.runs} runs)")
    if args.reference:
        ratio = statistics.median(times[args.model]) / statistics.median(times[args.reference])
        print(f"ratio {args.model} / {args.reference}: {ratio:.3f}")


if __name__ == "__main__":
    main()
