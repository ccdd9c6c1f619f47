"""Seconds per key frame (25 DDIM steps) with diffusers' AttnProcessor2_0 against SignatureCachedAttnProcessor,
interleaved in one process.  python experiments/cpu_speed/attention_signature_ab.py --runs 15"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from microcinema.models.layers import cache_attention_signatures
from microcinema.pipelines.text_to_image import TextToImagePipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(2)
    pipe = TextToImagePipeline.embedded()
    prompt = "a red circle moving left"
    pipe(prompt, num_inference_steps=25)
    times = {"AttnProcessor2_0": [], "SignatureCachedAttnProcessor": []}
    for run in range(args.runs):
        for name in times:
            if name == "AttnProcessor2_0":
                pipe.unet.set_attn_processor(AttnProcessor2_0())
            else:
                cache_attention_signatures(pipe.unet)
            pipe.text_encoder.clear_cache()
            start = time.perf_counter()
            pipe(prompt, num_inference_steps=25, generator=torch.Generator().manual_seed(run))
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.3f} s per key frame (min {min(values):.3f})")
    old, new = (statistics.median(v) for v in times.values())
    print(f"ratio {old / new:.3f}")


if __name__ == "__main__":
    main()
