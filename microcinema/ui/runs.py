"""Past runs of the web UI: one folder per finished video with ``video.mp4``, ``video.gif``, ``preview.gif`` (for
the gallery) and ``settings.json`` (the system, every setting, the seed, and the command line that makes the same
video), so any result can be reproduced."""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from microcinema.core.video_io import write_video

#: Width the gallery preview is scaled up to (the embedded videos are 64x64).
PREVIEW_WIDTH = 192


@dataclass
class Run:
    """A finished run: its folder and settings."""

    folder: Path
    settings: dict[str, Any]

    @property
    def mp4(self) -> Path:
        return self.folder / "video.mp4"

    @property
    def gif(self) -> Path:
        return self.folder / "video.gif"

    @property
    def preview(self) -> Path:
        return self.folder / "preview.gif"

    @property
    def seed(self) -> int:
        return int(self.settings["seed"])

    def caption(self) -> str:
        s = self.settings
        return f"{s['system']} · seed {s['seed']} · {s.get('title', '')}"[:120]


def _upscale(frames: np.ndarray, width: int) -> np.ndarray:
    """Nearest-neighbour upscaling of uint8 ``(F, H, W, 3)`` frames to about ``width`` pixels wide."""
    factor = max(1, width // frames.shape[2])
    return frames.repeat(factor, axis=1).repeat(factor, axis=2)


class RunStore:
    """Runs under one folder, newest first."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._lock = threading.Lock()

    def save(self, system: str, title: str, frames: np.ndarray, fps: float, settings: dict[str, Any],
             images: dict[str, Any] | None = None) -> Run:
        """Write a run: uint8 ``frames (F, H, W, 3)`` at ``fps`` as mp4 and gif, a preview, ``settings`` (with
        ``system``, ``title``, ``fps``, ``num_frames`` and the time added) and ``images`` (PIL images by file
        name, e.g. the key frame)."""
        slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:40] or "run"
        with self._lock:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder = self.root / f"{stamp}-{system}-{slug}"
            n = 1
            while folder.exists():
                n += 1
                folder = self.root / f"{stamp}-{system}-{slug}-{n}"
            folder.mkdir(parents=True)
        record = {"system": system, "title": title, **settings, "fps": float(fps), "num_frames": int(len(frames)),
                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        run = Run(folder, record)
        write_video(run.mp4, frames, fps)
        write_video(run.gif, frames, fps)
        write_video(run.preview, _upscale(frames, PREVIEW_WIDTH), fps)
        for name, image in (images or {}).items():
            image.save(folder / name)
        (folder / "settings.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        return run

    def list(self, limit: int = 60) -> list[Run]:
        """The newest ``limit`` complete runs (a folder whose settings.json is missing or broken is skipped)."""
        if not self.root.is_dir():
            return []
        runs = []
        for folder in sorted(self.root.iterdir(), reverse=True):
            try:
                settings = json.loads((folder / "settings.json").read_text())
            except (OSError, ValueError):
                continue
            run = Run(folder, settings)
            if run.mp4.is_file() and run.preview.is_file():
                runs.append(run)
            if len(runs) >= limit:
                break
        return runs


__all__ = ["PREVIEW_WIDTH", "Run", "RunStore"]
