"""Time to evaluate N generated videos on this machine: generation and every metric, separately (issue 5).

Runs ``microcinema eval --benchmark shapes`` on the embedded pipeline (stage one, stage two, x4
interpolation: 33 frames at 64x64, 25 steps) and prints the generation time and each metric's time.

The weighted metrics need weights that cannot be downloaded here (I3D Kinetics-400 for FVD, pytorch-fid's
Inception for FID/IS, CLIP ViT-B/32 for CLIPSIM/CLIP-Temp). Their compute does not depend on the values
of the weights, so this script times them on **random weights of the real architectures** (CLIP: the
ViT-B/32 shapes at 224 px, with the test tokenizer's small vocabulary, which only shrinks the embedding
lookup) saved to a temporary folder. Their values are meaningless and are removed from the written
``metrics.json`` (kept as ``"random weights: timing only"``); the domain metrics (judge, domain FVD,
warping error) are real. With ``--no-stand-ins`` only the metrics that need no user weights run.

    python scripts/benchmark_eval.py --num-samples 100 --out docs/results/eval_timing
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from microcinema.eval.benchmarks import EvalOptions, run_benchmark, write_report

STAND_IN = "random weights: timing only"
WEIGHTED = ("fvd", "fid", "inception_score", "clipsim", "clip_temp")


def make_stand_ins(folder: Path) -> dict[str, Path]:
    """Random-weight I3D and Inception state dicts and a ViT-B/32-shaped CLIP folder in ``folder``."""
    from microcinema.eval.metrics import FIDInceptionV3, InceptionI3d
    from microcinema.testing import save_random_clip_model

    torch.manual_seed(0)
    torch.save(InceptionI3d().state_dict(), folder / "i3d.pt")
    torch.save(FIDInceptionV3().state_dict(), folder / "inception.pt")
    clip = save_random_clip_model(
        folder / "clip", projection_dim=512,
        text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8),
        vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                    image_size=224, patch_size=32))
    return {"i3d_weights": folder / "i3d.pt", "inception_weights": folder / "inception.pt", "clip_model": clip}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("docs/results/eval_timing"))
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-stand-ins", action="store_true", help="skip FVD/FID/IS/CLIP (no random stand-ins)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        weights = {} if args.no_stand_ins else make_stand_ins(Path(tmp))
        command = (f"python scripts/benchmark_eval.py --num-samples {args.num_samples} --out {args.out} "
                   f"--steps {args.steps} --batch-size {args.batch_size}" + (" --no-stand-ins" if args.no_stand_ins else ""))
        opts = EvalOptions(benchmark="shapes", num_samples=args.num_samples, out=args.out, steps=args.steps,
                           batch_size=args.batch_size, command=command, **weights)
        start = time.perf_counter()
        metrics = run_benchmark(opts)
        wall = time.perf_counter() - start
    if weights:  # the stand-ins' values mean nothing: keep their timings only
        for group in ("temporal", "distribution"):
            for name in WEIGHTED:
                if metrics[group].get(name) is not None:
                    metrics[group][name] = STAND_IN
        metrics["notes"].append("FVD, FID, IS, CLIPSIM and CLIP-Temp were computed with random weights of the real "
                                "architectures (I3D, FID Inception-v3, CLIP ViT-B/32 shapes) to time them; their "
                                "values are not reported")
    metrics["timings"]["wall_s"] = round(wall, 2)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    write_report(args.out, metrics)
    t = metrics["timings"]
    n = metrics["num_samples"]
    print(f"{n} videos ({metrics['frames']} frames, {args.steps} steps): wall {wall:.1f} s")
    print(f"generation: {t['generation_s']:.1f} s ({t['generation_s_per_video']:.2f} s per video)")
    print(f"metrics:    {t['metrics_s']:.1f} s ({t['metrics_s_per_video']:.2f} s per video)")
    for name, seconds in t["metrics_breakdown_s"].items():
        print(f"  {name:<18} {seconds:8.1f} s")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
