"""The ceiling the embedded VAE puts on the long-video benchmark's domain measures (issue 17).

Every ART-V frame is decoded by the embedded VAE (64x64 -> 16x16x4 latents). This script sends the ground truth of
the benchmark's sequences through the VAE (encode, take the latent mean, decode) and judges the round trip with the
same measures as ``microcinema eval --benchmark longvideo``: what the judge reads on those frames is the best any
model sampling in this latent space could reach.

    python experiments/artv/vae_ceiling.py --num-sequences 50 --out runs/artv_vae_ceiling
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from microcinema.core.video_io import to_uint8_frames
from microcinema.data.synthetic_dataset import frames_to_tensor
from microcinema.embedded import embedded_path
from microcinema.eval.drift import measure_drift
from microcinema.eval.judge import default_object_classifier
from microcinema.eval.longvideo import benchmark_sequences, main_rates, render_truth, summarise


@torch.no_grad()
def round_trip(vae: AutoencoderKL, frames: np.ndarray, batch: int = 16) -> np.ndarray:
    """uint8 (F, H, W, 3) -> the VAE's reconstruction from the latent mean, uint8."""
    out = []
    for i in range(0, len(frames), batch):
        x = frames_to_tensor(frames[i:i + batch])
        out.append(to_uint8_frames(vae.decode(vae.encode(x).latent_dist.mode()).sample))
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-sequences", type=int, default=50)
    parser.add_argument("--prompt-seed", type=int, default=999, help="the benchmark's (999)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32).eval()
    classifier = default_object_classifier()
    sequences = benchmark_sequences(args.num_sequences, seed=args.prompt_seed)
    rows = {"truth": [], "vae": []}
    per_sequence = []
    for segments in tqdm(sequences, desc="truth and its VAE round trip", unit="video"):
        truth = render_truth(segments)
        for name, frames in (("truth", truth), ("vae", round_trip(vae, truth))):
            rows[name].append(measure_drift(frames, segments, classifier=classifier))
        d = rows["vae"][-1].domain["summary"]
        per_sequence.append({"object": segments[0].object, "object_kept_every_frame": d["object_kept_every_frame"],
                             "object_kept_fraction": d["object_kept_fraction"]})
    summaries = {name: summarise(reports) for name, reports in rows.items()}
    result = {name: {**main_rates(summary), "object_kept_frames": summary["object_kept_frames"]}
              for name, summary in summaries.items()}
    digits = [p for p in per_sequence if p["object"].startswith("digit")]
    result["vae"]["digit_sequences"] = len(digits)
    result["vae"]["digit_object_kept_every_frame"] = float(np.mean([p["object_kept_every_frame"] for p in digits])) \
        if digits else None
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ceiling.json").write_text(json.dumps({"num_sequences": args.num_sequences,
                                                       "prompt_seed": args.prompt_seed, **result,
                                                       "per_sequence": per_sequence}, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
