"""Teacher-forced one-frame motion test of an ART-V model (diagnostic, issue 17).

For ground-truth clips of the long-video benchmark's first segments, the model makes frame i from the true
frames i-1, i-2 (references) and frame 0 (anchor) with (a) the clip's caption, (b) the caption of the opposite
motion, (c) no text. The predicted displacement from frame i-1 is projected on the true direction of motion:
a model that follows the text moves along it in (a) and against it in (b).

    python experiments/artv/teacher_forced.py --model runs/artv_export --num 12
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from microcinema.data.synthetic import make_caption, render_clip
from microcinema.eval.judge import judge_frames
from microcinema.eval.longvideo import _MIRROR, benchmark_sequences


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--num", type=int, default=12)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--fps", type=float, default=8.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=2.5)
    p.add_argument("--indices", default="3,8,13")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    from diffusers import AutoencoderKL
    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.pipelines.base import sd_scheduler
    from microcinema.embedded import embedded_path
    from microcinema.systems.artv.model import ARTVModel
    from microcinema.systems.artv.pipeline import ARTVPipeline

    unet = ARTVModel.from_pretrained(args.model, torch_dtype=torch.float32)
    vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32)
    pipe = ARTVPipeline(unet, vae, load_text_encoder("minilm"), scheduler=sd_scheduler(), sampler="ddim",
                        guidance_scale=args.guidance, ref_noise_level=0, num_inference_steps=args.steps)
    pipe.set_progress_bar_config(disable=True)
    seqs = [s[0] for s in benchmark_sequences(args.num * 2, seed=555, frames_per_segment=args.frames,
                                              num_segments=1, fps=args.fps, heldout_fraction=0.0)]
    seqs = [s for s in seqs if s.motion in _MIRROR][: args.num]
    null = pipe._text("")
    rows = {"caption": [], "opposite": [], "none": []}
    truth_step = []
    for spec in seqs:
        frames = render_clip(spec)
        lat = pipe.encode_frames(torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1, len(frames))
        truth = judge_frames(frames)
        opposite = make_caption(spec.colour, spec.object, _MIRROR[spec.motion], spec.background, np.random.default_rng(0))
        for i in map(int, args.indices.split(",")):
            d = np.array(truth[i].center) - np.array(truth[i - 1].center)
            unit = d / max(np.linalg.norm(d), 1e-6)
            truth_step.append(np.linalg.norm(d))
            refs = torch.stack([lat[i - 1:i], lat[i - 2:i - 1]], dim=1)
            for name, prompt in (("caption", spec.caption), ("opposite", opposite), ("none", "")):
                for seed in range(args.seeds):
                    out = pipe.sample_frame(pipe._text(prompt), null, refs, lat[0:1], shape=tuple(lat[0:1].shape),
                                            num_inference_steps=args.steps, generator=torch.Generator().manual_seed(seed),
                                            weights=(pipe.ref_guidance_scale, pipe.anchor_guidance_scale, args.guidance),
                                            ref_level=0, sampler="ddim")
                    img = pipe._frames_of(out, "uint8")[0]
                    j = judge_frames(img[None])[0]
                    if not j.found:
                        continue
                    rows[name].append(float(np.dot(np.array(j.center) - np.array(truth[i - 1].center), unit)))
    print(f"{len(seqs)} clips, true step {np.mean(truth_step):.2f} px/frame")
    for name, v in rows.items():
        v = np.array(v)
        print(f"{name:9s} n={len(v):3d} along-true-direction mean {v.mean():+.2f} px  median {np.median(v):+.2f}  "
              f"positive {np.mean(v > 0):.0%}  |dev| {np.mean(np.abs(v)):.2f}")


if __name__ == "__main__":
    main()
