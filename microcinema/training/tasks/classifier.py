"""Train the domain video classifier (:mod:`microcinema.eval.domain_classifier`), the feature network of
the domain FVD (FVD of Unterthiner et al. 2018 with a network trained on the procedural domain instead of
I3D on Kinetics).

Data: procedural clips of the training split rendered on the fly (9 frames at 2 fps, 64x64). Loss: the sum
of the three heads' cross-entropies (colour, object, motion). After training, the accuracy of every head is
measured on the held-out split (combinations never seen in training) and on a fresh seed of the training
split, and recorded in the export's ``training.json`` (fp32 weights and, when exported, the fp16 export).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from microcinema.data.synthetic_dataset import SyntheticVideoDataset
from microcinema.core.errors import check
from microcinema.eval.domain_classifier import HEAD_CLASSES, DomainVideoClassifier, collate_clips, domain_accuracy
from microcinema.training.trainer import Trainer
from microcinema.training.common import check_sections, export_fp16, provenance, require_sections, train_config, write_evaluation


def _loss(model: nn.Module, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    output = model(batch["pixel_values"])
    losses = {head: F.cross_entropy(getattr(output, head), batch[head]) for head in HEAD_CLASSES}
    return {"loss": sum(losses.values()), **{f"ce_{head}": value.detach() for head, value in losses.items()}}


def _evaluate(model: DomainVideoClassifier, config: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-head accuracy on the held-out split and on a training-split seed unseen in training."""
    data, evaluation = config["data"], config.get("eval", {})
    clip = {"num_frames": data["num_frames"], "fps": data["fps"], "size": data["size"]}
    num = evaluation.get("num", 512)
    return {"heldout": domain_accuracy(model, num, seed=evaluation.get("heldout_seed", 1234), split="heldout", **clip),
            "train_split": domain_accuracy(model, num, seed=evaluation.get("train_seed", 4321), split="train", **clip)}


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
          **overrides: Any) -> dict[str, Any]:
    """Train, evaluate per-head accuracy; export fp16 weights (with ``training.json``) when ``export`` is given."""
    require_sections(config, "model", "data")
    check_sections(config, {"model": None, "data": ["type", "num", "seed", "num_frames", "fps", "size"],
                            "eval": ["num", "heldout_seed", "train_seed"], "train": None}, model=DomainVideoClassifier)
    train_settings = train_config(config, output_dir, **overrides)  # validated before any work
    started = time.time()
    data = config["data"]
    evaluation = config.get("eval", {})
    check(data["seed"] != evaluation.get("train_seed", 4321),
          f"eval.train_seed must differ from data.seed ({data['seed']}): it measures accuracy on unseen clips")
    dataset = SyntheticVideoDataset(data["num"], seed=data["seed"], split="train", num_frames=data["num_frames"],
                                    fps=data["fps"], size=data["size"])
    model = DomainVideoClassifier(**{**config["model"], "sample_size": data["size"]})
    result = Trainer(model, dataset, _loss, train_settings, collate_fn=collate_clips).train()
    model = DomainVideoClassifier.from_pretrained(result.final_dir).eval()
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "params": sum(p.numel() for p in model.parameters()), "feature_dim": model.feature_dim,
              "accuracy_fp32": _evaluate(model, config)}
    if export:
        export_fp16(model, export, provenance(config, evaluation=report))
        shipped = DomainVideoClassifier.from_pretrained(str(export), torch_dtype=torch.float32).eval()
        report["accuracy_fp16_export"] = _evaluate(shipped, config)
        write_evaluation(export, report)
    return report
