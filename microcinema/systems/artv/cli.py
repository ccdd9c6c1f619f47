"""``microcinema artv``: long, multi-prompt videos with ART-V, written to the file frame by frame as they are made.

Registered by :func:`add_artv_command` in :mod:`microcinema.cli`; heavy imports happen inside the command.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any, Callable

from microcinema.cli import positive_int

ARTV_EXAMPLES = """\
examples:
  microcinema artv "a red circle moving left" "a red circle moving up" "a red circle moving right" --out long.mp4
      three prompts, 16 frames each (48 frames at 8 fps), the embedded ART-V model; each prompt continues
      from the last frames of the one before, and frames go into long.mp4 as they are made
  microcinema artv "a blue star moving right" --frames-per-prompt 256 --out star.mp4
      one prompt, 256 frames: memory stays flat, however long the video
  microcinema artv "a cat walking" "the cat sits down" --frames-per-prompt 24 8 --image cat.png --out cat.mp4 \\
      --model ./my-artv
      your image is frame 0 (resized and centre-cropped to the model's size); 24 then 8 frames
  microcinema artv "a green square moving up" "a green square moving down" --loop --out loop.mp4
      the last frame returns to the first (drop it to play the video in a loop)
  microcinema artv "a digit 3 moving left" --frames-per-prompt 32 --keyframe 31=end.png --out v.mp4
      frame 31 is end.png; the frames before it are anchored on it (an auto-regressive model cannot see ahead)

How it works (ART-V, Weng et al. 2023): each frame is sampled from the two frames before it, an
anchor frame and the text, with DPM++ 2S ancestral and guidance over references, anchor and text (0.25 /
0.25 / 6.5 by default). Without --image, frame 0 comes from the model itself (text-only mode) or from
--key-frame-model. The anchor of each prompt after the first is the previous prompt's last frame
(--anchor segment, the paper's multi-prompt setting) or always frame 0 (--anchor first).
Nothing is downloaded: --model is a folder written by ARTVPipeline.save_pretrained (default: the embedded
tiny model, trained with `microcinema train artv --config artv --export microcinema/embedded/weights/artv`).
"""

ANCHOR_MODES = ("segment", "first")  # microcinema.systems.artv.segments.ANCHOR_MODES (a test checks)


def _weight(name: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {text!r}") from None
        if not math.isfinite(value) or value < 0:
            raise argparse.ArgumentTypeError(f"{name} must be a number >= 0, got {text}")
        return value

    return parse


def _keyframe(text: str) -> tuple[int, Path]:
    frame, sep, path = text.partition("=")
    try:
        index = int(frame)
    except ValueError:
        index = None
    if not sep or index is None or not path:
        raise argparse.ArgumentTypeError(f"--keyframe must be FRAME=IMAGE (e.g. 31=end.png, -1=end.png), got {text!r}")
    return index, Path(path)


def add_artv_command(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "artv", help="long multi-prompt video, one frame at a time (ART-V)", epilog=ARTV_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="ART-V: auto-regressive text(-and-image)-to-video of any length. Give one prompt per segment; "
                    "the video follows them in order and is written to --out frame by frame as it is made.")
    p.add_argument("prompts", nargs="+", metavar="PROMPT", help="one prompt per segment, in order")
    p.add_argument("--out", required=True, type=Path, help="video file to write: .mp4 (streamed) or .gif")
    p.add_argument("--frames-per-prompt", nargs="+", type=positive_int("--frames-per-prompt", 1), default=None,
                   metavar="N", help="frames per prompt: one number for all, or one per prompt (default: the "
                                     "model's, 16 as the paper)")
    p.add_argument("--image", type=Path, default=None, help="frame 0: your image (PNG, JPEG, ...), resized and "
                                                           "centre-cropped to the model's size")
    p.add_argument("--keyframe", action="append", type=_keyframe, default=[], metavar="FRAME=IMAGE",
                   help="pin a frame to an image (repeatable; negative frames count from the end)")
    p.add_argument("--loop", action="store_true", help="the last frame returns to the first")
    p.add_argument("--anchor", choices=ANCHOR_MODES, default=None,
                   help="anchor of later prompts: the previous prompt's last frame (segment, the paper's) or frame 0 "
                        "(first); default: the model's")
    p.add_argument("--model", default=None, help="an ART-V pipeline folder (default: the embedded tiny model)")
    p.add_argument("--key-frame-model", default=None,
                   help="without --image: frame 0 from a text-to-image model ('embedded', a MicroCinema t2i folder, "
                        "a diffusers folder or hub id) instead of ART-V itself")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--steps", type=positive_int("--steps", 1), default=None,
                   help="sampler steps per frame (default: the model's; the paper's 50)")
    p.add_argument("--guidance-scale", type=_weight("--guidance-scale"), default=None,
                   help="text guidance weight (>= 0; default: the model's, 6.5 as the paper)")
    p.add_argument("--ref-guidance-scale", type=_weight("--ref-guidance-scale"), default=None,
                   help="previous-frames guidance weight (default: the model's, 0.25)")
    p.add_argument("--anchor-guidance-scale", type=_weight("--anchor-guidance-scale"), default=None,
                   help="anchor guidance weight (default: the model's, 0.25)")
    p.add_argument("--ref-noise-level", type=positive_int("--ref-noise-level", 0), default=None,
                   help="noise level of the previous frames and the anchor (default: the model's, 200)")
    p.add_argument("--negative-prompt", default=None, help="what the text guidance steers away from")
    p.add_argument("--height", type=positive_int("--height", 1), default=None, help="frame height in pixels")
    p.add_argument("--width", type=positive_int("--width", 1), default=None, help="frame width in pixels")
    p.add_argument("--fps", type=_weight("--fps"), default=None, help="frame rate of the file (default: the "
                                                                       "model's, 8)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_artv)


class StreamingVideoWriter:
    """Frames appended one at a time to an ``.mp4`` (H.264 through PyAV, as :mod:`microcinema.core.video_io`)
    written under a temporary name and moved into place by :meth:`close`; :meth:`abort` removes it. ``.gif``
    frames are gathered and written at the end (GIF's palette encoder needs them all)."""

    def __init__(self, path: Path, fps: float, crf: int = 18) -> None:
        from microcinema.core.errors import check

        self.path, self.fps, self.crf = Path(path), fps, crf
        self.suffix = self.path.suffix.lower()
        check(self.suffix in (".mp4", ".gif"), f"--out must end in .mp4 or .gif, got {self.path}")
        self.tmp = self.path.with_name(f".{self.path.name}.partial{self.suffix}")
        self.count, self._container, self._stream, self._frames = 0, None, None, []

    def _open(self, height: int, width: int) -> None:
        import av

        from microcinema.core.errors import MicroCinemaError

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._container = av.open(str(self.tmp), mode="w", format="mp4", options={"movflags": "+faststart"})
        except OSError as error:
            raise MicroCinemaError(f"cannot write {self.path}: {error.strerror or error}") from None
        self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(10_000))
        self._stream.width, self._stream.height = width + width % 2, height + height % 2
        self._stream.pix_fmt, self._stream.options = "yuv420p", {"crf": str(self.crf)}

    def append(self, frame: Any) -> None:
        import av
        import numpy as np

        array = np.asarray(frame, dtype=np.uint8)
        if self.suffix == ".gif":
            self._frames.append(array)
        else:
            if self._container is None:
                self._open(*array.shape[:2])
            if array.shape[0] % 2 or array.shape[1] % 2:  # 4:2:0 needs even sides: repeat the last row/column
                array = np.pad(array, ((0, array.shape[0] % 2), (0, array.shape[1] % 2), (0, 0)), mode="edge")
            video_frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            video_frame.pts, video_frame.time_base = self.count, 1 / self._stream.codec_context.framerate
            self._container.mux(self._stream.encode(video_frame))
        self.count += 1

    def close(self) -> Path:
        import numpy as np

        from microcinema.core.video_io import write_video

        if self.suffix == ".gif":
            return write_video(self.path, np.stack(self._frames), self.fps)
        self._container.mux(self._stream.encode(None))
        self._container.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - already failing; the partial file goes either way
                pass
        self.tmp.unlink(missing_ok=True)


def _load_pipeline(model: str | None, key_frame_model: str | None):
    from diffusers.utils import logging as diffusers_logging

    from microcinema.systems.artv.pipeline import ARTVPipeline

    from microcinema.core.text_encoders import no_progress_bars

    # diffusers' "Loading pipeline components" and transformers' "Loading weights": the command's bars are its own
    was_enabled = diffusers_logging.is_progress_bar_enabled()
    diffusers_logging.disable_progress_bar()
    try:
        with no_progress_bars():
            if model is None or model == "embedded":
                return ARTVPipeline.embedded(key_frame_model=key_frame_model)
            return ARTVPipeline.from_pretrained(model, key_frame_model=key_frame_model)
    finally:
        if was_enabled:
            diffusers_logging.enable_progress_bar()


def _check_readable(path: Path, what: str) -> None:
    """``path`` is an image PIL can read (checked before any model is loaded)."""
    from PIL import Image, UnidentifiedImageError

    from microcinema.core.errors import MicroCinemaError, check

    check(path.is_file(), f"{what}: image not found: {path}")
    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise MicroCinemaError(f"{what}: cannot read image {path}: {error}; give a PNG, JPEG or another format "
                               "PIL reads") from None


def _cmd_artv(args: argparse.Namespace) -> None:
    import torch
    from tqdm.auto import tqdm

    from microcinema.core.errors import check

    check(args.out.suffix.lower() in (".mp4", ".gif"), f"--out must end in .mp4 or .gif, got {args.out}")
    counts = args.frames_per_prompt
    check(counts is None or len(counts) in (1, len(args.prompts)),
          f"--frames-per-prompt takes one number or one per prompt ({len(args.prompts)}), got {len(counts or [])}")
    if counts is None or len(counts) == 1:
        prompts: Any = list(args.prompts) if counts is None else [(p, counts[0]) for p in args.prompts]
    else:
        prompts = list(zip(args.prompts, counts))
    for prompt in args.prompts:
        check(prompt.strip() != "", "empty prompt: describe what happens, e.g. 'a red circle moving left'")
    if args.image is not None:
        _check_readable(args.image, "--image")
    keyframes = {}
    for index, path in args.keyframe:
        _check_readable(path, f"--keyframe {index}")
        check(index not in keyframes, f"--keyframe names frame {index} twice")
        keyframes[index] = path
    pipe = _load_pipeline(args.model, args.key_frame_model)
    schedule, _ = pipe.plan(prompts, keyframes=keyframes, loop=args.loop, anchor=args.anchor,
                            first_frame_given=args.image is not None)
    notes: list[str] = []
    frames = pipe.stream(prompts, image=args.image, keyframes=keyframes or None, loop=args.loop, anchor=args.anchor,
                         negative_prompt=args.negative_prompt, height=args.height, width=args.width,
                         num_inference_steps=args.steps, guidance_scale=args.guidance_scale,
                         ref_guidance_scale=args.ref_guidance_scale, anchor_guidance_scale=args.anchor_guidance_scale,
                         ref_noise_level=args.ref_noise_level, generator=torch.Generator().manual_seed(args.seed),
                         output_type="uint8", progress=False, notes=notes)
    for note in notes:
        print(f"microcinema: note: {note}", file=sys.stderr)
    fps = args.fps if args.fps is not None else pipe.fps
    check(fps > 0, f"--fps must be > 0, got {fps}")
    writer = StreamingVideoWriter(args.out, fps)
    n, segments = schedule.num_frames, schedule.segments
    seg_bar = tqdm(total=len(segments), desc="segments", unit="prompt", position=0, disable=args.quiet)
    frame_bar = tqdm(total=n, desc="frames", unit="frame", position=1, disable=args.quiet)
    try:
        for i, frame in enumerate(frames):
            writer.append(frame)
            s = schedule.segment_of[i]
            frame_bar.set_postfix_str(f"segment {s + 1}/{len(segments)}: {segments[s].prompt[:40]}", refresh=False)
            frame_bar.update()
            if i + 1 == n or schedule.segment_of[i + 1] != s:
                seg_bar.update()
        path = writer.close()
    except BaseException:
        writer.abort()
        raise
    finally:
        frame_bar.close()
        seg_bar.close()
    print(f"wrote {path} ({writer.count} frames at {fps:g} fps, {len(segments)} prompt(s))")
