"""Look at a data set: a PNG grid of its first clips, one captioned row per clip."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from microcinema.core.errors import check
from microcinema.core.video_io import read_video, save_grid
from microcinema.data.video_dataset import load_caption_table


def write_table_grid(table: str | Path, out: str | Path, *, num: int = 8, num_frames: int = 9,
                     fps: float = 2.0) -> Path:
    """Write ``num`` clips of a caption table (or a folder holding ``captions.jsonl``) as a PNG grid.

    Row ``i`` shows clip ``i`` at times ``0, 1/fps, ...`` (``num_frames`` of them; the last frame repeats
    if the clip is shorter), captioned with its text.
    """
    table = Path(table)
    if table.is_dir():
        table = table / "captions.jsonl"
    check(num >= 1 and num_frames >= 1 and fps > 0, "num and num_frames must be >= 1 and fps > 0")
    rows = load_caption_table(table)[:num]
    times = np.arange(num_frames) / fps
    clips = [read_video(row.file, times)[0] for row in rows]
    return save_grid(out, clips, captions=[row.text for row in rows])
