"""The ``microcinema`` command line.

Every subcommand validates its input up front and reports a problem as one line on stderr with exit
status 2 (see :mod:`microcinema.core.errors`); no traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from microcinema.core.errors import MicroCinemaError

DESCRIPTION = """\
MicroCinema: text-to-video generation with diffusion models.

  data synth   write procedural text-video clips (video files + a caption table with ground truth)
  data grid    write a PNG grid of clips from a caption table, to look at a data set
  generate     text to video: key frame, image&text-to-video, x4 interpolation (MicroCinema)
  animate      your image + text to video (MicroCinema stage two on your key frame)
  image        stage one: a key frame from text (embedded tiny model, or any diffusers pipeline)
  train        train a model of the embedded family (vae, t2i, video, interp) with the shared trainer
  eval         benchmark a pipeline: the procedural domain (shapes), UCF-101 (FVD, IS), MSR-VTT (CLIPSIM, FID)
  fewshot      few-shot motion tuning: train a small adapter on 8-16 clips of one motion, generate with it
  artv         long multi-prompt video, one frame at a time (ART-V), written to the file as it is made

Every command has its own --help with examples. Nothing is downloaded: models come from a local path
(or a hub id you have cached), and the embedded tiny models ship inside the package.
"""

DATA_SYNTH_EXAMPLES = """\
examples:
  microcinema data synth --out data/shapes --num 200
      200 clips of 33 frames at 8 fps (4 s each), 64x64, the training split, seed 0
  microcinema data synth --out data/heldout --num 100 --split heldout
      clips of the held-out (colour, object, motion) combinations only, to test composition
  microcinema data synth --out data/base --num 50 --frames 9 --fps 2
      MicroCinema's base-model format directly: 9 frames at 2 fps

The output folder gets clips/*.mp4 (H.264), captions.jsonl (one row per clip: file, caption, object,
colour, background, motion, per-frame centers and sizes), dataset.json (the settings) and preview.png.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage mistake in one line (plus a pointer to --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(name: str, minimum: int = 1) -> Callable[[str], int]:
    """argparse type: an integer >= ``minimum``; errors say ``{name} must be an integer >= {minimum}``.
    Shared by the systems' subcommands (``microcinema fewshot``, ``microcinema artv``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{name} must be an integer >= {minimum}, got {value}")
        return value

    return parse


def float_arg(name: str, allowed: str, is_allowed: Callable[[float], bool]) -> Callable[[str], float]:
    """argparse type: a number for which ``is_allowed`` holds; errors say ``{name} must be {allowed}``."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be {allowed}, got {text!r}") from None
        if not is_allowed(value):
            raise argparse.ArgumentTypeError(f"{name} must be {allowed}, got {text}")
        return value

    return parse


def _fraction(name: str) -> Callable[[str], float]:
    """argparse type: a number from 0 to 1."""
    return float_arg(name, "a number from 0 to 1", lambda value: 0 <= value <= 1)


def _positive_float(name: str) -> Callable[[str], float]:
    return float_arg(name, "a positive number", lambda value: value > 0 and value != float("inf"))


def _add_data_commands(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="make and inspect data sets", description="Make and inspect data sets.")
    data_sub = data.add_subparsers(dest="data_command", metavar="{synth,grid}", parser_class=_Parser)
    data_sub.required = True

    synth = data_sub.add_parser(
        "synth", help="write procedural text-video clips", epilog=DATA_SYNTH_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Write clips of the procedural domain (DESIGN.md section 4): one shape or handwritten digit, "
                    "one colour, a plain background, one of seven motions, a varied caption and exact ground truth.",
    )
    synth.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    synth.add_argument("--num", required=True, type=positive_int("--num"), help="number of clips (>= 1)")
    synth.add_argument("--frames", type=positive_int("--frames"), default=33, help="frames per clip (default 33)")
    synth.add_argument("--fps", type=_positive_float("--fps"), default=8.0, help="frames per second (default 8)")
    synth.add_argument("--size", type=positive_int("--size", 16), default=64,
                       help="frame width and height in pixels, even, >= 16 (default 64)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same clips (default 0)")
    synth.add_argument("--split", choices=["train", "heldout"], default="train",
                       help="train: every combination but the held-out ones; heldout: only those (default train)")
    synth.add_argument("--crf", type=int, default=None,
                       help="H.264 quality, 0 (lossless) to 51; default: the library's dataset setting")
    synth.set_defaults(func=_cmd_data_synth)

    grid = data_sub.add_parser(
        "grid", help="write a PNG grid of clips from a caption table",
        description="Read the first clips of a caption table (captions.jsonl, a JSONL or WebVid-style CSV) and "
                    "write one row of frames per clip, captioned, to a PNG.",
    )
    grid.add_argument("table", type=Path, help="caption table, or a folder holding captions.jsonl")
    grid.add_argument("--out", required=True, type=Path, help="PNG file to write")
    grid.add_argument("--num", type=positive_int("--num"), default=8, help="clips to show (default 8)")
    grid.add_argument("--frames", type=positive_int("--frames"), default=9, help="frames per row (default 9)")
    grid.add_argument("--fps", type=_positive_float("--fps"), default=2.0, help="sampling rate of the row (default 2)")
    grid.set_defaults(func=_cmd_data_grid)


def _cmd_data_synth(args: argparse.Namespace) -> None:
    from microcinema.data.synthetic_dataset import write_synthetic_dataset

    kwargs = {} if args.crf is None else {"crf": args.crf}
    table = write_synthetic_dataset(args.out, num=args.num, num_frames=args.frames, fps=args.fps, size=args.size,
                                    seed=args.seed, split=args.split, **kwargs)
    print(f"wrote {args.num} clips, caption table {table}, preview {table.parent / 'preview.png'}")


def _cmd_data_grid(args: argparse.Namespace) -> None:
    from microcinema.data.preview import write_table_grid

    path = write_table_grid(args.table, args.out, num=args.num, num_frames=args.frames, fps=args.fps)
    print(f"wrote {path}")


TRAIN_EXAMPLES = """\
examples:
  microcinema train vae --config vae --output-dir runs/vae --export microcinema/embedded/weights/vae
  microcinema train t2i --config t2i --output-dir runs/t2i --export microcinema/embedded/weights/t2i
  microcinema train t2i --config my_t2i.yaml --output-dir runs/t2i-big --max-steps 20000
  microcinema train video --config video --output-dir runs/video --export microcinema/embedded/weights/video
      every phase of the shipped base model in order (a finished phase is skipped on restart)
  accelerate launch --multi_gpu --num_processes 8 -m microcinema.cli train video --config sd_webvid.yaml
      real videos (data: type captions or webdataset) from an SD folder (init_from): each process encodes and
      trains on its own share and records the sample keys it saw in OUTPUT_DIR/samples_seen/rank_<r>.json

A run resumes from the newest checkpoint in --output-dir (kill it any time). It writes loss.jsonl
(plot it with --plot), checkpoints/ and final/ (EMA weights); --export also writes fp16 safetensors and
training.json (the command, config and evaluation numbers) to the folder given.
Configs are strict: a misspelled key is an error naming it (see microcinema/training/config.py).
Several processes: accelerate launch --multi_gpu --num_processes N -m microcinema.cli train ... (on a machine
with no GPU the processes form a CPU group).
"""


def _add_train_command(subparsers: argparse._SubParsersAction) -> None:
    from microcinema.training.tasks import TASKS

    train = subparsers.add_parser(
        "train", help="train a model of the embedded family", epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train a model with the shared accelerate trainer. Tasks: "
                    + "; ".join(f"{name}: {what}" for name, (_, what) in TASKS.items()),
    )
    train.add_argument("task", choices=list(TASKS), help="what to train")
    train.add_argument("--config", required=True,
                       help="a YAML config, or the name of a shipped one (" + ", ".join(TASKS) + ")")
    train.add_argument("--output-dir", type=Path, default=None, help="run folder (default runs/TASK)")
    train.add_argument("--export", type=Path, default=None, help="also write fp16 weights + training.json here")
    train.add_argument("--max-steps", type=positive_int("--max-steps"), default=None, help="override the config")
    train.add_argument("--batch-size", type=positive_int("--batch-size"), default=None, help="override the config")
    train.add_argument("--plot", action="store_true", help="write loss.png (and probe.png, when the config has a probe) in the run folder at the end")
    train.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> None:
    import json

    from microcinema.training.tasks import run_task
    from microcinema.training.common import load_config
    from microcinema.training.trainer import PROBE_NAME, plot_loss, plot_probe

    config = load_config(args.config)
    output_dir = args.output_dir or Path("runs") / args.task
    report = run_task(args.task, config, str(output_dir), export=args.export, command=args.command_line,
                      max_steps=args.max_steps, batch_size=args.batch_size)
    if args.plot:
        plot_loss(Path(output_dir) / "loss.jsonl", Path(output_dir) / "loss.png")
        if (Path(output_dir) / PROBE_NAME).is_file():
            plot_probe(Path(output_dir) / PROBE_NAME, Path(output_dir) / "probe.png")
    print(json.dumps(report, indent=2, default=str))


IMAGE_EXAMPLES = """\
examples:
  microcinema image "a red circle moving left" --out key.png
      the embedded tiny text-to-image model (64x64, procedural domain), offline
  microcinema image "a cat on a sofa" --out key.png --model ./stable-diffusion-2-1 --size 320
      any diffusers text-to-image pipeline, by local folder or hub id (cached), fitted to --size
"""


def _add_image_command(subparsers: argparse._SubParsersAction) -> None:
    image = subparsers.add_parser(
        "image", help="stage one: text to key frame", epilog=IMAGE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate a key frame from a prompt (MicroCinema stage one). The video stage animates it.",
    )
    image.add_argument("prompt", help="what to show, e.g. 'a red circle moving left'")
    image.add_argument("--out", required=True, type=Path, help="PNG file to write")
    image.add_argument("--model", default=None,
                       help="'embedded' (default), a MicroCinema or diffusers pipeline folder, or a hub id")
    image.add_argument("--steps", type=positive_int("--steps"), default=25, help="sampling steps (default 25)")
    image.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    image.add_argument("--guidance-scale", type=float, default=None,
                       help="classifier-free guidance (>= 0; default: the model's own)")
    image.add_argument("--size", type=positive_int("--size", 8), default=64,
                       help="output size in pixels (default 64, the embedded models' size)")
    image.set_defaults(func=_cmd_image)


def _cmd_image(args: argparse.Namespace) -> None:
    from microcinema.core.errors import check
    from microcinema.pipelines.key_frame import generate_key_frames
    from microcinema.pipelines.text_to_image import to_output

    check(args.out.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"), f"--out must be a .png, .jpg or .webp file, got {args.out}")
    frames = generate_key_frames(args.prompt, model=args.model, size=args.size, num_inference_steps=args.steps,
                                 guidance_scale=args.guidance_scale, seed=args.seed)
    _save_image(to_output(frames, "pil")[0], args.out)
    print(f"wrote {args.out}")


def _save_image(image, out: Path) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        image.save(out)
    except OSError as error:
        raise MicroCinemaError(f"cannot write {out}: {error.strerror or error}") from None


GENERATE_EXAMPLES = """\
examples:
  microcinema generate "a red circle moving left" --out video.mp4
      the embedded tiny models, offline: key frame -> 9 frames at 2 fps -> 33 frames at 8 fps
  microcinema generate "a green star growing" --out video.gif --no-interpolate --steps 10
  microcinema generate "a cat walking" --out cat.mp4 --model ./my-microcinema --key-frame-model ./sd-2-1
"""

ANIMATE_EXAMPLES = """\
examples:
  microcinema animate key.png "a red circle moving left" --out video.mp4
      the image is resized and centre-cropped to the model's size (64x64 for the embedded models)
"""


def _add_video_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="video file to write: .mp4 or .gif")
    parser.add_argument("--model", default=None, help="a MicroCinema pipeline folder (default: the embedded models)")
    parser.add_argument("--frames", type=int, default=9, help="base frames at 2 fps, odd, 3-17 (default 9)")
    parser.add_argument("--steps", type=positive_int("--steps"), default=None,
                        help="the base model's sampling steps (default: the model's; the embedded one: 10, "
                             "DPM-Solver++(2M))")
    parser.add_argument("--key-frame-steps", type=positive_int("--key-frame-steps"), default=None,
                        help="stage one's steps (default: the model's; the embedded one: 25)")
    parser.add_argument("--interp-steps", type=positive_int("--interp-steps"), default=None,
                        help="the x4 interpolation's steps (default: the model's; the embedded one: 8)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="text guidance (>= 0; default: the model's)")
    parser.add_argument("--negative-prompt", default=None,
                        help="what the text guidance steers away from (default: the empty prompt)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-interpolate", action="store_true", help="keep the 2 fps base frames (no x4 interpolation)")
    parser.add_argument("--no-pin-key-frame", action="store_true",
                        help="let the model redraw the key frame too (the paper's sampling; default: the key frame is "
                             "kept exactly as the centre frame, microcinema.core.replacement)")
    parser.add_argument("--no-anchor-palette", action="store_true",
                        help="let the interpolation model choose the in-between frames' colours (default: the "
                             "model's saved interp_anchor_means: on for the embedded models, where each in-between "
                             "frame's mean is kept at the mean of its two neighbours, "
                             "replacement.mean_anchor_eps_model; off in a model saved with the class defaults)")
    parser.add_argument("--refine-strength", type=_fraction("--refine-strength"), default=None,
                        help="key-frame refinement of the base and in-between frames: the fraction of the steps "
                             "re-run from the key frame warped onto each frame's object (0 turns it off; default: the "
                             "model's, 0.3 for the embedded one; microcinema.systems.microcinema.keyframe_refine)")
    parser.add_argument("--grid", type=Path, default=None, help="also write a PNG grid of the frames")


def _add_generate_commands(subparsers: argparse._SubParsersAction) -> None:
    generate = subparsers.add_parser(
        "generate", help="text to video", epilog=GENERATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="MicroCinema text-to-video: a key frame from a text-to-image model, then image&text-to-video "
                    "with AppearNet and the Appearance Noise Prior, then x4 temporal interpolation.")
    generate.add_argument("prompt", help="what should happen, e.g. 'a red circle moving left'")
    _add_video_arguments(generate)
    generate.add_argument("--key-frame-model", default=None,
                          help="stage one: 'embedded' (the embedded text-to-image model), a MicroCinema t2i folder, a "
                               "diffusers pipeline or hub id (default: the model's own: its key_frame_unet, as the "
                               "embedded models and from_stable_diffusion have, or a t2i/ folder beside it; a model "
                               "with neither needs this option, or use 'microcinema animate')")
    generate.add_argument("--save-key-frame", type=Path, default=None, help="also write the key frame as PNG")
    generate.set_defaults(func=_cmd_generate, image=None)

    animate = subparsers.add_parser(
        "animate", help="your image + text to video", epilog=ANIMATE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Animate your own key frame (it becomes the centre frame) as the text says.")
    animate.add_argument("image", type=Path, help="the key frame: PNG, JPEG, ... (grey and RGBA are converted)")
    animate.add_argument("prompt", help="what should happen, e.g. 'a red circle moving left'")
    _add_video_arguments(animate)
    animate.set_defaults(func=_cmd_generate, key_frame_model=None, save_key_frame=None)


def _cmd_generate(args: argparse.Namespace) -> None:
    import torch

    from microcinema.core.errors import check
    from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
    from microcinema.pipelines.text_to_image import check_prompts, to_output
    from microcinema.core.video_io import save_grid, write_video

    check(args.out.suffix.lower() in (".mp4", ".gif"), f"--out must end in .mp4 or .gif, got {args.out}")
    check_prompts(args.prompt)
    pipeline = (MicroCinemaPipeline.embedded(key_frame_model=args.key_frame_model) if args.model is None
                else MicroCinemaPipeline.from_pretrained(args.model, key_frame_model=args.key_frame_model))
    pipeline.check_num_frames(args.frames)
    # latents, then this project's uint8 rounding (pipeline.decode_to_uint8): the same files as before the
    # pipeline became a diffusers one (whose "np" output is floats in [0, 1])
    out = pipeline(args.prompt, image=args.image, negative_prompt=args.negative_prompt, num_frames=args.frames,
                   num_inference_steps=args.steps,
                   key_frame_num_inference_steps=args.key_frame_steps, interp_num_inference_steps=args.interp_steps,
                   guidance_scale=args.guidance_scale, generator=torch.Generator().manual_seed(args.seed),
                   interpolate=not args.no_interpolate, pin_key_frame=False if args.no_pin_key_frame else None,
                   interp_anchor_means=False if args.no_anchor_palette else None,
                   refine_strength=args.refine_strength, output_type="latent")
    for note in out.notes:
        print(f"microcinema: note: your image was {note}", file=sys.stderr)
    frames = pipeline.decode_to_uint8(out.frames)[0]
    write_video(args.out, frames, out.fps)
    if args.grid:
        save_grid(args.grid, [frames], captions=[args.prompt])
    if args.save_key_frame:
        _save_image(to_output(out.key_frames[:1], "pil")[0], args.save_key_frame)
    print(f"wrote {args.out} ({len(frames)} frames at {out.fps:g} fps)")


EVAL_EXAMPLES = """\
examples:
  microcinema eval --benchmark shapes --num-samples 100 --out runs/eval_shapes
      the embedded pipeline end to end on domain prompts with ground truth: judge accuracies, appearance
      (PSNR vs key frame), warping error, domain FVD; metrics.json, report.md, grid.png, motion_accuracy.png
  microcinema eval --benchmark shapes --num-samples 100 --out runs/eval_truth --key-frames truth --no-interpolate
      stage two alone: the rendered centre frames are the key frames
  microcinema eval --benchmark ucf101 --num-samples 2048 --out runs/ucf --model ./my-microcinema \\
      --data ./UCF-101 --i3d-weights rgb_imagenet.pt --inception-weights pt_inception-2015-12-05-6726825d.pth
      prompts "a video of <class name>" over the 101 classes in turn; FVD (16 frames) and IS
  microcinema eval --benchmark msrvtt --num-samples 2990 --out runs/msrvtt --captions test_videodatainfo.json \\
      --clip-model ./clip-vit-base-patch32 [--data ./MSRVTT/videos --inception-weights pt_inception.pth]
      CLIPSIM on the captions (JSON, JSONL, CSV or TXT); FID with the real videos and Inception weights
  microcinema eval --benchmark longvideo --num-samples 50 --out runs/longvideo --model ./my-artv
      drift of 64-frame, 4-prompt videos made by an ART-V pipeline folder (default: the embedded ART-V model);
      --truth measures the rendered ground truth instead (the sanity run)

Nothing is downloaded: weights and data come from the paths given.
"""


def _add_eval_command(subparsers: argparse._SubParsersAction) -> None:
    ev = subparsers.add_parser(
        "eval", help="benchmark a MicroCinema pipeline", epilog=EVAL_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Generate videos for a benchmark's prompts and measure them (DESIGN.md section 5; paper "
                    "section 4). Writes metrics.json, report.md and a sample grid to --out.")
    ev.add_argument("--benchmark", required=True, choices=["shapes", "ucf101", "msrvtt", "longvideo"],
                    help="what to measure")
    ev.add_argument("--num-samples", required=True, type=positive_int("--num-samples"), help="videos to generate (>= 1)")
    ev.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    ev.add_argument("--model", default=None, help="a MicroCinema pipeline folder (default: the embedded models)")
    ev.add_argument("--steps", type=positive_int("--steps"), default=None,
                    help="sampling steps (default 25; longvideo: the ART-V model's own)")
    ev.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ev.add_argument("--batch-size", type=positive_int("--batch-size"), default=8, help="videos per batch (default 8)")
    ev.add_argument("--no-interpolate", action="store_true", help="keep the 2 fps base frames (no x4 interpolation)")
    ev.add_argument("--key-frames", choices=["generate", "truth"], default="generate",
                    help="shapes: key frames from stage one (default) or the rendered ground truth (stage two alone); "
                         "longvideo: frame 0 from the ART-V model itself (text-only mode, default) or the ground "
                         "truth's (image mode: the auto-regressive model alone)")
    ev.add_argument("--i3d-weights", type=Path, default=None, help="I3D Kinetics-400 state dict, for FVD")
    ev.add_argument("--inception-weights", type=Path, default=None, help="pytorch-fid Inception state dict, for FID/IS")
    ev.add_argument("--clip-model", type=Path, default=None, help="local CLIP model folder, for CLIPSIM/CLIP-Temp")
    ev.add_argument("--data", type=Path, default=None,
                    help="real videos (a folder of video files or a .csv/.jsonl caption table), for FVD/FID")
    ev.add_argument("--captions", type=Path, default=None, help="msrvtt: caption file (.json, .jsonl, .csv, .txt)")
    ev.add_argument("--domain-classifier", type=Path, default=None,
                    help="shapes: domain classifier folder for the domain FVD (default: the shipped one)")
    ev.add_argument("--truth", action="store_true",
                    help="longvideo: measure the rendered ground truth (the sanity run) instead of a model")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> None:
    from microcinema.eval.benchmarks import EvalOptions, run_benchmark

    if args.truth and args.benchmark != "longvideo":
        raise MicroCinemaError("--truth is only for --benchmark longvideo")
    if args.benchmark == "longvideo":  # multi-prompt drift (microcinema/eval/longvideo.py)
        from microcinema.eval.longvideo import run_from_cli

        run_from_cli(args.num_samples, args.out, truth=args.truth, model=args.model, seed=args.seed,
                     feature_model=args.clip_model, command=args.command_line, steps=args.steps,
                     first_frame="truth" if args.key_frames == "truth" else "model")
        print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.md'}")
        return

    opts = EvalOptions(
        benchmark=args.benchmark, num_samples=args.num_samples, out=args.out, model=args.model,
        steps=25 if args.steps is None else args.steps,
        seed=args.seed, interpolate=not args.no_interpolate, key_frames=args.key_frames, batch_size=args.batch_size,
        i3d_weights=args.i3d_weights, inception_weights=args.inception_weights, clip_model=args.clip_model,
        data=args.data, captions=args.captions, domain_classifier=args.domain_classifier, command=args.command_line)
    metrics = run_benchmark(opts)
    for note in metrics["notes"]:
        print(f"microcinema: note: {note}", file=sys.stderr)
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'report.md'}")


UI_EXAMPLES = """\
examples:
  microcinema ui
      the embedded models at http://127.0.0.1:7860 (offline); open it in a browser
  microcinema ui --host 0.0.0.0 --port 8080 --model ./my-microcinema --outputs ~/microcinema-runs
      your own MicroCinema pipeline folder, reachable from other machines, runs kept in ~/microcinema-runs
"""


def _add_ui_command(subparsers: argparse._SubParsersAction) -> None:
    ui = subparsers.add_parser(
        "ui", help="the web UI (gradio): all three systems in a browser", epilog=UI_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="A web page with one tab per system (MicroCinema, ART-V, few-shot tuning) and a gallery of "
                    "past runs with their settings and seeds. One job runs at a time; others wait in a capped "
                    "queue. Needs the 'ui' extra: pip install 'microcinema[ui]'.")
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    ui.add_argument("--port", type=positive_int("--port"), default=7860, help="port (default 7860)")
    ui.add_argument("--model", default=None, help="a MicroCinema pipeline folder (default: the embedded models)")
    ui.add_argument("--artv-model", default=None, help="an ART-V pipeline folder (default: the embedded model)")
    ui.add_argument("--fewshot-base", default="embedded",
                    help="the base few-shot tuning inflates: 'embedded' or a Stable Diffusion folder")
    ui.add_argument("--outputs", type=Path, default=Path("microcinema_ui"),
                    help="folder for past runs and adapters (default ./microcinema_ui)")
    ui.add_argument("--max-queue", type=positive_int("--max-queue"), default=4,
                    help="requests that may wait while one runs (default 4); more are told the queue is full")
    ui.add_argument("--open", action="store_true", help="open the page in the default browser")
    ui.set_defaults(func=_cmd_ui)


def _cmd_ui(args: argparse.Namespace) -> None:
    from microcinema.core.errors import first_line
    from microcinema.ui.app import launch
    from microcinema.ui.backend import Studio

    studio = Studio(outputs=args.outputs, model=args.model, artv_model=args.artv_model,
                    fewshot_base=args.fewshot_base)
    print(f"microcinema ui: http://{args.host}:{args.port} (runs in {args.outputs}); Ctrl+C stops it")
    try:
        launch(studio, host=args.host, port=args.port, max_queue=args.max_queue, open_browser=args.open)
    except OSError as error:  # the port is taken, or the address is not this machine's
        raise MicroCinemaError(f"cannot serve on {args.host}:{args.port} ({first_line(error)}); choose another "
                               "--port") from None


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="microcinema", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    from microcinema import __version__

    parser.add_argument("--version", action="version", version=f"microcinema {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    _add_data_commands(subparsers)
    _add_generate_commands(subparsers)
    _add_image_command(subparsers)
    _add_train_command(subparsers)
    _add_eval_command(subparsers)
    from microcinema.systems.fewshot.cli import add_fewshot_command

    add_fewshot_command(subparsers)
    from microcinema.systems.artv.cli import add_artv_command

    add_artv_command(subparsers)
    _add_ui_command(subparsers)
    return parser


def _show_one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"microcinema: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    import warnings

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.command_line = " ".join(["microcinema", *argv])
    try:
        with warnings.catch_warnings():  # restores the caller's warning display when the command ends
            warnings.showwarning = _show_one_line_warning
            args.func(args)
    except MicroCinemaError as error:
        print(f"microcinema: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("microcinema: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
