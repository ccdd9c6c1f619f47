"""Where stage two loses the object or its colour: judge every frame of animate-mode videos and count the
misses per frame position, base frames (every 4th of 33; the key frame is frame 16) against interpolated ones.

    python scripts/stage_two_frame_errors.py --num 40 --prompt-seed 555 [--interp-gamma G] [--model DIR]
        [--no-anchor-palette] [--refine-strength S] [--strips docs/results/stage_two_frame_errors/colour_misses.png]

Animate mode (ground-truth key frames, so stage one's errors are out of it), 25 steps per stage, batches of 10
seeded ``start index``. Prints one JSON line: colour / object kept in every frame, misses per frame position,
the sums over base and interpolated frames, and the most frequent (truth, judged) object confusions.

Measured with the phase-5 base model (2026-12-02; tuning prompts, seed 555, 40 videos): colour misses 0 of 360
base frames and 23 of 960 interpolated ones; object misses 23 base, 67 interpolated (the same rate: the
interpolation model inherits the base frames' object errors); colour in every frame 82.5 %, object 72.5 %.
The strips (``--strips``) show what a colour miss is: the whole frame's palette shifts for an interpolated frame
(background navy -> forest -> charcoal, and the object with it: orange -> red on maroon, yellow -> orange).
With the in-between frames' palette anchored (replacement.mean_anchor_eps_model, the pipeline's default since
2026-12-02; ``--no-anchor-palette`` turns it off, and the numbers above are without it): colour misses 0 base /
8 interpolated, colour in every frame 92.5 %, object unchanged (72.5 %).
``--interp-gamma`` 0 / 0.1: colour in every frame 75 % / 70 % (33 / 22 interpolated-frame misses).
The shipped phase-6 base model (appearance attention), anchored: object misses 11 base / 39 interpolated, object
in every frame 82.5 %, colour 95 % (docs/results/stage_two_frame_errors/phase6_tune40.json). That was before the
key-frame refinement (microcinema.systems.microcinema.keyframe_refine, the pipeline's default since 2026-12-02 at strength 0.3;
``--refine-strength 0`` turns it off). Refining the base frames only (the first version, same day): at 0.3 object
misses 1 base / 6 interpolated, object in every frame 95 %, colour 100 % (phase6_refine_base_only0.3_tune40.json);
at 0.4: 2 / 8, 95 %, 100 % (phase6_refine_base_only0.4_tune40.json). Refining the in-between frames too (shipped):
1 / 1, object in every frame 97.5 %, colour 100 % (phase6_refine0.3_tune40.json).
"""

from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch
from PIL import Image

from microcinema.eval.judge import default_object_classifier, judge_video
from microcinema.eval.stage_one import domain_prompts
from microcinema.eval.stage_two import truth_key_frames
from microcinema.systems.microcinema.pipeline import INTERPOLATION_FACTOR, MicroCinemaPipeline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=40, help="prompts drawn (a quarter from held-out combinations)")
    parser.add_argument("--prompt-seed", type=int, default=555, help="555: the tuning set; 999 is the evaluation set")
    parser.add_argument("--only", choices=("all", "digit", "shape"), default="all", help="keep these objects only")
    parser.add_argument("--model", default=None, help="a MicroCinema pipeline folder (default: the embedded models)")
    parser.add_argument("--interp-gamma", type=float, default=None,
                        help="the interpolation model's Appearance Noise Prior gamma (default: the pipeline's)")
    parser.add_argument("--no-anchor-palette", action="store_true",
                        help="do not keep each in-between frame's palette at its condition's (the pipeline's default "
                             "does, replacement.mean_anchor_eps_model)")
    parser.add_argument("--refine-strength", type=float, default=None,
                        help="key-frame refinement of the base and in-between frames, 0 = off "
                             "(default: the pipeline's)")
    parser.add_argument("--strips", default=None,
                        help="write a PNG: for each of the first 12 colour misses, the missed frame with two frames "
                             "either side (3x nearest-neighbour)")
    args = parser.parse_args()

    pipe = MicroCinemaPipeline.from_pretrained(args.model) if args.model else MicroCinemaPipeline.embedded()
    if args.interp_gamma is not None:
        pipe.interp_noise_prior_gamma = args.interp_gamma
    pipe.interp_anchor_means = pipe.interp_anchor_means and not args.no_anchor_palette
    if args.refine_strength is not None:
        pipe.refine_strength = args.refine_strength
    specs = domain_prompts(args.num, seed=args.prompt_seed)
    if args.only != "all":
        specs = [s for s in specs if s.object.startswith("digit") == (args.only == "digit")]
    classifier, keys = default_object_classifier(), truth_key_frames(specs)
    object_bad, colour_bad, confusions = collections.Counter(), collections.Counter(), collections.Counter()
    object_kept = colour_kept = 0
    strips: list[np.ndarray] = []
    for start in range(0, len(specs), 10):
        batch = specs[start:start + 10]
        out = pipe([s.caption for s in batch], image=keys[start:start + 10], num_frames=9, num_inference_steps=25,
                   generator=torch.Generator().manual_seed(start), progress=False)
        for video, spec in zip(out.frames, batch):
            judged = judge_video(video, fps=out.fps, colour=spec.colour, object=spec.object, classifier=classifier)
            object_kept += judged.object_kept == 1.0
            colour_kept += judged.colour_kept == 1.0
            for i, frame in enumerate(judged.frames):
                if frame.object != spec.object:
                    object_bad[i] += 1
                    confusions[f"{spec.object}->{frame.object}"] += 1
                colour_bad[i] += frame.colour != spec.colour
                if frame.colour != spec.colour and len(strips) < 12:
                    lo = min(max(0, i - 2), len(video) - 5)
                    strips.append(np.concatenate(list(video[lo:lo + 5]), axis=1))
    frames = len(out.frames[0])
    if args.strips and strips:
        grid = np.concatenate(strips, axis=0)
        Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(args.strips)
    base = range(0, frames, INTERPOLATION_FACTOR)
    split = lambda bad: {"base": sum(bad[i] for i in base), "interpolated": sum(bad.values()) - sum(bad[i] for i in base)}  # noqa: E731
    print(json.dumps({"args": vars(args), "videos": len(specs), "frames": frames,
                      "object_every_frame": object_kept / len(specs), "colour_every_frame": colour_kept / len(specs),
                      "object_misses": split(object_bad), "colour_misses": split(colour_bad),
                      "object_misses_by_frame": [object_bad[i] for i in range(frames)],
                      "colour_misses_by_frame": [colour_bad[i] for i in range(frames)],
                      "confusions": confusions.most_common(12)}))


if __name__ == "__main__":
    main()
