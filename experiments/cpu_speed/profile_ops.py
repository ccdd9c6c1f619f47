"""Where a video's time goes, by torch operator (quiet machine): torch.profiler over one embedded generation.

    python experiments/cpu_speed/profile_ops.py --steps 10 --threads 2 [--channels-last] [--bf16]
"""
from __future__ import annotations

import argparse
import time

import torch

from microcinema import MicroCinemaPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    pipe = MicroCinemaPipeline.embedded()
    pipe.set_progress_bar_config(disable=True)
    if args.channels_last:
        for m in (pipe.unet, pipe.interp_unet, pipe.vae):
            m.to(memory_format=torch.channels_last)
    kw = dict(num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="np")
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else torch.autocast("cpu", enabled=False)
    with ctx:
        pipe("a red circle moving left", **kw)
        t0 = time.perf_counter()
        pipe("a red circle moving left", **kw)
        print(f"one video at {args.steps} steps: {time.perf_counter() - t0:.2f} s")
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            pipe("a red circle moving left", **kw)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
