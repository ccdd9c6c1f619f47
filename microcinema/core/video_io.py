"""Reading and writing real video files.

Decoding and encoding (H.264 ``.mp4``, ``.gif``) go through PyAV (ffmpeg inside the wheel); grid PNGs
and GIF palettes through Pillow.

Conventions used everywhere in MicroCinema:

* a clip in memory is ``uint8`` numpy of shape ``(T, H, W, 3)`` (RGB), or, on the model side, a float
  torch tensor in ``[-1, 1]`` of shape ``(T, 3, H, W)``; :func:`to_uint8_frames` turns either into the first;
* a frame's timestamp is its presentation time in seconds, counted from the start of the video stream,
  so the first frame is at ``0.0``; the frame *displayed at* time ``t`` is the last frame whose
  timestamp is ``<= t``.

Every user mistake (missing or corrupt file, bad array, unsupported suffix, unwritable folder) raises
:class:`~microcinema.core.errors.MicroCinemaError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import math
import os
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont

from microcinema.core.errors import MicroCinemaError

__all__ = [
    "VideoInfo",
    "probe_video",
    "read_video",
    "write_video",
    "save_grid",
    "side_by_side",
    "to_uint8_frames",
    "VIDEO_SUFFIXES",
    "MP4_PIX_FMTS",
]

#: Suffixes :func:`write_video` can write.
VIDEO_SUFFIXES = (".mp4", ".gif")
#: Pixel formats accepted for ``.mp4`` (libx264). ``yuv444p`` keeps full colour resolution.
MP4_PIX_FMTS = ("yuv420p", "yuv422p", "yuv444p")
#: GIF delays are whole centiseconds and browsers slow down anything under 2 cs per frame.
GIF_MAX_FPS = 50.0

_AV_ERRORS = (av.FFmpegError, OSError)


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` reports about the first video stream of a file."""

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int


@contextlib.contextmanager
def _open_input(path: str | os.PathLike) -> Iterator[tuple[Any, Any]]:
    """Open ``path`` for reading and yield ``(container, first video stream)``.

    Any ffmpeg or OS error while the block runs (opening, demuxing, decoding) becomes a
    :class:`MicroCinemaError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MicroCinemaError(f"video file not found: {path}")
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise MicroCinemaError(f"no video stream in {path}: expected a video (.mp4, .webm, .mkv, .gif, ...)")
            yield container, container.streams.video[0]
    except _AV_ERRORS as exc:
        raise MicroCinemaError(f"cannot read video {path}: {exc}") from exc


def _stream_fps(stream: Any) -> float:
    """Nominal frame rate of a stream (average rate, else ffmpeg's guess); 0.0 when unknown."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return float(rate)
    return 0.0


def _count_packets(container: Any, stream: Any) -> int:
    """Count the video packets without decoding (for containers that do not store a frame count)."""
    return sum(1 for packet in container.demux(stream) if packet.size > 0)


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """Read the frame count, frame rate, duration (s) and size of the first video stream of ``path``.

    The frame count comes from the container header when it has one, else from counting packets
    (no decoding). ``duration`` is the stream's duration, else ``num_frames / fps``.
    """
    with _open_input(path) as (container, stream):
        fps = _stream_fps(stream)
        num_frames = int(stream.frames or 0) or _count_packets(container, stream)
        if stream.duration and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = num_frames / fps if fps else 0.0
        if not fps and duration > 0:
            fps = num_frames / duration
        width, height = stream.codec_context.width, stream.codec_context.height
    if num_frames <= 0 or width <= 0 or height <= 0:
        raise MicroCinemaError(f"cannot read video {path}: the video stream reports no frames or no size")
    return VideoInfo(num_frames=num_frames, fps=fps, duration=duration, width=width, height=height)


class _FrameClock:
    """Turns decoded frames into seconds from the start of the stream (first frame at 0)."""

    def __init__(self, stream: Any) -> None:
        self.time_base = stream.time_base
        self.origin = stream.start_time  # None when the container does not say
        self.fps = _stream_fps(stream)
        self.count = 0

    def __call__(self, frame: Any) -> float:
        self.count += 1
        if frame.pts is None or self.time_base is None:  # raw streams: assume a constant rate
            return (self.count - 1) / (self.fps or 1.0)
        if self.origin is None:
            self.origin = frame.pts
        return float((frame.pts - self.origin) * self.time_base)


def _tolerance(stream: Any, fps: float) -> float:
    """How far before a frame's timestamp a request may fall and still see that frame.

    Covers float error (1 us) and the rounding of timestamps to the container's time base (half a tick,
    e.g. 0.5 ms in .mkv/.webm), but never more than a quarter of a frame period.
    """
    tick = float(stream.time_base) if stream.time_base else 0.0
    tol = max(1e-6, 0.5 * tick)
    return min(tol, 0.25 / fps) if fps > 0 else tol


def _rgb(frame: Any) -> np.ndarray:
    return frame.to_ndarray(format="rgb24")


def _decode_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with _open_input(path) as (container, stream):
        clock = _FrameClock(stream)
        frames, times = [], []
        for frame in container.decode(stream):
            times.append(clock(frame))
            frames.append(_rgb(frame))
    if not frames:
        raise MicroCinemaError(f"cannot read video {path}: no frame could be decoded")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


class _Answers:
    """Collects, for sorted request times, the frame displayed at each, converting each frame once."""

    def __init__(self, times: np.ndarray, tol: float) -> None:
        self.times, self.tol = times, tol
        self.frames: list[np.ndarray] = []
        self.stamps: list[float] = []
        self.shown: Any = None  # the frame on screen so far, and its time and RGB array
        self.shown_time = 0.0
        self.shown_rgb: np.ndarray | None = None

    @property
    def done(self) -> bool:
        return len(self.frames) == len(self.times)

    def answer_until(self, t: float | None) -> None:
        """Answer with the shown frame every request before time ``t`` (all of them when ``None``)."""
        while not self.done and (t is None or self.times[len(self.frames)] + self.tol < t):
            if self.shown_rgb is None:
                self.shown_rgb = _rgb(self.shown)
            self.frames.append(self.shown_rgb)
            self.stamps.append(self.shown_time)

    def show(self, frame: Any, t: float) -> None:
        self.shown, self.shown_time, self.shown_rgb = frame, t, None


def _decode_at(path: Path, times: np.ndarray, seek: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Decode the frames displayed at ``times`` (sorted ascending) in one sequential pass.

    Only the frame on screen and the answers are kept in memory. Returns ``None`` when a seek overshot
    the first requested time (some containers seek imprecisely), so the caller can retry without seeking.
    """
    with _open_input(path) as (container, stream):
        clock = _FrameClock(stream)
        answers = _Answers(times, _tolerance(stream, clock.fps))
        first = float(times[0])
        seeking = bool(seek and first > 0 and clock.origin is not None and stream.time_base)
        if seeking:
            target = clock.origin + int(math.floor((first - answers.tol) / stream.time_base))
            container.seek(max(target, clock.origin), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            t = clock(frame)
            if answers.shown is None:
                if seeking and t > first + answers.tol:
                    return None
                answers.show(frame, t)  # requests before the first frame get the first frame
            answers.answer_until(t)
            if answers.done:
                break  # stop decoding after the last requested time
            answers.show(frame, t)
        if answers.shown is None:
            raise MicroCinemaError(f"cannot read video {path}: no frame could be decoded")
        answers.answer_until(None)  # requests at or after the last frame
    return np.stack(answers.frames), np.asarray(answers.stamps, dtype=np.float64)


def read_video(
    path: str | os.PathLike, times: Sequence[float] | np.ndarray | None = None, *, seek: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Decode a video into ``(frames, timestamps)``: ``uint8 (T, H, W, 3)`` RGB and float seconds ``(T,)``.

    With ``times=None`` every frame is returned. With ``times`` (seconds, any order, repeats allowed)
    frame ``i`` is the frame displayed at ``times[i]``: the last frame whose timestamp is ``<= times[i]``
    (a timestamp up to half a container time-base tick past the request still counts, to absorb float
    and container rounding).
    Times before the first frame give the first frame, times past the last frame give the last frame
    (compare the returned timestamps to detect it). Decoding is sequential and stops after the last
    requested time, holding only the frames asked for; with ``seek=True`` it first jumps to the key frame
    before the earliest request (and falls back to decoding from the start if the container seeks badly).

    Raises :class:`MicroCinemaError` naming the file when it is missing, unreadable or corrupt.
    """
    path = Path(path)
    if times is None:
        return _decode_all(path)
    req = np.asarray(times, dtype=np.float64).reshape(-1)
    if req.size == 0:
        raise MicroCinemaError("read_video: times is empty; pass at least one time in seconds, or None for all frames")
    if not np.all(np.isfinite(req)) or req.min() < 0:
        raise MicroCinemaError(f"read_video: times must be finite seconds >= 0, got min {req.min()}")
    order = np.argsort(req, kind="stable")
    result = _decode_at(path, req[order], seek)
    if result is None:
        result = _decode_at(path, req[order], seek=False)
    frames, stamps = result
    inverse = np.empty_like(order)
    inverse[order] = np.arange(order.size)
    return frames[inverse], stamps[inverse]


# --------------------------------------------------------------------------------------------- arrays


def to_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    """Return a clip as contiguous ``uint8`` numpy ``(T, H, W, 3)``.

    Accepts ``uint8`` numpy or torch ``(T, H, W, 3)`` (returned as is), or a floating torch tensor
    ``(T, 3, H, W)`` in ``[-1, 1]`` (the model side; clamped to ``[-1, 1]`` and rounded; values beyond
    +-2, e.g. 0..255 data, and NaN/inf are refused). Anything else raises :class:`MicroCinemaError`.
    """
    allowed = "uint8 (T, H, W, 3) numpy/torch or float torch (T, 3, H, W) in [-1, 1]"
    if isinstance(frames, torch.Tensor):
        if frames.is_floating_point():
            if frames.ndim != 4 or frames.shape[1] != 3:
                raise MicroCinemaError(f"frames: float tensor of shape {tuple(frames.shape)}; allowed: {allowed}")
            x = frames.detach().to("cpu", torch.float32)
            if not torch.isfinite(x).all() or x.abs().max() > 2.0:
                raise MicroCinemaError(
                    f"frames: float tensor has NaN/inf or values far outside [-1, 1] "
                    f"(range {x.min().item():.3g}..{x.max().item():.3g}); allowed: {allowed}"
                )
            x = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
            return np.ascontiguousarray(rearrange(x.numpy(), "t c h w -> t h w c"))
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise MicroCinemaError(f"frames: got {type(frames).__name__}; allowed: {allowed}")
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise MicroCinemaError(f"frames: {frames.dtype} array of shape {frames.shape}; allowed: {allowed}")
    if frames.shape[0] == 0 or frames.shape[1] == 0 or frames.shape[2] == 0:
        raise MicroCinemaError(f"frames: empty clip of shape {frames.shape}; need at least one frame of at least 1x1")
    return np.ascontiguousarray(frames)


# --------------------------------------------------------------------------------------------- writing


@contextlib.contextmanager
def _atomic_output(path: str | os.PathLike, what: str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path`` with ``os.replace``.

    The parent folder is created if needed. On any error the temporary file is removed, so no
    half-written file is ever left; OS errors become :class:`MicroCinemaError`.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (OSError, av.FFmpegError) as exc:
        raise MicroCinemaError(
            f"cannot write {what} to {path}: {exc}; the folder must exist or be creatable, and be writable"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _fps_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction)) or not math.isfinite(fps) or fps <= 0:
        raise MicroCinemaError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(10_000)


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """Replicate the last row/column so height and width are even (4:2:0 and 4:2:2 need it)."""
    ph, pw = frames.shape[1] % 2, frames.shape[2] % 2
    if ph or pw:
        frames = np.pad(frames, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    return frames


def _write_mp4(tmp: Path, frames: np.ndarray, rate: Fraction, crf: int, pix_fmt: str) -> None:
    if pix_fmt != "yuv444p":
        frames = _pad_even(frames)
    _, height, width, _ = frames.shape
    with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = {"crf": str(crf)}
        for i, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = i, 1 / rate
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _palette_frame(rgb: np.ndarray) -> Any:
    """An RGB frame as a PyAV ``pal8`` frame with its own 256-colour median-cut palette."""
    image = Image.fromarray(rgb).quantize(256, method=Image.Quantize.MEDIANCUT)
    palette = np.zeros((256, 4), np.uint8)
    colours = np.asarray(image.getpalette()[: 3 * 256], np.uint8).reshape(-1, 3)
    palette[:, 0] = 255  # PyAV takes the palette as ARGB
    palette[: len(colours), 1:] = colours
    return av.VideoFrame.from_ndarray((np.asarray(image), palette), format="pal8")


def _write_gif(tmp: Path, frames: np.ndarray, fps: float) -> None:
    """GIF through ffmpeg's encoder: every frame is kept (Pillow would merge identical ones), delays are
    whole centiseconds whose running sum tracks ``i / fps``, and the animation loops forever."""
    if fps > GIF_MAX_FPS:
        raise MicroCinemaError(f"GIF cannot play faster than {GIF_MAX_FPS:g} fps (got {fps:g}); write .mp4 instead")
    centi = Fraction(1, 100)
    starts = [round(100 * i / fps) for i in range(len(frames) + 1)]
    with av.open(str(tmp), mode="w", format="gif", options={"loop": "0"}) as container:
        stream = container.add_stream("gif", rate=100)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "pal8"
        stream.codec_context.time_base = centi
        for i, rgb in enumerate(frames):
            frame = _palette_frame(rgb)
            frame.pts, frame.time_base = starts[i], centi
            for packet in stream.encode(frame):
                packet.duration = starts[i + 1] - starts[i]  # the muxer needs it for the last frame
                container.mux(packet)
        container.mux(stream.encode(None))


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray | torch.Tensor,
    fps: float,
    *,
    crf: int = 18,
    pix_fmt: str = "yuv420p",
) -> Path:
    """Write a clip to ``.mp4`` (H.264, libx264) or ``.gif`` and return the path.

    ``frames``: ``uint8 (T, H, W, 3)`` or a float tensor ``(T, 3, H, W)`` in ``[-1, 1]`` (see
    :func:`to_uint8_frames`). ``.mp4``: ``crf`` 0 (lossless in YUV) to 51, ``pix_fmt`` one of
    :data:`MP4_PIX_FMTS`; with ``yuv420p``/``yuv422p`` an odd height or width is padded by repeating the
    last row/column (the file is then one pixel larger). ``.gif`` (ffmpeg's encoder, a 256-colour palette
    per frame, loops forever): ``crf``/``pix_fmt`` are ignored; at most 50 fps; every frame is kept and
    frame ``i`` starts at ``round(100 * i / fps)`` centiseconds (GIF's time unit), so the total is ``T / fps``.

    The file is written to a temporary name in the same folder and then moved into place, so an
    interrupted write never leaves a half-written video. The parent folder is created when missing.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise MicroCinemaError(
            f"cannot write video {path}: suffix {path.suffix or '(none)'!r} not supported; "
            f"allowed: {', '.join(VIDEO_SUFFIXES)}"
        )
    array = to_uint8_frames(frames)
    rate = _fps_fraction(fps)
    if suffix == ".mp4":
        if pix_fmt not in MP4_PIX_FMTS:
            raise MicroCinemaError(f"pix_fmt {pix_fmt!r} not supported for .mp4; allowed: {', '.join(MP4_PIX_FMTS)}")
        if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
            raise MicroCinemaError(f"crf must be an integer in 0..51 (0 = lossless, 18 = default), got {crf!r}")
    with _atomic_output(path, "video") as tmp:
        if suffix == ".mp4":
            _write_mp4(tmp, array, rate, int(crf), pix_fmt)
        else:
            _write_gif(tmp, array, float(fps))
    return path


# --------------------------------------------------------------------------------------------- grids


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font: Any, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (long words stay whole)."""
    lines: list[str] = []
    for paragraph in str(text).splitlines() or [""]:
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if line and font.getlength(candidate) > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _pick_frames(clip: np.ndarray, max_frames: int | None) -> np.ndarray:
    """At most ``max_frames`` frames, evenly spaced, always keeping the first and the last."""
    if max_frames is None or len(clip) <= max_frames:
        return clip
    keep = np.unique(np.round(np.linspace(0, len(clip) - 1, max_frames)).astype(int))
    return clip[keep]


def _row_image(clip: np.ndarray, scale: int, gap: int, background: int) -> np.ndarray:
    """Frames of one clip side by side, upscaled ``scale`` times with nearest neighbour."""
    clip = clip.repeat(scale, axis=1).repeat(scale, axis=2)
    t, h, w, _ = clip.shape
    row = np.full((h, t * w + (t - 1) * gap, 3), background, dtype=np.uint8)
    for i, frame in enumerate(clip):
        row[:, i * (w + gap): i * (w + gap) + w] = frame
    return row


def side_by_side(videos: Sequence[np.ndarray], gap: int = 2) -> np.ndarray:
    """uint8 videos ``(F, H, W_i, 3)`` of one height placed left to right with ``gap`` white columns between them,
    cut to the shortest one's frames (for a comparison played as one video)."""
    frames = min(len(v) for v in videos)
    white = np.full((frames, videos[0].shape[1], gap, 3), 255, dtype=np.uint8)
    parts = [part for v in videos for part in (v[:frames], white)][:-1]
    return np.concatenate(parts, axis=2)


def save_grid(
    path: str | os.PathLike,
    clips: Sequence[np.ndarray | torch.Tensor],
    *,
    captions: Sequence[str] | None = None,
    max_frames: int | None = None,
    scale: int | None = None,
) -> Path:
    """Save a PNG with one row per clip, frames left to right, each row under its caption.

    ``clips``: a list of clips in any form :func:`to_uint8_frames` accepts (sizes and lengths may
    differ). ``max_frames`` keeps at most that many evenly spaced frames per clip (first and last
    included). ``scale`` upscales frames with nearest neighbour; by default small frames are enlarged so
    their longer side reaches at least 128 px (64x64 frames are drawn 2x). Written atomically.
    """
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise MicroCinemaError(f"save_grid writes PNG; got suffix {path.suffix or '(none)'!r}, allowed: .png")
    if isinstance(clips, (np.ndarray, torch.Tensor)) or not len(clips):
        raise MicroCinemaError(
            "save_grid: clips must be a non-empty list of clips (each (T, H, W, 3) uint8 or (T, 3, H, W) float)"
        )
    if captions is not None and len(captions) != len(clips):
        raise MicroCinemaError(
            f"save_grid: {len(captions)} captions for {len(clips)} clips; give one caption per clip or None"
        )
    if max_frames is not None and max_frames < 1:
        raise MicroCinemaError(f"save_grid: max_frames must be >= 1 or None, got {max_frames}")
    if scale is not None and (not isinstance(scale, int) or scale < 1):
        raise MicroCinemaError(f"save_grid: scale must be an integer >= 1 or None, got {scale!r}")

    arrays = [_pick_frames(to_uint8_frames(c), max_frames) for c in clips]
    if scale is None:
        longest = max(max(a.shape[1:3]) for a in arrays)
        scale = max(1, math.ceil(128 / longest))
    gap, margin, background = 2, 4, 255
    rows = [_row_image(a, scale, gap, background) for a in arrays]
    width = max(r.shape[1] for r in rows) + 2 * margin

    font = _font(12)
    line_h = 15
    blocks = [_wrap(c, font, width - 2 * margin) for c in captions] if captions is not None else [[] for _ in rows]
    height = margin + sum(len(b) * line_h + r.shape[0] + margin for b, r in zip(blocks, rows))

    canvas = Image.new("RGB", (width, height), (background,) * 3)
    draw = ImageDraw.Draw(canvas)
    y = margin
    for lines, row in zip(blocks, rows):
        for line in lines:
            draw.text((margin, y), line, fill=(0, 0, 0), font=font)
            y += line_h
        canvas.paste(Image.fromarray(row), (margin, y))
        y += row.shape[0] + margin
    with _atomic_output(path, "grid image") as tmp:
        canvas.save(tmp, format="PNG")
    return path
