"""MicroCinema: text-to-video diffusion (MicroCinema, ART-V, recurrent few-shot) with an embedded tiny model family.

``from microcinema import MicroCinemaPipeline, VideoUNet`` (imported on first use, so ``import microcinema`` and
the command line stay light). Importing ``MicroCinemaPipeline`` also lets ``diffusers.DiffusionPipeline
.from_pretrained`` load its saved folders.
"""

from __future__ import annotations

from typing import Any

from microcinema.core.errors import MicroCinemaError

__version__ = "0.1.0"

_LAZY = {
    "MicroCinemaPipeline": "microcinema.systems.microcinema.pipeline",
    "VideoDiffusionPipeline": "microcinema.pipelines.base",
    "VideoPipelineOutput": "microcinema.pipelines.base",
    "VideoUNet": "microcinema.models.unet3d",
}

__all__ = ["MicroCinemaError", "MicroCinemaPipeline", "VideoDiffusionPipeline", "VideoPipelineOutput", "VideoUNet",
           "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'microcinema' has no attribute {name!r}")
