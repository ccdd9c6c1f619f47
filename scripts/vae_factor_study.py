"""Choose the tiny VAE's latent downsampling factor (4 or 8) from measured quality and speed.

Trains one small AutoencoderKL per factor for the same wall-clock budget on procedural frames, then
prints held-out PSNR and encode/decode milliseconds per 64x64 frame, and the latent size each gives the
diffusion models (which sets their speed). Run:

    python scripts/vae_factor_study.py --minutes 4
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
from diffusers import AutoencoderKL

from microcinema.data.synthetic_dataset import SyntheticKeyFrameDataset


def build(factor: int, width: int) -> AutoencoderKL:
    """Same widths, one more down/up level for factor 8: (w, 2w, 4w) vs (w, 2w, 4w, 4w)."""
    blocks = 3 if factor == 4 else 4
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width)[:blocks], mid_block_add_attention=False,
        down_block_types=("DownEncoderBlock2D",) * blocks, up_block_types=("UpDecoderBlock2D",) * blocks,
        sample_size=64,
    )


def batch(dataset, start: int, n: int) -> torch.Tensor:
    return torch.stack([dataset[(start + i) % len(dataset)]["pixel_values"] for i in range(n)])


def psnr(x: torch.Tensor, y: torch.Tensor) -> float:
    mse = ((x.clamp(-1, 1) - y) / 2).pow(2).mean().item()
    return 10 * math.log10(1 / max(mse, 1e-12))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=4.0, help="training budget per factor")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    torch.manual_seed(0)
    train = SyntheticKeyFrameDataset(1_000_000, seed=1)
    held = batch(SyntheticKeyFrameDataset(64, split="heldout", seed=2), 0, 64)
    results = {}
    for factor in (4, 8):
        vae = build(factor, args.width)
        opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
        torch.manual_seed(0)
        start, step = time.time(), 0
        while time.time() - start < args.minutes * 60:
            x = batch(train, step * args.batch_size, args.batch_size)
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample
            loss = torch.nn.functional.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        vae.eval()
        with torch.no_grad():
            t0 = time.perf_counter()
            latents = vae.encode(held).latent_dist.mode()
            t1 = time.perf_counter()
            recon = vae.decode(latents).sample
            t2 = time.perf_counter()
        results[factor] = {
            "params_M": sum(p.numel() for p in vae.parameters()) / 1e6, "steps": step,
            "heldout_psnr_db": round(psnr(recon, held), 2), "latent": list(latents.shape[1:]),
            "encode_ms_per_frame": round(1000 * (t1 - t0) / len(held), 2),
            "decode_ms_per_frame": round(1000 * (t2 - t1) / len(held), 2),
        }
        print(json.dumps({f"f{factor}": results[factor]}), flush=True)


if __name__ == "__main__":
    main()
