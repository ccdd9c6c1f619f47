"""``microcinema train artv``: train ART-V (paper section 3, appendix A "Training") on the shared trainer.

The model (:class:`~microcinema.systems.artv.model.ARTVModel`) starts from an image U-Net (``init_from``: the
embedded text-to-image U-Net, a ``UNet2DConditionModel`` folder, or an SD pipeline folder, whose VAE, text
encoder and training schedule then come with it; or a trained ART-V folder, to continue). Clips come from the
core data section (procedural: ``num_frames`` at ``fps``, 8 fps in the paper; or real videos: a caption table
or WebDataset shards), encoded once into a latent cache.

Each training sample is one frame of one clip (:mod:`microcinema.systems.artv.conditioning`): the current
frame ``i`` in ``[1, F-1]`` (from the first captioned frame on in turning clips: procedural ``turn_fraction``),
its references ``y(i-1), y(i-2)`` (clamped at frame 0), an anchor among the ``anchor_window`` (10) frames before
it; references and anchor corrupted at a level in ``[0, max_ref_level]``
(550, section 3.3); references, anchor and text each dropped with probability 0.1. The loss is the shared
:class:`~microcinema.core.diffusion.DiffusionLoss` (SD's schedule, uniform timesteps, the plain MSE of eq. 4)
on the noise of frame ``i``, whose prediction is the masked combination of eq. 7: the mask network learns
jointly through it. The target is always the noise (Table 5: eps-pred); a v-prediction U-Net is retrained
to it. Draws per step, from the trainer's generator: frames (current, then anchor), levels, reference noise,
anchor noise, the dropout masks, then the loss's noise and timesteps. EMA, checkpoints and exact resume are
the trainer's. ``export`` writes the final EMA weights as fp16 safetensors with ``training.json``.

An optional ``probe:`` section (:class:`~microcinema.training.config.ARTVProbe`, procedural data only) makes
short multi-prompt videos with the EMA weights every ``probe.every`` steps, frame 0 the ground truth's, and
logs the long-video benchmark's headline rates to ``probe.jsonl``
(:func:`microcinema.eval.longvideo.make_probe`); it draws from its own generator, so a probed run trains
exactly as an unprobed one.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from microcinema.core.diffusion import DiffusionLoss, min_snr_weighting
from microcinema.core.errors import MicroCinemaError, check
from microcinema.data.latent_cache import LatentCache
from microcinema.data.synthetic import DIGIT_WEIGHT
from microcinema.data.synthetic_dataset import SyntheticVideoDataset
from microcinema.systems.artv.conditioning import (ANCHOR_WINDOW, CONDITION_DROPOUT, gather_frames,
                                                   sample_condition_dropout, sample_frames)
from microcinema.systems.artv.model import ARTVModel
from microcinema.systems.artv.noise_augmentation import MAX_TRAIN_LEVEL, sample_levels
from microcinema.training.common import (build_task_cache, embedded_path, export_fp16, is_pipeline_folder, load_vae,
                                         provenance, resolve_components, train_config, training_scheduler,
                                         write_components)
from microcinema.training.config import (ARTVProbe, DiffusionTaskConfig, ProceduralData, check_keys,
                                         check_model_section, parse_data, parse_section)
from microcinema.training.tasks.t2i import text_conditioning
from microcinema.training.trainer import Trainer

__all__ = ["ARTVLoss", "parse_artv_config", "build_model", "build_cache", "make_loss", "train"]

TOP_LEVEL = ("init_from", "vae", "text_encoder", "model", "loss", "data", "train", "probe")


@dataclass
class ARTVLoss:
    """``loss:`` of an ART-V config; defaults are the paper's."""

    ref_dropout: float = CONDITION_DROPOUT      # each condition dropped with this probability (appendix A)
    anchor_dropout: float = CONDITION_DROPOUT
    text_dropout: float = CONDITION_DROPOUT
    first_frame_prob: float = 0.0               # extra samples with neither references nor anchor (text-only frame)
    max_ref_level: int = MAX_TRAIN_LEVEL        # references/anchor corrupted at a level in [0, max_ref_level] (3.3)
    anchor_window: int = ANCHOR_WINDOW          # anchor among this many frames before the current one (3.4)
    latents: str = "mode"                       # "mode": the VAE posterior mean; "sample": a fresh draw
    min_snr_gamma: float | None = None          # Min-SNR-gamma weighting (Hang et al. 2023); None: plain loss
    pretrained_lr_scale: float = 1.0            # learning rate of the inherited U-Net weights relative to the new parts

    def __post_init__(self) -> None:
        for name in ("ref_dropout", "anchor_dropout", "text_dropout", "first_frame_prob"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
        for name, low in (("max_ref_level", 0), ("anchor_window", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.latents not in ("mode", "sample"):
            raise ValueError(f"latents must be 'mode' or 'sample', got {self.latents!r}")
        gamma = self.min_snr_gamma
        if gamma is not None and (isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not gamma > 0):
            raise ValueError(f"min_snr_gamma must be a number > 0 or null, got {gamma!r}")
        if isinstance(self.pretrained_lr_scale, bool) or not isinstance(self.pretrained_lr_scale, (int, float)) \
                or not self.pretrained_lr_scale >= 0:
            raise ValueError(f"pretrained_lr_scale must be a number >= 0, got {self.pretrained_lr_scale!r}")


def parse_artv_config(config: dict[str, Any]) -> DiffusionTaskConfig:
    """Parse an ART-V config strictly (unknown keys anywhere are a one-line error, before any work)."""
    path = config.get("_path")
    top = check_keys({k: v for k, v in config.items() if not k.startswith("_")}, TOP_LEVEL, "top level", path)
    for name in ("data", "train"):
        if not isinstance(top.get(name), dict):
            raise MicroCinemaError(f"config {path} lacks section(s) {name}; see microcinema/embedded/configs/artv.yaml")
    loss = parse_section(ARTVLoss, top.get("loss") or {}, "loss", path)
    data = parse_data(top["data"], path)
    if isinstance(data, ProceduralData) and not (data.num_frames and data.fps):
        raise MicroCinemaError(f"config {path}: section 'data' lacks num_frames, fps (clips; 8 fps in the paper)")
    check(data.num_frames is None or data.num_frames >= 2,
          f"config {path}: section 'data': ART-V needs clips of at least 2 frames, got num_frames={data.num_frames}")
    probe = None
    if top.get("probe") is not None:
        probe = parse_section(ARTVProbe, top["probe"], "probe", path)
        if not isinstance(data, ProceduralData):
            raise MicroCinemaError(f"config {path}: section 'probe' judges videos against the procedural domain's "
                                   f"ground truth; drop it for data of type {data.type!r}")
        check(isinstance(data.size, int), f"config {path}: section 'probe' needs square frames (data: size an "
              f"integer), got size {data.size!r}")
    model = check_keys(top.get("model"), list(top.get("model") or {}), "model", path)
    check_model_section(ARTVModel, model, path, exclude=("self", "unet", "unet_config"))
    for key in ("vae", "text_encoder", "init_from"):
        if top.get(key) is not None and not isinstance(top[key], str):
            raise MicroCinemaError(f"config {path}: '{key}' must be a name or a path, got {top[key]!r}")
    return DiffusionTaskConfig(model=model, loss=loss, data=data, train=dict(top["train"]), raw_data=dict(top["data"]),
                               vae=top.get("vae"), text_encoder=top.get("text_encoder"),
                               init_from=top.get("init_from"), path=path, probe=probe)


def _differing(model: ARTVModel, options: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in options.items() if model.config.get(k) != v}


def build_model(config: dict[str, Any]) -> ARTVModel:
    """The model to train: ``init_from`` an image U-Net (converted, new parts at zero) or an ART-V folder
    (continued training; its settings must agree with the config's ``model:`` section)."""
    source = config.get("init_from") or "embedded"
    source = embedded_path("t2i") if source == "embedded" else Path(source)
    options = dict(config.get("model") or {})
    config_file = source / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("_class_name") == ARTVModel.__name__:
        model = ARTVModel.from_pretrained(source)
        differ = _differing(model, options)
        check(not differ, f"init_from {source} is an ART-V model with other settings than the config's model "
              f"section: {differ}; drop them or start from an image U-Net")
        return model
    if not config_file.is_file() and not is_pipeline_folder(source):
        raise MicroCinemaError(f"init_from {str(source)!r} is neither a U-Net folder (config.json) nor a diffusers "
                               "pipeline folder (unet/); give 'embedded', an image U-Net, an SD folder or an ART-V model")
    return ARTVModel.from_unet(source, **options)


def build_cache(config: dict[str, Any], output_dir: str | Path, vae: Any, text_encoder: str = "minilm",
                mixed_precision: str = "no") -> tuple[LatentCache, bool]:
    """The clips' latent cache ``(C, F, h, w)`` per item, and whether it is this process's own share."""
    data = parse_artv_config(config).data

    def procedural() -> SyntheticVideoDataset:
        weight = DIGIT_WEIGHT if data.digit_weight is None else data.digit_weight
        return SyntheticVideoDataset(data.num, seed=data.seed, num_frames=data.num_frames, fps=data.fps,
                                     size=data.size, digit_weight=weight, turn_fraction=data.turn_fraction)

    return build_task_cache(config, data, output_dir, vae, text_encoder, "clips", procedural, batch_size=16,
                            mixed_precision=mixed_precision)


def make_loss(cache: LatentCache, scaling_factor: float, loss: ARTVLoss | None = None, scheduler: Any = None,
              num_references: int = 2):
    """``loss_fn(model, batch, generator)`` for the trainer (see the module docstring); returns the loss and,
    with masked diffusion, the mean mask of the batch (``mask_mean``, logged). ``num_references``: the model's
    (``ARTVModel.config.num_references``; the paper's 2)."""
    from microcinema.core.diffusion import make_training_scheduler

    settings = loss or ARTVLoss()
    scheduler = make_training_scheduler() if scheduler is None else scheduler
    weighting = None if settings.min_snr_gamma is None else min_snr_weighting(settings.min_snr_gamma, scheduler)
    diffusion = DiffusionLoss(scheduler, weighting=weighting, prediction_type="epsilon")
    alphas_cumprod = scheduler.alphas_cumprod

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        mean = batch["latent_mean"]
        check(mean.ndim == 5, f"ART-V trains on clips (B, C, F, h, w); the cache holds {tuple(mean.shape)}")
        clip = mean * scaling_factor
        if settings.latents == "sample":
            noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
            clip = (mean + batch["latent_std"] * noise) * scaling_factor
        b, device = clip.shape[0], clip.device
        frames = sample_frames(clip.shape[2], b, generator, num_references=num_references,
                               anchor_window=settings.anchor_window, lead_in=batch.get("lead_in"))
        z0 = gather_frames(clip, frames.current)
        # the conditions are posterior means: at inference they are encoded or generated latents
        refs = gather_frames(mean * scaling_factor, frames.refs)
        anchor = gather_frames(mean * scaling_factor, frames.anchor)
        levels = sample_levels(b, generator, settings.max_ref_level, device=device)
        ref_noise = torch.randn(refs.shape, generator=generator, device=generator.device).to(device)
        anchor_noise = torch.randn(anchor.shape, generator=generator, device=generator.device).to(device)
        keep = sample_condition_dropout(b, generator, p_ref=settings.ref_dropout, p_anchor=settings.anchor_dropout,
                                        p_text=settings.text_dropout, p_first_frame=settings.first_frame_prob,
                                        device=device)
        states, mask = text_conditioning(batch, cache, ~keep["text"])
        masks: list[torch.Tensor] = []

        def denoise(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = model(z_t, t, states, refs=refs, anchor=anchor, ref_level=levels, encoder_attention_mask=mask,
                        ref_noise=ref_noise, anchor_noise=anchor_noise, ref_keep=keep["ref"],
                        anchor_keep=keep["anchor"], alphas_cumprod=alphas_cumprod)
            if out.mask is not None:  # mean mask over the samples with references (0 when none has)
                kept = keep["ref"].float()
                masks.append(out.mask.detach().float().mean(dim=(1, 2, 3)).mul(kept).sum() / kept.sum().clamp_min(1))
            return out.sample

        value = diffusion(denoise, z0, generator)
        return {"loss": value, **({"mask_mean": masks[0]} if masks else {})}

    return loss_fn


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
          **overrides: Any) -> dict[str, Any]:
    parsed = parse_artv_config(config)  # strict: every section checked before any work
    settings: ARTVLoss = parsed.loss
    train_settings = train_config(config, output_dir, **overrides)
    started = time.time()
    init_from = config.get("init_from")
    components = resolve_components(config, init_from)
    scheduler = training_scheduler(init_from)
    vae = load_vae(components["vae"])
    cache, local = build_cache(config, output_dir, vae, components["text_encoder"],
                               mixed_precision=train_settings.mixed_precision)
    with torch.random.fork_rng():  # the new parts' random initialisation: the same for the same config
        torch.manual_seed(train_settings.seed)
        model = build_model(config)
    loss_fn = make_loss(cache, vae.config.scaling_factor, settings, scheduler, num_references=model.config.num_references)
    groups = model.parameter_groups(train_settings.learning_rate, settings.pretrained_lr_scale)
    probe = None
    if parsed.probe is not None:  # short multi-prompt videos judged every probe.every steps (procedural data)
        from microcinema.eval.longvideo import make_probe

        train_settings.probe_every = parsed.probe.every
        probe = make_probe(vae, components["text_encoder"], scheduler, num_sequences=parsed.probe.num_sequences,
                           frames_per_segment=parsed.probe.frames_per_segment,
                           num_segments=parsed.probe.num_segments, steps=parsed.probe.steps, fps=parsed.data.fps,
                           size=parsed.data.size, prompt_seed=parsed.probe.prompt_seed, seed=parsed.probe.seed,
                           **parsed.probe.pipeline)
    trainer = Trainer(model, cache, loss_fn, train_settings, param_groups=groups, local_data=local, probe=probe)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        write_components(output_dir, components, scheduler, "epsilon")
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "final_loss": result.last_loss, "params": sum(p.numel() for p in model.parameters())}
    if export and trainer.accelerator.is_main_process:
        export_fp16(ARTVModel.from_pretrained(result.final_dir), export, provenance(config, evaluation=report))
    return report
