"""Does a few-shot adapter hold its tuning clips' motion? Denoising loss on the tuning clips, per timestep, for the
tuned and the untuned U-Net, with the clips' frames in order and shuffled in time (same noise for all four).

If the adapter learned the motion, the tuned loss on ordered frames is below both the untuned loss and the tuned
loss on shuffled frames (a model that knows the path predicts the noise of the true order better).

    python experiments/fewshot/loss_by_timestep.py --adapter runs/fewshot/overfit/bounce/adapter.safetensors \
        --data runs/fewshot/compare/bounce/clips/captions.jsonl
"""
from __future__ import annotations

import argparse
import json

import torch

from microcinema.core.diffusion import alphas_cumprod_of
from microcinema.systems.fewshot.data import read_tuning_clips
from microcinema.systems.fewshot.pipeline import FewShotPipeline
from microcinema.systems.fewshot.structured_noise import structured_noise
from microcinema.systems.fewshot.task import encode_clips


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--timesteps", default="50,200,400,600,800,950")
    ap.add_argument("--draws", type=int, default=4, help="noise draws per clip and timestep")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    pipe = FewShotPipeline.from_adapter(args.adapter)
    meta = pipe.adapter_metadata
    size = pipe.default_height_width if hasattr(pipe, "default_height_width") else (64, 64)
    clips = read_tuning_clips(args.data, num_frames=meta.num_frames, fps=meta.fps, size=tuple(size), log=False)
    items = encode_clips(clips, pipe.vae, pipe.text_embedder, torch.device("cpu"))
    abar = alphas_cumprod_of(pipe.scheduler)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(meta.num_frames, generator=g)
    results = {}
    for t in [int(x) for x in args.timesteps.split(",")]:
        sums = {"tuned": 0.0, "untuned": 0.0, "tuned_shuffled": 0.0, "untuned_shuffled": 0.0}
        n = 0
        for item in items:
            for _ in range(args.draws):
                z0 = item["latents"].unsqueeze(0)
                eps = structured_noise(meta.noise, tuple(z0.shape), g, alpha=meta.noise_alpha)
                a = abar[t]
                for order, z in (("", z0), ("_shuffled", z0[:, :, perm])):
                    zt = a.sqrt() * z + (1 - a).sqrt() * eps
                    kw = dict(encoder_hidden_states=item["encoder_hidden_states"].unsqueeze(0))
                    if "encoder_attention_mask" in item:
                        kw["encoder_attention_mask"] = item["encoder_attention_mask"].unsqueeze(0)
                    with torch.no_grad():
                        sums["tuned" + order] += float(((pipe.unet(zt, torch.tensor([t]), **kw).sample - eps) ** 2).mean())
                        with pipe.untuned():
                            sums["untuned" + order] += float(((pipe.unet(zt, torch.tensor([t]), **kw).sample - eps) ** 2).mean())
                n += 1
        results[t] = {k: v / n for k, v in sums.items()}
        r = results[t]
        print(f"t={t:4d}  tuned {r['tuned']:.4f}  untuned {r['untuned']:.4f}  tuned/shuffled {r['tuned_shuffled']:.4f}  "
              f"untuned/shuffled {r['untuned_shuffled']:.4f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
