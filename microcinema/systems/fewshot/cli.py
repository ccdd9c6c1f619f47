"""``microcinema fewshot``: tune a motion adapter on a few clips, generate with it, make procedural tuning clips.

Registered by :func:`add_fewshot_command` in :mod:`microcinema.cli`; heavy imports happen inside the commands.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from microcinema.cli import float_arg, positive_int

# The library's choices, spelled here so that building the parser imports no torch/diffusers (a test checks them
# against inflation.ATTENTION_KINDS, structured_noise.NOISE_KINDS and DEFAULT_ALPHA).
ATTENTION_KINDS = ("recurrent", "sparse-causal")
NOISE_KINDS = ("independent", "shared", "autoregressive")
DEFAULT_ALPHA = 0.2

FEWSHOT_EXAMPLES = """\
examples:
  microcinema fewshot data --motion bounce --num 12 --out data/bounce --colours red,blue --objects circle,square
      12 procedural clips of a motion the embedded models never saw (bounce, circling, zigzag, diagonal)
  microcinema fewshot train --data data/bounce/captions.jsonl --out adapters/bounce.safetensors --steps 300
      tune the embedded text-to-image model (recurrent causal attention, auto-regressive noise); kill it and run
      the same line again to resume; adapters/bounce_run/ holds checkpoints, loss.jsonl and loss.png
  microcinema fewshot train --data my_clips/ --caption "a dog jumping" --out dog.safetensors --base ./sd-2-1
      a folder of your own videos with one caption, on a Stable Diffusion folder
  microcinema fewshot train --data clips.csv --out a.safetensors --base ./sd-2-1 --dry-run
      check data, base and settings on a CPU and print the memory estimate before renting a GPU
  microcinema fewshot generate adapters/bounce.safetensors "a green star bouncing" --out star.mp4 --compare
      also writes star_compare.mp4 and star_compare.png: tuned (left/top) next to the untuned base, same seed
  microcinema fewshot evaluate adapters/bounce.safetensors --data data/bounce/captions.jsonl --out eval/bounce
      30 videos of the taught motion for colours and objects not in the tuning clips, and the untuned base with
      the same prompts and seeds: motion right, colour/object kept, warping error, motion fidelity
      (metrics.json, report.md, samples.png, samples.gif); --clip ./clip-vit-base-patch32 adds CLIP scores
"""


def _size(text: str) -> tuple[int, int]:
    try:
        parts = [int(p) for p in text.lower().replace("x", " ").split()]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW pixels, got {text!r}")
    return (parts[0], parts[-1])


def _subcommand(sub: argparse._SubParsersAction, name: str, help: str, description: str) -> argparse.ArgumentParser:
    """The parser of ``fewshot`` or one of its subcommands, with the shared examples as its epilog."""
    return sub.add_parser(name, help=help, description=description, epilog=FEWSHOT_EXAMPLES,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def _add_clip_arguments(parser: argparse.ArgumentParser, *, frames: int, min_frames: int, fps: float,
                        fps_help: str) -> None:
    """``--frames`` and ``--fps`` of the clips (``train`` reads them, ``data`` writes them)."""
    parser.add_argument("--frames", type=positive_int("--frames", min_frames), default=frames,
                        help=f"frames per clip (default {frames})")
    parser.add_argument("--fps", type=float_arg("--fps", "a positive number", lambda v: v > 0), default=fps,
                        help=fps_help)


def _add_filter_arguments(parser: argparse.ArgumentParser, purpose: str, colours_default: str,
                          objects_default: str) -> None:
    """``--colours`` and ``--objects``: comma-separated lists of the procedural domain's (``data``, ``evaluate``)."""
    parser.add_argument("--colours", default=None, help=f"comma-separated colours {purpose} ({colours_default})")
    parser.add_argument("--objects", default=None, help=f"comma-separated objects {purpose} ({objects_default})")


def _add_adapter_arguments(parser: argparse.ArgumentParser, out_help: str) -> None:
    """The adapter, where to write, and the base it goes on (``generate``, ``evaluate``)."""
    parser.add_argument("adapter", type=Path, help="adapter file written by 'microcinema fewshot train'")
    parser.add_argument("--out", required=True, type=Path, help=out_help)
    parser.add_argument("--base", default=None, help="the base model (default: the one the adapter names)")


def _add_sampling_arguments(parser: argparse.ArgumentParser, frames_help: str, guidance_help: str) -> None:
    """Steps, frames and guidance of sampling with an adapter (``generate``, ``evaluate``)."""
    parser.add_argument("--steps", type=positive_int("--steps"), default=50, help="sampling steps (default 50)")
    parser.add_argument("--frames", type=positive_int("--frames"), default=None, help=frames_help)
    parser.add_argument("--guidance-scale", type=float_arg("--guidance-scale", "a number >= 0", lambda v: v >= 0),
                        default=None, help=guidance_help)


def add_fewshot_command(subparsers: argparse._SubParsersAction) -> None:
    """Add ``fewshot {train,generate,data,evaluate}`` to the ``microcinema`` parser."""
    parser_class = subparsers._parser_class  # the main parser's one-line-error class
    fewshot = _subcommand(
        subparsers, "fewshot", "few-shot motion tuning: teach a model a motion from 8-16 clips",
        "Few-shot motion tuning (recurrent few-shot paper): inflate a text-to-image U-Net to video "
        "(sparse-causal or recurrent causal attention, temporal attention), tune only the paper's "
        "parameters on a few clips of one motion, save them as a small adapter file, generate with it.")
    sub = fewshot.add_subparsers(dest="fewshot_command", metavar="{train,generate,data,evaluate}",
                                 parser_class=parser_class)
    sub.required = True

    train = _subcommand(
        sub, "train", "tune an adapter on 8-16 clips of one motion",
        "Tune the paper's parameters (W_Q of the spatio-temporal and cross attention, the memory's W_hh, "
        "W_zh, b_h, the temporal attention) on a few clips of one motion with the shared trainer; save them "
        "as a safetensors adapter with its metadata. Prints the trainable count and a memory estimate first; "
        "the same --out resumes a killed run. Defaults are the paper's (section 4.1).")
    train.add_argument("--data", required=True, type=Path,
                       help="caption table (JSONL {\"file\", \"text\"} or WebVid CSV) or a folder of videos (+ --caption)")
    train.add_argument("--out", required=True, type=Path, help="adapter file to write (.safetensors)")
    train.add_argument("--caption", default=None, help="the caption of every clip (required for a folder of videos)")
    train.add_argument("--base", default="embedded",
                       help="'embedded' (the embedded 64x64 text-to-image model, default), a Stable Diffusion pipeline "
                            "folder or a MicroCinema text-to-image folder")
    train.add_argument("--attention", choices=list(ATTENTION_KINDS), default="recurrent",
                       help="recurrent causal attention (the paper's, default) or sparse-causal (Tune-A-Video)")
    train.add_argument("--steps", type=positive_int("--steps"), default=16000,
                       help="training steps (default 16000, the paper's; raise it and rerun to continue a run)")
    _add_clip_arguments(train, frames=8, min_frames=2, fps=2.0,
                        fps_help="frames per second sampled from the start of each clip (default 2)")
    train.add_argument("--size", type=_size, default=None, help="N or HxW pixels (default: the base's size)")
    train.add_argument("--noise", choices=list(NOISE_KINDS), default="independent",
                       help="noise prior for training and sampling: independent (default), or the structured priors of "
                            "section 3.3, shared (LAMP) or autoregressive (the paper's proposal; its section 4.3 "
                            "finds no clear winner)")
    train.add_argument("--noise-alpha", type=float_arg("--noise-alpha", "a number from 0 to 1", lambda v: 0 <= v <= 1),
                       default=DEFAULT_ALPHA, help=f"the prior's correlation parameter (default {DEFAULT_ALPHA})")
    train.add_argument("--lr", type=float_arg("--lr", "a positive number", lambda v: v > 0), default=3e-5,
                       help="learning rate (default 3e-5, linear decay after a warm-up of a tenth of the steps)")
    train.add_argument("--batch-size", type=positive_int("--batch-size"), default=1, help="clips per step (default 1)")
    train.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    train.add_argument("--ema", type=float_arg("--ema", "a number in [0, 1)", lambda v: 0 <= v < 1), default=None,
                       help="EMA decay of the trained parameters (default: off, as the paper)")
    train.add_argument("--checkpoint-every", type=positive_int("--checkpoint-every"), default=500,
                       help="steps between checkpoints (default 500)")
    train.add_argument("--log-every", type=positive_int("--log-every"), default=10,
                       help="steps per loss.jsonl line (mean over them; default 10)")
    train.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no",
                       help="accelerate's mixed precision on a GPU (default no)")
    train.add_argument("--gradient-checkpointing", action="store_true", help="trade compute for activation memory")
    train.add_argument("--dry-run", action="store_true",
                       help="check data, base and settings and print the memory estimate; train nothing")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an existing --out (and its run folder) made with other settings")
    train.set_defaults(func=_cmd_train)

    generate = _subcommand(
        sub, "generate", "text to video with an adapter",
        "Load an adapter onto its base model and generate a video; the initial noise is the adapter's "
        "structured prior. --compare adds the untuned base (the inflated base with fresh adapter "
        "parameters: Tune-A-Video's starting point) with the same seed, side by side.")
    _add_adapter_arguments(generate, "video file to write: .mp4 or .gif")
    generate.add_argument("prompt", help="what to show, e.g. 'a green star bouncing'")
    generate.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_sampling_arguments(generate, "frames to generate (default: the adapter's)",
                            "classifier-free guidance (default 12.5, the paper's)")
    generate.add_argument("--negative-prompt", default=None, help="the unconditional branch of guidance")
    generate.add_argument("--compare", action="store_true",
                          help="also write OUT_compare.(mp4|gif) and OUT_compare.png: tuned next to the untuned base")
    generate.set_defaults(func=_cmd_generate)

    data = _subcommand(
        sub, "data", "write procedural tuning clips of a new motion",
        "Write clips of one motion the embedded family never saw (bounce, circling, zigzag, diagonal; "
        "microcinema.data.synthetic.FEWSHOT_MOTIONS) with captions and ground-truth trajectories.")
    from microcinema.data.synthetic import FEWSHOT_MOTIONS

    data.add_argument("--motion", required=True, choices=list(FEWSHOT_MOTIONS), help="the motion")
    data.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    data.add_argument("--num", type=positive_int("--num"), default=12, help="clips (default 12)")
    _add_clip_arguments(data, frames=33, min_frames=1, fps=8.0, fps_help="frames per second (default 8: 4 s clips)")
    data.add_argument("--size", type=positive_int("--size", 16), default=64, help="frame size in pixels (default 64)")
    data.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    _add_filter_arguments(data, "to draw from", "default all", "default all")
    data.set_defaults(func=_cmd_data)

    evaluate = _subcommand(
        sub, "evaluate", "evaluate an adapter against the untuned base",
        "Generate with an adapter and with the untuned base (same prompts and seeds) and measure them "
        "(recurrent few-shot paper, section 4): on the procedural domain, videos of the taught motion for "
        "colours and objects not in the tuning clips, judged from the pixels (motion right and motion "
        "fidelity, colour and object kept in every frame); warping error; the flow-statistics distance "
        "to the tuning clips (--data); CLIP score and CLIP-Temp (--clip). Writes metrics.json, "
        "report.md, samples.png, samples.gif and videos/ under --out.")
    _add_adapter_arguments(evaluate, "output folder (created if missing)")
    evaluate.add_argument("--data", type=Path, default=None,
                          help="the tuning clips (caption table or folder): held-out colours/objects and the "
                               "flow-statistics reference")
    evaluate.add_argument("--motion", choices=list(FEWSHOT_MOTIONS), default=None,
                          help="the taught motion (default: the one of the --data table's clips)")
    evaluate.add_argument("--prompts", type=Path, default=None,
                          help="a text file of prompts, one a line, instead of domain prompts (real videos)")
    evaluate.add_argument("--num-videos", type=positive_int("--num-videos"), default=30,
                          help="domain videos (default 30)")
    _add_filter_arguments(evaluate, "to evaluate", "default: those not in the tuning clips",
                          "default: the shapes not in the tuning clips")
    _add_sampling_arguments(evaluate, "frames per video (default: the adapter's)",
                            "classifier-free guidance (default the pipeline's, 12.5)")
    evaluate.add_argument("--seed", type=int, default=0, help="first sampling seed (default 0)")
    evaluate.add_argument("--clip", type=Path, default=None, help="a CLIP model folder for CLIP score and CLIP-Temp")
    evaluate.add_argument("--batch-size", type=positive_int("--batch-size"), default=4,
                          help="videos per sampling call (default 4)")
    evaluate.add_argument("--no-base", action="store_true", help="skip the untuned base reference")
    evaluate.set_defaults(func=_cmd_evaluate)


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _cmd_data(args: argparse.Namespace) -> None:
    from microcinema.systems.fewshot.data import write_fewshot_clips

    table = write_fewshot_clips(args.out, args.motion, num=args.num, num_frames=args.frames, fps=args.fps,
                                size=args.size, seed=args.seed, colours=_split(args.colours),
                                objects=_split(args.objects))
    print(f"wrote {args.num} {args.motion} clips, caption table {table}, preview {table.parent / 'preview.png'}")


def _cmd_train(args: argparse.Namespace) -> None:
    from microcinema.systems.fewshot.task import FewShotSettings, train_fewshot

    height, width = args.size if args.size is not None else (None, None)
    settings = FewShotSettings(
        data=str(args.data), out=str(args.out), base=args.base, caption=args.caption, attention=args.attention,
        steps=args.steps, num_frames=args.frames, fps=args.fps, height=height, width=width, noise=args.noise,
        noise_alpha=args.noise_alpha, learning_rate=args.lr, batch_size=args.batch_size, seed=args.seed,
        ema_decay=args.ema, checkpoint_every=args.checkpoint_every, log_every=args.log_every, mixed_precision=args.mixed_precision,
        gradient_checkpointing=args.gradient_checkpointing, dry_run=args.dry_run, overwrite=args.overwrite)
    report = train_fewshot(settings)
    if not args.dry_run:
        print(f"wrote {report['adapter']} ({report['adapter_bytes'] / 2**20:.2f} MiB, "
              f"{report['trainable_parameters']:,} parameters, {report['steps']} steps); run folder {report['run_dir']}")
    print(json.dumps({k: v for k, v in report.items() if k != "memory_estimate"}, default=str))


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from microcinema.core.errors import check
    from microcinema.systems.fewshot.evaluate import evaluate_adapter

    prompts = None
    if args.prompts is not None:
        check(args.prompts.is_file(), f"--prompts file not found: {args.prompts}")
        prompts = [line.strip() for line in args.prompts.read_text().splitlines() if line.strip()]
        check(bool(prompts), f"--prompts file {args.prompts} holds no prompt")
    metrics = evaluate_adapter(
        args.adapter, args.out, base=args.base, motion=args.motion, data=args.data, prompts=prompts,
        num_videos=args.num_videos, colours=_split(args.colours), objects=_split(args.objects),
        num_inference_steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed, num_frames=args.frames,
        clip=args.clip, reference_base=not args.no_base, batch_size=args.batch_size)
    print(json.dumps({"tuned": metrics["tuned"], "base": metrics["base"], "targets": metrics.get("targets")},
                     default=str))


def _compare_path(out: Path, suffix: str) -> Path:
    return out.with_name(f"{out.stem}_compare{suffix}")


def _cmd_generate(args: argparse.Namespace) -> None:
    import time

    import torch

    from microcinema.core.errors import check
    from microcinema.core.video_io import save_grid, side_by_side, write_video
    from microcinema.pipelines.text_to_image import check_prompts
    from microcinema.systems.fewshot.pipeline import FewShotPipeline

    check(args.out.suffix.lower() in (".mp4", ".gif"), f"--out must end in .mp4 or .gif, got {args.out}")
    check_prompts(args.prompt)
    pipe = FewShotPipeline.from_adapter(args.adapter, base=args.base)
    kwargs = dict(num_frames=args.frames, num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                  negative_prompt=args.negative_prompt, output_type="latent")
    started = time.time()
    latents = pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed), **kwargs).frames
    frames = pipe.decode_to_uint8(latents)[0]
    seconds = time.time() - started
    write_video(args.out, frames, pipe.fps)
    print(f"wrote {args.out} ({len(frames)} frames at {pipe.fps:g} fps, {seconds:.1f} s)")
    if args.compare:
        with pipe.untuned():
            base_latents = pipe(args.prompt, generator=torch.Generator().manual_seed(args.seed), **kwargs).frames
        base_frames = pipe.decode_to_uint8(base_latents)[0]
        video = write_video(_compare_path(args.out, args.out.suffix), side_by_side([frames, base_frames]), pipe.fps)
        grid = save_grid(_compare_path(args.out, ".png"), [frames, base_frames],
                         captions=[f"tuned ({args.adapter.name}): {args.prompt}",
                                   f"untuned base (fresh adapter parameters), seed {args.seed}"])
        print(f"wrote {video} (tuned left, untuned base right) and {grid}")


if __name__ == "__main__":  # pragma: no cover
    from microcinema.cli import main

    sys.exit(main(["fewshot", *sys.argv[1:]]))
