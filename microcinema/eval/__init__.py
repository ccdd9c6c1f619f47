"""Evaluation on the procedural domain: judging generated frames and videos against the prompt's ground truth.

The names below are re-exported lazily from :mod:`microcinema.eval.judge` (so ``python -m
microcinema.eval.judge`` runs cleanly and importing the package costs nothing).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "FrameJudgement",
    "ObjectClassifier",
    "VideoJudgement",
    "accuracy_table",
    "default_object_classifier",
    "judge_colour",
    "judge_frame",
    "judge_frames",
    "judge_video",
    "score_against",
    "segment",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(".judge", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
