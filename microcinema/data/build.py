"""The training data of a diffusion task from its config's ``data:`` section, encoded into a latent cache.

* ``procedural``: the procedural domain (:mod:`microcinema.data.synthetic_dataset`), the same data on every
  process, one cache file ``output_dir/latents.safetensors`` (the trainer splits each global batch across
  processes).
* ``captions`` / ``webdataset``: real videos, **split across processes** (each process encodes only its own
  rows or shards, :mod:`microcinema.data.webdataset`) into its own chunked, resumable cache
  ``output_dir/latents/<kind>-rank<r>-of-<P>/`` (:func:`~microcinema.data.latent_cache.build_chunked_cache`);
  the trainer then draws each process's batches from its own cache (``Trainer(local_data=True)``).
  Items carry their sample key (the table's video path, the shard sample's ``__key__``), which the trainer
  records per process (``output_dir/samples_seen/rank_<r>.json``).
  A caption table with fewer rows than processes is refused up front, on every process. **Not covered:** a
  process whose share has rows (or shards) but no *usable* sample (every video too short or undecodable, or
  fewer WebDataset samples than processes) raises its "no usable sample" error alone, and the other
  processes then wait for it at the next collective call until the launcher's timeout; a one-process run on
  the same data (``data: limit`` keeps it short) shows the error when a launch hangs at the start.

``kind``: ``"clips"`` (video, interp: ``num_frames`` frames at ``fps``) or ``"keyframes"`` (t2i: one frame
per video, its centre frame).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from microcinema.core.errors import MicroCinemaError

__all__ = ["real_samples", "build_real_cache", "process_layout", "process_state"]


def process_state() -> Any:
    """accelerate's ``PartialState``, created before the trainer's ``Accelerator`` (which then shares it).
    CPU processes of a distributed launch (``WORLD_SIZE > 1``, ``ACCELERATE_USE_CPU=1`` or no GPU) form a
    gloo group (accelerate's ``MULTI_CPU``); without this a ``torchrun`` / ``accelerate launch --multi_gpu``
    on a machine with no GPU would start independent single processes that each train on all the data."""
    import os

    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or (distributed and not torch.cuda.is_available())
    return PartialState(cpu=cpu)


def process_layout() -> tuple[int, int]:
    """``(process_index, num_processes)`` of this process (1 process outside a distributed launch)."""
    state = process_state()
    return state.process_index, state.num_processes


def _keyframe(item: dict | None) -> dict | None:
    if item is not None:
        item = {**item, "pixel_values": item["pixel_values"][0]}
    return item


def real_samples(data: Any, kind: str, process_index: int = 0, num_processes: int = 1
                 ) -> Callable[[int], Iterator[tuple[int, dict | None]]]:
    """``samples(start)`` for :func:`~microcinema.data.latent_cache.build_chunked_cache`: this process's
    share of a ``captions`` or ``webdataset`` data section, as ``(position, item or None)``."""
    clip = dict(num_frames=1, sample="center") if kind == "keyframes" else dict(num_frames=data.num_frames,
                                                                                  sample=data.sample)
    settings = dict(fps=data.fps, size=data.size if isinstance(data.size, int) else tuple(data.size),
                    too_short=data.too_short, seed=data.seed, **clip)
    fix = _keyframe if kind == "keyframes" else (lambda item: item)
    if data.type == "webdataset":
        from microcinema.data.webdataset import WebDatasetClips

        clips = WebDatasetClips(data.shards, process_index=process_index, num_processes=num_processes, **settings)

        def shard_samples(start: int) -> Iterator[tuple[int, dict | None]]:
            for raw in clips.raw(start):
                yield raw.position, fix(clips.decode(raw))

        return shard_samples
    if data.type == "captions":
        from microcinema.data.video_dataset import VideoCaptionDataset, VideoSkipped

        table = VideoCaptionDataset(data.table, data.video_root, **settings)
        if len(table) < num_processes:  # checked on every process: none is left waiting for the others
            raise MicroCinemaError(f"caption table {data.table} has {len(table)} rows for {num_processes} "
                                   "processes; every process needs at least one: give more rows or fewer processes")
        mine = list(range(process_index, len(table), num_processes))
        root = Path(data.video_root) if data.video_root else Path(data.table).parent

        def table_samples(start: int) -> Iterator[tuple[int, dict | None]]:
            for position in range(start, len(mine)):
                i = mine[position]
                try:
                    item = table.load_item(i)
                except VideoSkipped as skip:
                    table.mark_bad(i, skip)
                    yield position, None
                    continue
                file = Path(item.pop("file"))
                item["key"] = str(file.relative_to(root)) if file.is_relative_to(root) else str(file)
                yield position, fix(item)

        return table_samples
    raise MicroCinemaError(f"data type {data.type!r} is not a real-video source (captions, webdataset)")


def build_real_cache(data: Any, kind: str, output_dir: str | Path, vae: Any, text_encoder: Any,
                     fingerprint: dict[str, Any], *, batch_size: int = 16, progress: bool = True):
    """This process's :class:`~microcinema.data.latent_cache.LatentCache` of a real-video data section."""
    from microcinema.data.latent_cache import build_chunked_cache, encode_dataset

    rank, world = process_layout()
    root = Path(output_dir) / "latents" / f"{kind}-rank{rank:03d}-of-{world:03d}"
    settings = dataclasses.asdict(data)
    return build_chunked_cache(
        root, real_samples(data, kind, rank, world),
        lambda items: encode_dataset(items, vae, text_encoder, batch_size=batch_size, progress=False),
        {**fingerprint, "data": settings, "kind": kind, "rank": rank, "world": world},
        chunk_size=data.cache_chunk, limit=data.limit, progress=progress)
