"""Tuning clips for few-shot motion tuning: the user's own (a caption table or a folder of videos with one caption),
read and checked, and procedural clips of the motions the embedded family never saw
(:data:`~microcinema.data.synthetic.FEWSHOT_MOTIONS`) written to disk like any caption table.

Bad input is a one-line :class:`~microcinema.core.errors.MicroCinemaError` naming the file (issue 18 item 9):
fewer than 2 clips, a missing or unreadable video, a missing caption. A clip shorter than the frames asked for
is skipped with a warning when at least 2 clips remain, else it is an error that says how long it is.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from microcinema.core.errors import MicroCinemaError, check

#: Fewest clips a tuning set may have (the paper tunes on 8-16).
MIN_CLIPS = 2
#: The paper's range of clips per motion (section 4.1); outside it a note is printed, not an error.
RECOMMENDED_CLIPS = (8, 16)
#: File suffixes read as videos from a folder.
VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".avi", ".mkv", ".gif", ".m4v")


@dataclass
class TuningClip:
    """One tuning clip: ``pixels`` ``(F, 3, H, W)`` in [-1, 1], its caption and file."""

    pixels: torch.Tensor
    text: str
    file: str


def _rows(data: Path, caption: str | None) -> list[tuple[Path, str, float | None, str]]:
    """``(file, text, fps override, where)`` for every clip of a table or folder."""
    from microcinema.data.video_dataset import LAYOUTS, load_caption_table

    if caption is not None:
        check(caption.strip() != "", "--caption is empty: describe the motion of the clips, e.g. 'a ball bouncing'")
    if data.is_dir():
        files = sorted(p for p in data.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        check(bool(files) or not (data / "captions.jsonl").is_file(),
              f"{data} holds no videos but a captions.jsonl: pass --data {data / 'captions.jsonl'}")
        check(bool(files), f"no videos in {data} (looked for {', '.join(VIDEO_SUFFIXES)})")
        check(caption is not None, f"missing caption: a folder of videos ({data}) needs --caption TEXT describing "
                                   "their motion (or give a caption table, JSONL {\"file\", \"text\"} or WebVid CSV)")
        return [(f, caption.strip(), None, str(f)) for f in files]
    check(data.exists(), f"tuning data not found: {data} (give a caption table, .jsonl or .csv, or a folder of videos)")
    suffixes = [s for group in LAYOUTS.values() for s in group]
    check(data.suffix.lower() in suffixes,
          f"{data} is neither a folder of videos nor a caption table ({', '.join(suffixes)})")
    rows = []
    for number, row in enumerate(load_caption_table(data), start=1):
        text = caption.strip() if caption is not None else row.text
        check(bool(text), f"missing caption: row {number} of {data} ({row.file.name}) has an empty text; give every "
                          "clip a caption, or one for all with --caption")
        rows.append((row.file, text, row.fps, f"row {number} of {data} ({row.file})"))
    return rows


def read_tuning_clips(data: str | os.PathLike, *, num_frames: int, fps: float, size: tuple[int, int],
                      caption: str | None = None, log: bool = True) -> list[TuningClip]:
    """The tuning clips of ``data`` (a caption table or a folder of videos with ``caption``): the first
    ``num_frames`` frames at ``fps`` of each video (Tune-A-Video's sampling from the start), resized and
    centre-cropped to ``size`` (height, width). See the module docstring for what is an error."""
    from microcinema.data.video_dataset import ClipReader, VideoSkipped

    rows = _rows(Path(data), caption)
    check(len(rows) >= MIN_CLIPS, f"only {len(rows)} clip in {data}: few-shot tuning needs at least {MIN_CLIPS} clips "
                                  f"of the same motion ({RECOMMENDED_CLIPS[0]}-{RECOMMENDED_CLIPS[1]} recommended)")
    reader = ClipReader(num_frames, fps, size, sample="start", too_short="skip")
    clips, short, bad = [], [], []
    for i, (file, text, row_fps, where) in enumerate(rows):
        try:
            item = reader.read(file, text, [0, i], row_fps)
        except VideoSkipped as skip:
            (short if skip.reason == "too_short" else bad).append(f"{where}: {skip.detail}")
            continue
        clips.append(TuningClip(pixels=item["pixel_values"], text=text, file=str(file)))
    if bad:
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise MicroCinemaError(f"unreadable video {bad[0]}{more}; fix or remove it from the tuning data")
    need = f"{num_frames} frames at {fps:g} fps ({(num_frames - 1) / fps:g} s)"
    if len(clips) < MIN_CLIPS:
        raise MicroCinemaError(f"{len(short)} of {len(rows)} clips are shorter than {need}, leaving {len(clips)}: "
                               f"first {short[0]}; ask for fewer --frames or a higher --fps, or give longer clips")
    for line in short:
        warnings.warn(f"skipping a clip shorter than {need}: {line}")
    if log and not RECOMMENDED_CLIPS[0] <= len(clips) <= RECOMMENDED_CLIPS[1]:
        print(f"fewshot: note: {len(clips)} clips; the paper tunes on {RECOMMENDED_CLIPS[0]}-{RECOMMENDED_CLIPS[1]} "
              "clips of one motion")
    return clips


def write_fewshot_clips(out: str | os.PathLike, motion: str, *, num: int = 12, num_frames: int = 33,
                        fps: float = 8.0, size: int = 64, seed: int = 0, colours: Sequence[str] | None = None,
                        objects: Sequence[str] | None = None, preview: int = 8) -> Path:
    """Write ``num`` procedural clips of one few-shot ``motion``
    (:func:`~microcinema.data.synthetic.sample_fewshot_clip`) to ``out``: ``clips/*.mp4``, ``captions.jsonl``
    (``file``, ``text``, ``caption`` and the ground truth: colour, object, background, motion, per-frame
    ``centers`` and ``sizes``), ``dataset.json`` and ``preview.png``. ``colours`` / ``objects`` restrict what the
    clips show (e.g. a few, so that a tuned model can be tested on the others). Returns the table's path."""
    from microcinema.core.video_io import save_grid, write_video
    from microcinema.data.synthetic import render_clip, sample_fewshot_clip
    from microcinema.data.synthetic_dataset import DATASET_CRF, DATASET_PIX_FMT

    check(isinstance(num, int) and num >= 1, f"--num must be an integer >= 1, got {num!r}")
    specs = [sample_fewshot_clip(i, motion, seed=seed, num_frames=num_frames, fps=fps, size=size, colours=colours,
                                 objects=objects) for i in range(num)]
    out = Path(out)
    try:
        (out / "clips").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise MicroCinemaError(f"cannot write to output folder {out}: {error.strerror or error}") from None
    rows, shown = [], []
    for spec in specs:
        frames = render_clip(spec)
        name = f"clips/{motion}_{seed}_{spec.index:06d}.mp4"
        write_video(out / name, frames, fps, crf=DATASET_CRF, pix_fmt=DATASET_PIX_FMT)
        rows.append({"file": name, "text": spec.caption, **spec.to_row()})
        if len(shown) < preview:
            shown.append(frames[np.linspace(0, num_frames - 1, min(num_frames, 9)).round().astype(int)])
    table = out / "captions.jsonl"
    tmp = table.with_name(".captions.jsonl.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, table)
    settings = {"generator": "microcinema.data.synthetic.sample_fewshot_clip", "motion": motion, "num": num,
                "num_frames": num_frames, "fps": fps, "size": size, "seed": seed,
                "colours": sorted({s.colour for s in specs}), "objects": sorted({s.object for s in specs})}
    (out / "dataset.json").write_text(json.dumps(settings, indent=2) + "\n")
    if shown:
        save_grid(out / "preview.png", shown, captions=[s.caption for s in specs[:len(shown)]])
    return table


__all__ = ["MIN_CLIPS", "RECOMMENDED_CLIPS", "VIDEO_SUFFIXES", "TuningClip", "read_tuning_clips",
           "write_fewshot_clips"]
