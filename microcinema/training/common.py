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
REPO_DIR = PACKAGE_DIR.parent


def repo_relative(path: str | os.PathLike | None) -> str | None:
    """``path`` relative to the repository root when it lies inside it (so records do not hold a machine's
    absolute paths), else as given."""
    if path is None:
        return None
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_DIR)) if resolved.is_relative_to(REPO_DIR) else str(path)


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
    import dataclasses

    from microcinema.training.config import check_keys

    check_keys(section, [f.name for f in dataclasses.fields(TrainConfig) if f.name != "output_dir"], "train",
               config.get("_path"))
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

    name = config.get("text_encoder") or "minilm"
    data = {k: v for k, v in config["data"].items() if k != "type"}  # procedural: as before the data types
    fingerprint = {"data": data, "vae": config.get("vae"), "vae_config": dict(vae.config),
                   "text_encoder": name, "kind": kind}
    from microcinema.data.build import process_state

    with process_state().main_process_first():  # one process encodes, the others load its file
        return LatentCache.build_or_load(
            Path(output_dir) / "latents.safetensors",
            lambda: encode_dataset(dataset, vae, load_text_encoder(name, cache_size=0), batch_size=batch_size),
            fingerprint)


def build_task_cache(config: dict[str, Any], data: Any, output_dir: str | os.PathLike, vae: Any, text_encoder: str,
                     kind: str, procedural: Any, batch_size: int = 64, mixed_precision: str = "no"
                     ) -> tuple[Any, bool]:
    """A diffusion task's latent cache and whether it is this process's own share (real data, split across
    processes: ``Trainer(local_data=True)``). ``procedural()`` builds the procedural data set
    (:mod:`microcinema.data.build` explains both paths). Real data is encoded on this process's device
    (accelerate's ``PartialState().device``: each GPU encodes its own share) in fp32, or on a GPU in fp16 /
    bf16 when ``mixed_precision`` says so; the cache is stored on the CPU in fp32 (latents) and fp16 (text states)."""
    if data.type == "procedural":
        return build_latent_cache({**config, "text_encoder": text_encoder}, output_dir, vae, procedural(), kind,
                                  batch_size), False
    from microcinema.core.text_encoders import load_text_encoder
    from microcinema.data.build import build_real_cache, process_state

    fingerprint = {"vae": config.get("vae"), "vae_config": dict(vae.config), "text_encoder": text_encoder}
    device = process_state().device
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    dtype = torch.float32 if device.type == "cpu" else half  # on a CPU: fp32, the cache as before
    encoder = load_text_encoder(text_encoder, cache_size=0)
    vae.to(device, dtype), encoder.to(device, dtype)
    try:
        return build_real_cache(data, kind, output_dir, vae, encoder, fingerprint, batch_size=batch_size), True
    finally:
        vae.to("cpu", torch.float32)  # the caller keeps the VAE (its config); the encoders' memory is freed




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
            if not k.startswith("_")}, "config_file": repo_relative(config.get("_path")), "git_commit": commit,
            "torch": torch.__version__, "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


def write_evaluation(export_dir: str | os.PathLike, evaluation: dict[str, Any]) -> None:
    """Record (more) evaluation numbers in an exported model's ``training.json``."""
    path = Path(export_dir) / "training.json"
    record = json.loads(path.read_text()) if path.exists() else {}
    record["evaluation"] = {**record.get("evaluation", {}), **evaluation}
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")


# ------------------------------------------------------------------------------ diffusion-task components


def is_pipeline_folder(path: str | os.PathLike | None) -> bool:
    """A diffusers pipeline folder (SD layout: ``unet/``, ``vae/``, ``text_encoder/``, ``scheduler/``)."""
    return path is not None and path != "embedded" and (
        (Path(path) / "model_index.json").is_file() or (Path(path) / "unet" / "config.json").is_file())


def load_vae(name_or_path: str | None) -> Any:
    """The frozen VAE: ``embedded`` (the tiny family's), an ``AutoencoderKL`` folder, or a pipeline folder
    (its ``vae/``)."""
    from diffusers import AutoencoderKL

    name_or_path = name_or_path or "embedded"
    path = embedded_path("vae") if name_or_path == "embedded" else Path(name_or_path)
    subfolder = "vae" if (path / "vae" / "config.json").is_file() else None
    try:
        vae = AutoencoderKL.from_pretrained(path, subfolder=subfolder, torch_dtype=torch.float32)
    except (OSError, ValueError) as error:
        raise MicroCinemaError(f"cannot load a VAE from {str(name_or_path)!r}: {str(error).splitlines()[0]} "
                               "(expected 'embedded', an AutoencoderKL folder or a pipeline folder with vae/)") from None
    return vae.eval().requires_grad_(False)


def training_scheduler(init_from: str | None) -> Any:
    """The DDPM training schedule: an SD pipeline folder's own (``scheduler/scheduler_config.json``: its betas
    and ``prediction_type``), else SD's (:func:`~microcinema.core.diffusion.make_training_scheduler`)."""
    from diffusers import DDPMScheduler

    from microcinema.core.diffusion import make_training_scheduler

    config_file = Path(init_from) / "scheduler" / "scheduler_config.json" if is_pipeline_folder(init_from) else None
    if config_file is None or not config_file.is_file():
        return make_training_scheduler()
    settings = json.loads(config_file.read_text())
    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "timestep_spacing", "rescale_betas_zero_snr")
    return DDPMScheduler.from_config({**{k: v for k, v in settings.items() if k in keep}, "clip_sample": False})


def resolve_components(config: dict[str, Any], init_from: str | None) -> dict[str, Any]:
    """The names of the frozen VAE and text encoder: the config's, else the init model's when it is a
    pipeline folder (an SD checkpoint brings its own), else the tiny family's (``embedded``, ``minilm``)."""
    sd = is_pipeline_folder(init_from)
    return {"vae": config.get("vae") or (str(init_from) if sd else "embedded"),
            "text_encoder": config.get("text_encoder") or (str(init_from) if sd else "minilm")}


def write_components(output_dir: str | os.PathLike, components: dict[str, Any], scheduler: Any,
                     prediction_type: str) -> Path:
    """``output_dir/components.json`` and ``output_dir/scheduler/``: what the trained ``final/`` U-Net needs to
    become a pipeline (its VAE, text encoder, training schedule and prediction type)."""
    out = Path(output_dir)
    scheduler.register_to_config(prediction_type=prediction_type)
    scheduler.save_pretrained(out / "scheduler")
    record = {"unet": "final", **{k: repo_relative(v) if Path(str(v)).exists() else v for k, v in components.items()},
              "scheduler": "scheduler", "prediction_type": prediction_type}
    (out / "components.json").write_text(json.dumps(record, indent=2) + "\n")
    return out / "components.json"


def check_model(constructor: Any, model: dict[str, Any], path: Any = None) -> None:
    """The ``model:`` section's keys must be arguments of ``constructor`` (one-line error naming the stray key)."""
    from microcinema.training.config import check_model_section

    check_model_section(constructor, model, path)


def check_sections(config: dict[str, Any], sections: dict[str, list[str] | None], model: Any = None) -> None:
    """Strict check of a non-diffusion task's config (vae, classifier): only ``sections`` at the top level,
    only the listed keys in each (``None``: checked elsewhere), the ``model:`` keys against ``model``'s
    constructor, and ``data: type`` (when given) ``procedural``."""
    from microcinema.training.config import check_keys, check_model_section

    path = config.get("_path")
    check_keys({k: v for k, v in config.items() if not k.startswith("_")}, list(sections), "top level", path)
    for name, keys in sections.items():
        if keys is not None and name in config:
            check_keys(config[name], keys, name, path)
    if config.get("data", {}).get("type", "procedural") != "procedural":
        raise MicroCinemaError(f"config {path}: this task trains on the procedural domain only; data type must be "
                               f"'procedural', got {config['data']['type']!r}")
    if model is not None:
        check_model_section(model, config.get("model") or {}, path)
