"""Evaluate stage one (text -> key frame) on domain prompts, judged from the generated pixels.

Prompts are captions of procedural clips (by default 150 of the training split's combinations and 50 of
the held-out ones, from seeds never used in training), so each has exact ground truth. Every key frame is
judged by :mod:`microcinema.eval.judge` (colour, object). Writes ``metrics.json``, ``grid.png`` (the first
frames, captioned) and ``report.md`` to ``--out``. Run::

    python -m microcinema.eval.stage_one --out runs/eval_t2i --num 200 --steps 25
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from microcinema.data.synthetic import sample_clip
from microcinema.pipelines.key_frame import generate_key_frames, load_key_frame_model
from microcinema.pipelines.text_to_image import to_output
from microcinema.core.video_io import save_grid
from microcinema.eval.judge import accuracy_table, default_object_classifier, judge_frames


def domain_prompts(num: int, heldout_fraction: float = 0.25, seed: int = 999) -> list:
    """Clip specs whose captions serve as prompts: ``heldout_fraction`` of them from held-out combinations."""
    num_heldout = int(round(num * heldout_fraction))
    specs = [sample_clip(i, seed=seed, split="train", num_frames=9, fps=2.0) for i in range(num - num_heldout)]
    specs += [sample_clip(i, seed=seed, split="heldout", num_frames=9, fps=2.0) for i in range(num_heldout)]
    return specs


def probe_prompts(num_digits: int = 50, num_shapes: int = 20, seed: int = 555) -> list:
    """Fixed prompts for a training probe: ``num_digits`` showing a digit and ``num_shapes`` a shape, a quarter
    of each from held-out combinations (like :func:`domain_prompts`, whose seed 999 the probe must not use)."""
    def draw(num: int, digits: bool) -> list:
        heldout = int(round(num * 0.25))
        specs = []
        for split, count in (("train", num - heldout), ("heldout", heldout)):
            found, index = [], 0
            while len(found) < count:
                spec = sample_clip(index, seed=seed, split=split, num_frames=9, fps=2.0,
                                   digit_weight=1e6 if digits else 1e-6)
                if spec.object.startswith("digit") == digits:
                    found.append(spec)
                index += 1
            specs += found
        return specs

    digits, shapes = draw(num_digits, True), draw(num_shapes, False)
    return digits + shapes


def make_probe(vae, text_encoder: str = "minilm", *, num_digits: int = 50, num_shapes: int = 20, steps: int = 25,
               guidance_scale: float = 5.0, prompt_seed: int = 555, seed: int = 0, batch_size: int = 35):
    """``probe(unet, step) -> {"digits": ..., "shapes": ..., "colour": ...}`` (fractions right, judged from
    pixels) for :class:`~microcinema.training.trainer.Trainer`: key frames of :func:`probe_prompts` drawn by
    ``unet`` with ``vae`` (DDIM, ``steps``, guidance ``guidance_scale``, noise from its own generator seeded
    ``seed``: the same noise at every probe)."""
    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.pipelines.text_to_image import TextToImagePipeline

    specs = probe_prompts(num_digits, num_shapes, prompt_seed)
    encoder = load_text_encoder(text_encoder)
    classifier = default_object_classifier()

    def probe(unet, step: int) -> dict[str, float]:
        pipe = TextToImagePipeline(unet, vae, encoder, text_encoder_name=text_encoder, guidance_scale=guidance_scale)
        generator = torch.Generator().manual_seed(seed)
        frames = np.concatenate([
            pipe([s.caption for s in specs[i:i + batch_size]], num_inference_steps=steps, generator=generator,
                 output_type="np").images for i in range(0, len(specs), batch_size)])
        judged = judge_frames(frames, classifier)
        right = [j.object == s.object for j, s in zip(judged, specs)]
        result = {"colour": float(np.mean([j.colour == s.colour for j, s in zip(judged, specs)]))}
        if num_digits:
            result["digits"] = float(np.mean(right[:num_digits]))
        if num_shapes:
            result["shapes"] = float(np.mean(right[num_digits:]))
        return result

    return probe


def evaluate(model: str | None, out: Path, *, num: int = 200, steps: int = 25, guidance_scale: float | None = None,
             batch_size: int = 25, seed: int = 0, prompt_seed: int = 999) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    specs = domain_prompts(num, seed=prompt_seed)
    runner = load_key_frame_model(model)
    classifier = default_object_classifier()
    frames, started = [], time.time()
    for start in tqdm(range(0, num, batch_size), desc="key frames", unit="batch"):
        batch = specs[start:start + batch_size]
        pixels = generate_key_frames([s.caption for s in batch], model=runner, num_inference_steps=steps,
                                     guidance_scale=guidance_scale, seed=seed + start)
        frames.append(to_output(pixels, "np"))
    frames = np.concatenate(frames)
    seconds = time.time() - started
    judgements = judge_frames(frames, classifier)
    pairs = list(zip(judgements, specs))
    split = lambda name: [p for p in pairs if p[1].split == name]  # noqa: E731
    metrics = {"num": num, "steps": steps, "guidance_scale": guidance_scale, "model": model or "embedded",
               "prompt_seed": prompt_seed,
               "seconds_generating": round(seconds, 1), "all": accuracy_table(pairs),
               "train_combos": accuracy_table(split("train")), "heldout_combos": accuracy_table(split("heldout")),
               "by_object": accuracy_table(pairs, group_by="object")}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    rows = [slice(i, i + 6) for i in range(0, min(num, 24), 6)]  # 4 rows of 6 key frames, prompts above each row
    save_grid(out / "grid.png", [frames[r] for r in rows], captions=[" | ".join(s.caption for s in specs[r]) for r in rows])
    _write_report(out, metrics)
    return metrics


def _write_report(out: Path, m: dict) -> None:
    rows = [f"| {name} | {m[key]['n']} | {m[key]['colour']:.1%} | {m[key]['object']:.1%} |"
            for name, key in (("all prompts", "all"), ("training combinations", "train_combos"),
                              ("held-out combinations", "heldout_combos"))]
    text = "\n".join([
        "# Stage one: key frames judged from pixels", "",
        f"model: {m['model']}, {m['num']} prompts, {m['steps']} steps, guidance {m['guidance_scale']}, "
        f"{m['seconds_generating']} s to generate", "",
        "| prompts | n | colour right | object right |", "|---|---|---|---|", *rows, "",
        "![first key frames](grid.png)", ""])
    (out / "report.md").write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="default: the embedded tiny model")
    parser.add_argument("--num", type=int, default=200)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance-scale", type=float, default=None)
    parser.add_argument("--prompt-seed", type=int, default=999,
                        help="seed of the prompt set (999: the reported evaluation; use another to tune settings)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    metrics = evaluate(args.model, args.out, num=args.num, steps=args.steps, guidance_scale=args.guidance_scale,
                       prompt_seed=args.prompt_seed)
    print(json.dumps({k: metrics[k] for k in ("all", "train_combos", "heldout_combos", "seconds_generating")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
