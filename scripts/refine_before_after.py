"""Before / after the key-frame refinement: the base frames of animate-mode videos, without it and with it.

    python scripts/refine_before_after.py --out docs/results/stage_two_frame_errors/refine_before_after.png

For each prompt (default: the tuning-set prompts, seed 555, whose videos lost their object without the
refinement, judged as in scripts/stage_two_frame_errors.py), three rows of the 9 base frames at 2 fps: the
ground-truth clip, the pipeline with ``refine_strength=0`` and with the pipeline's default. The videos are made
in the same batches of ten with the same seeds as that script, so the first pass is the one it judged;
3x nearest-neighbour.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from PIL import Image

from microcinema.data.synthetic import render_clip
from microcinema.eval.stage_one import domain_prompts
from microcinema.eval.stage_two import truth_key_frames
from microcinema.systems.microcinema.pipeline import INTERPOLATION_FACTOR, MicroCinemaPipeline

#: Tuning-set indices (``domain_prompts(40, seed=555)``) whose videos lost the object before the refinement
#: (phase-6 model, palette anchored, seeds as in stage_two_frame_errors.py).
DEFAULT_INDICES = (0, 5, 12, 18, 19, 21, 22)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--save-videos", default=None, help="also write the 33-frame videos (before, after) as .npz")
    parser.add_argument("--indices", type=int, nargs="+", default=list(DEFAULT_INDICES),
                        help="which tuning prompts (indices into domain_prompts(40, seed=555))")
    args = parser.parse_args()
    pipe = MicroCinemaPipeline.embedded()
    specs = domain_prompts(40, seed=555)
    keys = truth_key_frames(specs)
    videos = {}
    for start in sorted({i // 10 * 10 for i in args.indices}):
        batch = specs[start:start + 10]
        for strength in (0.0, None):
            out = pipe([s.caption for s in batch], image=keys[start:start + 10], num_frames=9, num_inference_steps=25,
                       refine_strength=strength, generator=torch.Generator().manual_seed(start), progress=False)
            for k, video in enumerate(out.frames):
                videos.setdefault(start + k, []).append(video)
    rows = []
    for i in args.indices:
        rows += [render_clip(specs[i]), *(video[::INTERPOLATION_FACTOR] for video in videos[i])]
        print(specs[i].caption)
    if args.save_videos:
        np.savez_compressed(args.save_videos, indices=np.array(args.indices),
                            before=np.stack([videos[i][0] for i in args.indices]),
                            after=np.stack([videos[i][1] for i in args.indices]))
    grid = np.concatenate([np.concatenate(list(r), axis=1) for r in rows], axis=0)
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.out)
    print(f"wrote {args.out}: per prompt, truth / refine_strength=0 / default")


if __name__ == "__main__":
    main()
