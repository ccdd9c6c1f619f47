"""The procedural domain as data: an on-the-fly torch ``Dataset`` and an on-disk writer.

Both produce the same clips for the same seed. On disk a clip is an H.264 mp4 (``yuv444p``, no chroma
subsampling, ``crf`` :data:`DATASET_CRF`), so the files differ from the in-memory frames only by that
codec's loss (bounded by ``tests/test_synthetic_dataset.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from microcinema.core.errors import MicroCinemaError, check
from microcinema.data.synthetic import (DIGIT_WEIGHT, HELD_OUT_COMBOS, SPLITS, ClipSpec, make_clip, render_frame,
                                        sample_clip, sample_turning_clip)

#: H.264 settings of the on-disk data set: 4:4:4 chroma (small coloured objects survive) and a low crf.
DATASET_CRF = 10
DATASET_PIX_FMT = "yuv444p"


def frames_to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float tensor (T, 3, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


class SyntheticVideoDataset(Dataset):
    """Clips of the procedural domain, rendered on the fly (nothing on disk).

    Item ``i`` is clip ``i`` of ``split`` for ``seed``, rendered with ``num_frames`` frames at ``fps``
    (defaults: MicroCinema's base model, 9 frames at 2 fps). Items are dicts shaped like
    :class:`~microcinema.data.video_dataset.VideoCaptionDataset`'s: ``pixel_values`` (F, 3, H, W) in
    [-1, 1] and ``text``, plus the ground truth: ``colour``, ``object``, ``motion``, ``background``
    (strings), ``centers`` (F, 2) and ``sizes`` (F,) in pixels. ``digit_weight``: see
    :func:`~microcinema.data.synthetic.sample_clip`.

    ``turn_fraction``: that fraction of the clips (drawn per index) are turning clips
    (:func:`~microcinema.data.synthetic.sample_turning_clip`), and every item carries ``lead_in``, the first
    frame its caption describes (0 for a plain clip). Only auto-regressive training (ART-V) knows to skip
    the lead-in; 0 (the default) gives exactly the plain clips and no ``lead_in`` key.
    """

    def __init__(self, num: int, *, seed: int = 0, split: str = "train", num_frames: int = 9, fps: float = 2.0,
                 size: int = 64, digit_weight: float = DIGIT_WEIGHT, turn_fraction: float = 0.0) -> None:
        check(num >= 1, f"num must be >= 1, got {num}")
        check(0 <= turn_fraction <= 1, f"turn_fraction must be in [0, 1], got {turn_fraction!r}")
        check(split in SPLITS, f"unknown split {split!r}: allowed are {', '.join(SPLITS)}")
        self.num, self.seed, self.split = num, seed, split
        self.num_frames, self.fps, self.size, self.digit_weight = num_frames, fps, size, digit_weight
        self.turn_fraction = turn_fraction
        self._spec(0)  # validates the settings

    def __len__(self) -> int:
        return self.num

    def _spec(self, index: int) -> ClipSpec:
        if not 0 <= index < self.num:
            raise IndexError(index)
        kwargs = dict(seed=self.seed, split=self.split, num_frames=self.num_frames, fps=self.fps, size=self.size,
                      digit_weight=self.digit_weight)
        if self.turn_fraction > 0 and np.random.default_rng([self.seed, index, 4]).random() < self.turn_fraction:
            return sample_turning_clip(index, **kwargs)
        return sample_clip(index, **kwargs)

    def __getitem__(self, index: int) -> dict:
        spec = self._spec(index)
        frames = np.stack([render_frame(spec, i) for i in range(spec.num_frames)])
        return {"pixel_values": frames_to_tensor(frames), "text": spec.caption, **_ground_truth(spec),
                "centers": torch.tensor(spec.centers, dtype=torch.float32),
                "sizes": torch.tensor(spec.sizes, dtype=torch.float32),
                **({"lead_in": spec.lead_in} if self.turn_fraction > 0 else {})}


class SyntheticKeyFrameDataset(SyntheticVideoDataset):
    """Key frames of the procedural clips, for text-to-image training (stage one of MicroCinema).

    Item ``i`` is the centre frame of clip ``i`` rendered as ``num_frames`` at ``fps`` (default: frame 4 of
    9 at 2 fps, the frame MicroCinema's stage two is conditioned on, paper section 3.1), rendered alone.
    ``pixel_values`` is (3, H, W) in [-1, 1]; ``center`` (2,) and ``size`` () are its ground truth.
    """

    def __getitem__(self, index: int) -> dict:
        spec = self._spec(index)
        key = spec.num_frames // 2
        frame = frames_to_tensor(render_frame(spec, key)[None])[0]
        return {"pixel_values": frame, "text": spec.caption, **_ground_truth(spec),
                "center": torch.tensor(spec.centers[key], dtype=torch.float32),
                "size": torch.tensor(spec.sizes[key], dtype=torch.float32)}


def _ground_truth(spec: ClipSpec) -> dict:
    return {"colour": spec.colour, "object": spec.object, "motion": spec.motion, "background": spec.background}


def _prepare_output_dir(out: Path) -> Path:
    out = Path(out)
    try:
        (out / "clips").mkdir(parents=True, exist_ok=True)
        probe = out / ".microcinema-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise MicroCinemaError(f"cannot write to output folder {out}: {error.strerror or error}; "
                               "choose a folder you can create and write") from None
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_synthetic_dataset(out: str | Path, *, num: int, num_frames: int = 33, fps: float = 8.0, size: int = 64,
                            seed: int = 0, split: str = "train", crf: int = DATASET_CRF,
                            pix_fmt: str = DATASET_PIX_FMT, preview: int = 8, progress: bool = True) -> Path:
    """Write ``num`` clips to ``out``: ``clips/*.mp4``, ``captions.jsonl``, ``dataset.json`` and ``preview.png``.

    ``captions.jsonl`` has one row per clip: ``file`` (relative to ``out``), ``caption``, ``fps`` and the
    ground truth (``object``, ``colour``, ``background``, ``motion``, per-frame ``centers`` [x, y] and
    ``sizes`` in pixels, ``digit_instance`` for digits). It is the JSONL layout that
    :class:`~microcinema.data.video_dataset.VideoCaptionDataset` reads. Returns its path.
    """
    from microcinema.core.video_io import save_grid, write_video

    check(num >= 1, f"--num must be >= 1, got {num}")
    check(0 <= crf <= 51, f"crf must be between 0 (lossless) and 51, got {crf}")
    sample_clip(0, seed=seed, split=split, num_frames=num_frames, fps=fps, size=size)  # validate before writing
    out = _prepare_output_dir(Path(out))

    rows, shown, captions = [], [], []
    for index in tqdm(range(num), desc=f"synth {split}", unit="clip", disable=not progress):
        frames, spec = make_clip(index, seed=seed, split=split, num_frames=num_frames, fps=fps, size=size)
        name = f"clips/{split}_{seed}_{index:06d}.mp4"
        write_video(out / name, frames, fps, crf=crf, pix_fmt=pix_fmt)
        rows.append({"file": name, **spec.to_row()})
        if index < preview:
            shown.append(frames[np.linspace(0, num_frames - 1, min(num_frames, 9)).round().astype(int)])
            captions.append(spec.caption)

    table = out / "captions.jsonl"
    _write_text_atomic(table, "".join(json.dumps(row) + "\n" for row in rows))
    settings = {"generator": "microcinema.data.synthetic", "num": num, "num_frames": num_frames, "fps": fps,
                "size": size, "seed": seed, "split": split, "codec": "h264", "pix_fmt": pix_fmt, "crf": crf,
                "held_out_combos": [list(c) for c in HELD_OUT_COMBOS]}
    _write_text_atomic(out / "dataset.json", json.dumps(settings, indent=2) + "\n")
    if shown:
        save_grid(out / "preview.png", shown, captions=captions)
    return table
