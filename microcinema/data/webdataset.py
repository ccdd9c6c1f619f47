"""Real videos from WebDataset tar shards, in the layout video2dataset writes, split across processes.

A shard is a ``.tar`` of samples sharing a key: ``<key>.mp4`` (the video) and ``<key>.txt`` (the caption)
and/or ``<key>.json`` (metadata; its ``"caption"`` or ``"text"`` is the caption when there is no ``.txt``).
Shards are given as a brace pattern (``data/{00000..00099}.tar``) or a list (anything
``webdataset.WebDataset`` opens: paths, ``pipe:`` commands, URLs).

**Sharding across processes** (``accelerate launch``): with ``P`` processes, process ``r`` reads shards
``r, r + P, r + 2P, ...`` when there are at least ``P`` shards; with fewer shards every process reads every
shard and keeps the samples ``r, r + P, ...`` (in the shards' order). Either way the processes see disjoint
samples covering all of them, in an order fixed by the shard list (no shuffling here: the trainer shuffles
the encoded clips, see :mod:`microcinema.data.build`).

Each sample's window (``num_frames`` frames at ``fps``) is chosen as in
:class:`~microcinema.data.video_dataset.VideoCaptionDataset` (:class:`~microcinema.data.video_dataset.ClipReader`),
its random start seeded by ``(seed, crc32(key))``, so a sample gives the same clip on every run and process.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from microcinema.core.errors import MicroCinemaError
from microcinema.data.video_dataset import ClipReader, VideoSkipped

__all__ = ["expand_shards", "split_shards", "WebDatasetClips", "RawSample"]

logger = logging.getLogger(__name__)
VIDEO_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov")


def expand_shards(shards: str | Sequence[str]) -> list[str]:
    """A brace pattern (``a-{000..009}.tar``, several joined by ``::``) or a list of them, expanded in order."""
    from webdataset.shardlists import expand_urls

    patterns = [shards] if isinstance(shards, str) else list(shards)
    urls = [url for pattern in patterns for url in expand_urls(str(pattern))]
    if not urls:
        raise MicroCinemaError(f"no WebDataset shards in {shards!r}; give a brace pattern or a list of .tar files")
    missing = next((u for u in urls if not _is_remote(u) and not os.path.isfile(u)), None)
    if missing is not None:
        raise MicroCinemaError(f"WebDataset shard {missing} not found ({len(urls)} shards in {shards!r}); "
                               "give existing .tar files (or URLs / pipe: commands)")
    return urls


def _is_remote(url: str) -> bool:
    """A URL with a scheme (``http://``, ``s3://``, ``gs://``, ...) or a ``pipe:`` command: not checked here."""
    if url.startswith("pipe:"):
        return True
    scheme, sep, _ = url.partition("://")
    return bool(sep) and scheme.replace("+", "").isalnum() and len(scheme) > 1


def split_shards(urls: list[str], process_index: int, num_processes: int) -> tuple[list[str], int, int]:
    """This process's ``(shards, sample stride, sample offset)``: whole shards when there are at least as
    many shards as processes, else every shard with every ``num_processes``-th sample from ``process_index``."""
    if not 0 <= process_index < num_processes:
        raise MicroCinemaError(f"process_index {process_index} must be in [0, {num_processes})")
    if len(urls) >= num_processes:
        return urls[process_index::num_processes], 1, 0
    return list(urls), num_processes, process_index


@dataclass(frozen=True)
class RawSample:
    """A sample before decoding: its position in this process's stream, key, video bytes and caption."""

    position: int
    key: str
    video: bytes
    extension: str
    text: str


def _caption(sample: dict) -> str | None:
    if sample.get("txt") is not None:
        return sample["txt"].decode("utf-8").strip()
    if sample.get("json") is not None:
        meta = json.loads(sample["json"])
        for name in ("caption", "text"):
            if isinstance(meta.get(name), str):
                return meta[name].strip()
    return None


class WebDatasetClips:
    """This process's clips of a set of shards: iterate to get items like
    :class:`~microcinema.data.video_dataset.VideoCaptionDataset`'s plus ``key``
    (``pixel_values (F, 3, H, W)`` in ``[-1, 1]``, ``text``, ``key``, ``frame_times``).

    Samples that cannot give a clip (no video, no caption, undecodable, too short with ``too_short="skip"``)
    are skipped, logged once and counted in :attr:`stats`. :meth:`raw` yields the undecoded samples from a
    position on, so a resumed encoding skips the consumed ones without decoding them.
    """

    def __init__(self, shards: str | Sequence[str], *, num_frames: int = 9, fps: float = 2.0,
                 size: int | Sequence[int] = 64, sample: str = "random", too_short: str = "skip", seed: int = 0,
                 process_index: int = 0, num_processes: int = 1) -> None:
        self.urls = expand_shards(shards)
        self.shards, self.stride, self.offset = split_shards(self.urls, process_index, num_processes)
        self.reader = ClipReader(num_frames, fps, size, sample, too_short)
        self.seed = int(seed)
        self.stats: Counter[str] = Counter()

    def raw(self, start: int = 0) -> Iterator[RawSample]:
        """This process's samples (undecoded), from position ``start`` on."""
        import webdataset as wds

        stream = wds.WebDataset(self.shards, shardshuffle=False, nodesplitter=None, workersplitter=None,
                                empty_check=False)
        position = 0
        for index, sample in enumerate(stream):
            if index % self.stride != self.offset:
                continue
            if position >= start:
                extension = next((e for e in VIDEO_EXTENSIONS if sample.get(e) is not None), None)
                text = _caption(sample)
                yield RawSample(position, sample["__key__"], sample.get(extension) if extension else b"",
                                extension or "", text if text is not None else "\0missing")
            position += 1

    def decode(self, raw: RawSample) -> dict[str, object] | None:
        """The clip of a sample, or ``None`` (logged, counted) when it cannot give one."""
        if not raw.extension:
            return self._skip(raw, "no_video", f"no video file ({', '.join(VIDEO_EXTENSIONS)}) in the sample")
        if raw.text == "\0missing":
            return self._skip(raw, "no_caption", "no .txt and no caption/text in .json")
        handle = tempfile.NamedTemporaryFile(suffix=f".{raw.extension}", delete=False)
        try:
            with handle:
                handle.write(raw.video)
            item = self.reader.read(handle.name, raw.text, [self.seed, zlib.crc32(raw.key.encode())])
        except VideoSkipped as skip:
            return self._skip(raw, skip.reason, skip.detail)
        finally:
            os.unlink(handle.name)
        item.pop("file")
        item["key"] = raw.key
        return item

    def _skip(self, raw: RawSample, reason: str, detail: str) -> None:
        self.stats[reason] += 1
        logger.warning("skipping WebDataset sample %s (%s): %s", raw.key, reason, detail)
        return None

    def __iter__(self) -> Iterator[dict[str, object]]:
        for raw in self.raw():
            item = self.decode(raw)
            if item is not None:
                yield item
