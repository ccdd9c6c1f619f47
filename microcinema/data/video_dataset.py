"""Real text-video data: a caption table plus video files, sampled at a fixed frame rate.

Two table layouts, picked from the table's suffix (or ``layout=``):

* ``"webvid"`` (``.csv``): the WebVid-10M release format used by public training code, columns
  ``videoid,name,page_dir`` (others, e.g. ``contentUrl,duration``, are ignored). Caption = ``name``;
  video at ``<video_root>/<page_dir>/<videoid>.mp4``.
* ``"jsonl"`` (``.jsonl``/``.ndjson``): one object per line, ``{"file": ..., "text": ..., "fps": ...}``;
  ``"caption"`` is accepted instead of ``"text"``; ``file`` is relative to ``video_root`` (absolute paths
  work too); the optional ``fps`` overrides the container's frame rate (for files whose header is wrong).

``video_root`` defaults to the folder holding the table.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset

from microcinema.core.errors import MicroCinemaError
from microcinema.core.video_io import probe_video, read_video

__all__ = ["VideoCaptionDataset", "ClipReader", "VideoSkipped", "resize_center_crop", "load_caption_table", "LAYOUTS"]

logger = logging.getLogger(__name__)

#: Table layouts and the suffixes that select them.
LAYOUTS = {"webvid": (".csv",), "jsonl": (".jsonl", ".ndjson")}
WEBVID_COLUMNS = ("videoid", "name", "page_dir")
SAMPLE_MODES = ("random", "start", "center")
TOO_SHORT_MODES = ("skip", "pad")
_LAYOUTS_HELP = (
    "allowed layouts: WebVid CSV (.csv) with columns videoid,name,page_dir, "
    'or JSONL (.jsonl) with keys "file" and "text" (or "caption"), optional "fps"'
)


@dataclass(frozen=True)
class CaptionRow:
    """One table entry: a video file, its caption and an optional frame-rate override."""

    file: Path
    text: str
    fps: float | None = None


# --------------------------------------------------------------------------------------------- tables


def _detect_layout(table: Path, layout: str | None) -> str:
    if layout is not None:
        if layout not in LAYOUTS:
            raise MicroCinemaError(f"unknown layout {layout!r}; {_LAYOUTS_HELP}")
        return layout
    for name, suffixes in LAYOUTS.items():
        if table.suffix.lower() in suffixes:
            return name
    raise MicroCinemaError(
        f"cannot tell the layout of {table} from its suffix {table.suffix or '(none)'!r}; "
        f"{_LAYOUTS_HELP} (or pass layout=)"
    )


def _read_webvid(table: Path, root: Path) -> list[CaptionRow]:
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in WEBVID_COLUMNS if c not in columns]
        if missing:
            raise MicroCinemaError(
                f"{table}: missing columns {','.join(missing)} (found: {','.join(columns) or 'none'}); {_LAYOUTS_HELP}"
            )
        reader.fieldnames = columns
        cells = ({key: (row.get(key) or "").strip() for key in WEBVID_COLUMNS} for row in reader)
        return [CaptionRow(file=root / c["page_dir"] / f"{c['videoid']}.mp4", text=c["name"]) for c in cells]


def _parse_fps(value: object, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise MicroCinemaError(f'{where}: "fps" must be a positive number or absent, got {value!r}')
    return float(value)


def _read_jsonl(table: Path, root: Path) -> list[CaptionRow]:
    rows = []
    with open(table, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{table} line {number}"
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise MicroCinemaError(f"{where}: not valid JSON ({exc.msg}); {_LAYOUTS_HELP}") from exc
            if not isinstance(item, dict):
                raise MicroCinemaError(f"{where}: expected a JSON object; {_LAYOUTS_HELP}")
            missing = [key for key, alternatives in (("file", ("file",)), ("text", ("text", "caption")))
                       if not any(a in item for a in alternatives)]
            if missing:
                raise MicroCinemaError(
                    f"{where}: missing keys {','.join(missing)} (found: {','.join(item) or 'none'}); {_LAYOUTS_HELP}"
                )
            text = item["text"] if "text" in item else item["caption"]
            fps = _parse_fps(item.get("fps"), where)
            rows.append(CaptionRow(file=root / str(item["file"]), text=str(text or "").strip(), fps=fps))
    return rows


def load_caption_table(
    table: str | os.PathLike, video_root: str | os.PathLike | None = None, layout: str | None = None
) -> list[CaptionRow]:
    """Read a caption table (see the module docstring) into rows with resolved video paths."""
    table = Path(table)
    kind = _detect_layout(table, layout)
    if not table.is_file():
        raise MicroCinemaError(f"caption table not found: {table}")
    root = Path(video_root) if video_root is not None else table.parent
    try:
        rows = _read_webvid(table, root) if kind == "webvid" else _read_jsonl(table, root)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MicroCinemaError(f"cannot parse caption table {table} ({exc}); {_LAYOUTS_HELP}, UTF-8 text") from exc
    if not rows:
        raise MicroCinemaError(f"caption table {table} has no rows; {_LAYOUTS_HELP}")
    return rows


# --------------------------------------------------------------------------------------------- frames


def _size_pair(size: int | Sequence[int]) -> tuple[int, int]:
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise MicroCinemaError(f"size must be a positive int or a (height, width) pair of positive ints, got {size!r}")
    return int(pair[0]), int(pair[1])


def resize_center_crop(frames: np.ndarray, size: int | Sequence[int]) -> torch.Tensor:
    """``uint8 (F, H, W, 3)`` -> float32 ``(F, 3, h, w)`` in ``[-1, 1]``.

    Scales (bilinear, antialiased when shrinking) so the frame just covers ``size`` (for a square size:
    the shorter side becomes ``size``), then crops the centre.
    """
    h, w = _size_pair(size)
    x = rearrange(torch.from_numpy(np.ascontiguousarray(frames)), "f h w c -> f c h w").float()
    src_h, src_w = x.shape[-2:]
    scale = max(h / src_h, w / src_w)
    new_h, new_w = max(h, round(src_h * scale)), max(w, round(src_w * scale))
    if (new_h, new_w) != (src_h, src_w):
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    top, left = (new_h - h) // 2, (new_w - w) // 2
    x = x[:, :, top: top + h, left: left + w]
    return (x / 127.5 - 1.0).clamp_(-1.0, 1.0).contiguous()


class VideoSkipped(Exception):
    """A file that cannot give a clip (raised by :meth:`ClipReader.read`, caught by the datasets, which skip
    the file); ``reason`` is a key of ``VideoCaptionDataset.stats``, ``detail`` the one-line cause."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


# --------------------------------------------------------------------------------------------- dataset


class ClipReader:
    """The window logic of :class:`VideoCaptionDataset` for one file: ``num_frames`` frames at ``fps``, resized and
    centre-cropped to ``size``; where the window starts (``sample``) and what a too-short video does
    (``too_short``) as there. A random start comes from ``numpy.random.default_rng(rng_key)``. Used by the
    caption tables and by the WebDataset shards (:mod:`microcinema.data.webdataset`) alike."""

    def __init__(self, num_frames: int, fps: float, size: int | Sequence[int], sample: str = "random",
                 too_short: str = "skip") -> None:
        self.num_frames, self.fps, self.size = int(num_frames), float(fps), _size_pair(size)
        self.sample, self.too_short = sample, too_short

    def window(self, rng_key: Sequence[int], num_src: int, src_fps: float) -> tuple[float, bool]:
        """Window start (seconds, on a source frame) and whether the window fits in the video."""
        # start frame j fits when its last sample j/src_fps + (F-1)/fps falls before the end num_src/src_fps
        last_start = math.ceil(num_src - (self.num_frames - 1) * src_fps / self.fps - 1e-9) - 1
        if last_start < 0:
            return 0.0, False
        if self.sample == "start":
            j = 0
        elif self.sample == "center":
            j = last_start // 2
        else:
            j = int(np.random.default_rng(list(rng_key)).integers(0, last_start + 1))
        return j / src_fps, True

    def read(self, file: str | os.PathLike, text: str, rng_key: Sequence[int], row_fps: float | None = None
             ) -> dict[str, object]:
        """The clip of ``file`` as an item (see :class:`VideoCaptionDataset`); raises :class:`VideoSkipped` for a
        file that cannot give one."""
        file = Path(file)
        if not file.is_file():
            raise VideoSkipped("missing", f"file not found: {file}")
        try:
            info = probe_video(file)
        except MicroCinemaError as exc:
            raise VideoSkipped("corrupt", str(exc)) from exc
        src_fps = row_fps or info.fps
        if src_fps <= 0:
            raise VideoSkipped("corrupt", "unknown frame rate (give \"fps\" in a JSONL table)")
        start, fits = self.window(rng_key, info.num_frames, src_fps)
        if not fits and self.too_short == "skip":
            need = (self.num_frames - 1) / self.fps
            raise VideoSkipped(
                "too_short",
                f"{info.num_frames} frames at {src_fps:g} fps; "
                f"{self.num_frames} frames at {self.fps:g} fps need more than {need:g} s",
            )
        times = start + np.arange(self.num_frames) / self.fps
        to_container = src_fps / info.fps  # row timeline -> container timeline (1 without an fps override)
        try:
            frames, stamps = read_video(file, times * to_container)
        except MicroCinemaError as exc:
            raise VideoSkipped("corrupt", str(exc)) from exc
        stamps = stamps / to_container
        if fits and stamps[-1] < times[-1] - 1.5 / src_fps:
            ends = f"video ends at {stamps[-1]:.3f} s, before the {info.num_frames} frames its header promises"
            raise VideoSkipped("corrupt", ends + " (truncated?)")
        return {
            "pixel_values": resize_center_crop(frames, self.size),
            "text": text,
            "file": str(file),
            "frame_times": torch.from_numpy(stamps),
        }


class VideoCaptionDataset(Dataset):
    """Clips of ``num_frames`` frames sampled at ``fps`` from captioned videos.

    Args:
        table: caption table, ``.csv`` (WebVid) or ``.jsonl`` (see the module docstring).
        video_root: folder the table's video paths are relative to (default: the table's folder).
        num_frames: frames per clip (MicroCinema base: 9).
        fps: sampling rate of the clip (MicroCinema base: 2; ART-V: 8). Frame ``i`` of a clip is the
            source frame displayed at time ``start + i / fps``; ``start`` is the timestamp of a source frame.
        size: output size: an int (square) or ``(height, width)``; frames are resized (antialiased) to
            cover it and centre-cropped (see :func:`resize_center_crop`).
        sample: where the window starts: ``"random"`` (uniform over the source frames where the whole
            window fits), ``"start"`` (first frame) or ``"center"`` (window centred in the video).
        too_short: a video shorter than the window is ``"skip"``-ped (default: padding would teach a model
            frozen endings) or ``"pad"``-ded (window starts at 0; times past the end repeat the last frame,
            visible as repeated ``frame_times``).
        layout: ``"webvid"`` or ``"jsonl"``; default: from the table's suffix.
        seed: random windows come from ``numpy.random.default_rng([seed, index, epoch])``, so an item is
            the same every time it is loaded, in any worker, until :meth:`set_epoch` changes the epoch.
            ``None`` picks a seed at construction. (With ``persistent_workers=True`` DataLoader workers keep
            their own copy of the dataset and do not see ``set_epoch``.)
        max_retries: how many other items to try (the next indices, in order) when a file must be skipped.

    Items are dicts: ``pixel_values`` float32 ``(F, 3, H, W)`` in ``[-1, 1]``, ``text`` str, ``file`` str,
    ``frame_times`` float64 ``(F,)``: source timestamps (s) of the frames used (in the row's own ``fps``
    timeline when the table overrides it).

    Missing, corrupt and (with ``"skip"``) too-short files never stop training: another item is returned,
    the file is logged once with ``logging.warning`` and counted in :attr:`stats` (a ``Counter`` of distinct
    files per reason: ``"missing"``, ``"corrupt"``, ``"too_short"``). Known-bad items are remembered and not
    decoded again. :attr:`stats` and the log-once memory belong to the process: each DataLoader worker has
    its own (and non-persistent workers start each epoch from the main process's copy).
    If ``max_retries + 1`` consecutive items (at most all of them) fail, :class:`MicroCinemaError` says how
    many and why.
    """

    def __init__(
        self,
        table: str | os.PathLike,
        video_root: str | os.PathLike | None = None,
        *,
        num_frames: int = 9,
        fps: float = 2.0,
        size: int | Sequence[int] = 64,
        sample: str = "random",
        too_short: str = "skip",
        layout: str | None = None,
        seed: int | None = 0,
        max_retries: int = 10,
    ) -> None:
        if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise MicroCinemaError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise MicroCinemaError(f"fps must be a positive number (MicroCinema base: 2, ART-V: 8), got {fps!r}")
        if sample not in SAMPLE_MODES:
            raise MicroCinemaError(f"sample={sample!r} not supported; allowed: {', '.join(SAMPLE_MODES)}")
        if too_short not in TOO_SHORT_MODES:
            raise MicroCinemaError(f"too_short={too_short!r} not supported; allowed: {', '.join(TOO_SHORT_MODES)}")
        if not isinstance(max_retries, (int, np.integer)) or max_retries < 0:
            raise MicroCinemaError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if seed is not None and (not isinstance(seed, (int, np.integer)) or seed < 0):
            raise MicroCinemaError(f"seed must be a non-negative integer or None, got {seed!r}")
        self.rows = load_caption_table(table, video_root, layout)
        self.num_frames, self.fps, self.size = int(num_frames), float(fps), _size_pair(size)
        self.sample, self.too_short, self.max_retries = sample, too_short, int(max_retries)
        self.reader = ClipReader(num_frames, fps, size, sample, too_short)
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.epoch = 0
        self.stats: Counter[str] = Counter()
        self._bad: dict[int, tuple[str, str]] = {}  # index -> (reason, detail); no tracebacks kept

    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Change the epoch mixed into the random window starts (call it at the start of each epoch)."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, object]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        skipped: list[int] = []
        for attempt in range(min(self.max_retries + 1, len(self))):
            i = (index + attempt) % len(self)
            if i not in self._bad:
                try:
                    return self.load_item(i)
                except VideoSkipped as skip:
                    self.mark_bad(i, skip)
            skipped.append(i)
        reasons = Counter(self._bad[i][0] for i in skipped)
        summary = ", ".join(f"{k}: {v}" for k, v in sorted(reasons.items()))
        raise MicroCinemaError(
            f"no loadable video for item {index}: skipped {len(skipped)} files ({summary}), "
            f"first {self.rows[skipped[0]].file}: {self._bad[skipped[0]][1]}; "
            "check the table and video_root, raise max_retries, or use too_short='pad'"
        )

    def mark_bad(self, i: int, skip: VideoSkipped) -> None:
        """Remember row ``i`` as unloadable (``__getitem__`` skips it from now on), count it in ``stats`` and log it."""
        self._bad[i] = (skip.reason, skip.detail)
        self.stats[skip.reason] += 1
        logger.warning("skipping video %s (%s): %s", self.rows[i].file, skip.reason, skip.detail)

    def _window(self, i: int, num_src: int, src_fps: float) -> tuple[float, bool]:
        """Window start (seconds, on a source frame) and whether the window fits in the video."""
        return self.reader.window([self.seed, i, self.epoch], num_src, src_fps)

    def load_item(self, i: int) -> dict[str, object]:
        """Row ``i``'s clip, without the retries of ``__getitem__`` (raises :class:`VideoSkipped`, see
        :meth:`mark_bad`); for loaders that handle skipped files themselves."""
        row = self.rows[i]
        return self.reader.read(row.file, row.text, [self.seed, i, self.epoch], row.fps)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} videos, {self.num_frames} frames at {self.fps:g} fps, "
            f"size={self.size}, sample={self.sample!r}, too_short={self.too_short!r})"
        )
