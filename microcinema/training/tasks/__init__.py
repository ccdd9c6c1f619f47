"""Training tasks: one module per model of the embedded family, all on the shared :class:`~microcinema.training.trainer.Trainer`.

``microcinema train NAME --config CONFIG`` runs the task's function ``(config, output_dir, export, **overrides)``.
"""

from __future__ import annotations

import importlib

#: task name -> ("module:function", what it trains)
TASKS: dict[str, tuple[str, str]] = {
    "vae": ("microcinema.training.tasks.vae:train", "the tiny VAE (AutoencoderKL) on procedural frames"),
    "t2i": ("microcinema.training.tasks.t2i:train", "the tiny text-to-image U-Net (stage one) on procedural key frames"),
    "video": ("microcinema.systems.microcinema.task:train_video",
              "the image&text-to-video base model (stage two, AppearNet + noise prior)"),
    "interp": ("microcinema.systems.microcinema.task:train_interp", "the x4 temporal interpolation model (stage two)"),
    "artv": ("microcinema.systems.artv.task:train",
             "ART-V: the auto-regressive frame model (T2I-Adapter references, anchor tokens, masked diffusion)"),
    "classifier": ("microcinema.training.tasks.classifier:train", "the domain video classifier (features of the domain FVD)"),
}


def run_task(name: str, config: dict, output_dir: str, export: str | None = None, command: str | None = None,
             **overrides) -> dict:
    """Train task ``name``; ``command`` (the CLI line) is recorded in the export's ``training.json``."""
    module, function = TASKS[name][0].split(":")
    if command:
        config = {**config, "_command": command}
    return getattr(importlib.import_module(module), function)(config, output_dir, export=export, **overrides)
