"""What every training task shares: configs, the embedded weights' location, fp16 export with provenance."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file, save_file

from microcinema.core.errors import MicroCinemaError
from microcinema.training.trainer import TrainConfig

from microcinema.embedded import CONFIG_DIR, WEIGHTS_DIR, embedded_path  # noqa: F401 (re-exported)

PACKAGE_DIR = Path(__file__).resolve().parents[1]


def load_config(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A training config: a shipped name (``vae``, ``t2i``, ...) or a path to a YAML file."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
        raise MicroCinemaError(f"config {name_or_path!r} not found: give a YAML file or a shipped config ({shipped})")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise MicroCinemaError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict) or "train" not in config or "model" not in config:
        raise MicroCinemaError(f"config {path} must be a mapping with 'model' and 'train' sections")
    config["_path"] = str(path)
    return config


def require_sections(config: dict[str, Any], *names: str) -> None:
    """A clear error when a config lacks sections a task needs."""
    missing = [n for n in names if not isinstance(config.get(n), dict)]
    if missing:
        raise MicroCinemaError(f"config {config.get('_path')} lacks section(s) {', '.join(missing)}; "
                               "see the shipped configs in microcinema/embedded/configs/ for the layout")


def train_config(config: dict[str, Any], output_dir: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """The ``train:`` section as a :class:`TrainConfig` (unknown keys are an error), with CLI overrides."""
    section = {**config["train"], **{k: v for k, v in overrides.items() if v is not None}}
    if "adam_betas" in section:
        section["adam_betas"] = tuple(section["adam_betas"])
    try:
        return TrainConfig(output_dir=str(output_dir), **section)
    except TypeError as error:
        raise MicroCinemaError(f"bad 'train' section in {config.get('_path')}: {error}") from None


def build_latent_cache(config: dict[str, Any], output_dir: str | os.PathLike, vae: Any, dataset: Any, kind: str,
                       batch_size: int = 64):
    """The run's latent cache (``output_dir/latents.safetensors``) of ``dataset`` encoded by ``vae`` and the
    config's text encoder; rebuilt only when data, VAE, text encoder or ``kind`` change."""
    from microcinema.data.latent_cache import LatentCache, encode_dataset
    from microcinema.core.text_encoders import load_text_encoder

    name = config.get("text_encoder", "minilm")
    fingerprint = {"data": config["data"], "vae": config.get("vae"), "vae_config": dict(vae.config),
                   "text_encoder": name, "kind": kind}
    return LatentCache.build_or_load(
        Path(output_dir) / "latents.safetensors",
        lambda: encode_dataset(dataset, vae, load_text_encoder(name, cache_size=0), batch_size=batch_size), fingerprint)




def export_fp16(model: Any, export_dir: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """Save ``model`` as fp16 safetensors (diffusers layout) plus ``training.json`` (how it was made, and its
    evaluation numbers), replacing ``export_dir`` atomically."""
    export_dir = Path(export_dir)
    tmp = export_dir.with_name(f".{export_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    for weights in tmp.glob("*.safetensors"):  # cast the files, not the model (which stays usable in fp32)
        tensors = load_file(str(weights))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, str(weights),
                  metadata={"format": "pt"})
    (tmp / "training.json").write_text(json.dumps(provenance, indent=2, default=str) + "\n")
    if export_dir.exists():
        shutil.rmtree(export_dir)
    os.replace(tmp, export_dir)
    return export_dir


def provenance(config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """The exact command, config, code version and time of a training run."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=PACKAGE_DIR,
                                timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    command = config.get("_command") or " ".join(["python", *sys.argv])
    return {"command": command, "config": {k: v for k, v in config.items()
            if not k.startswith("_")}, "config_file": config.get("_path"), "git_commit": commit,
            "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def write_evaluation(export_dir: str | os.PathLike, evaluation: dict[str, Any]) -> None:
    """Record (more) evaluation numbers in an exported model's ``training.json``."""
    path = Path(export_dir) / "training.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["evaluation"] = {**record.get("evaluation", {}), **evaluation}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
