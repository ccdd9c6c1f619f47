"""Train the embedded tiny text-to-image U-Net (MicroCinema stage one) on key frames.

Standard latent diffusion (SD's schedule, epsilon prediction, DESIGN.md section 3): key frames and
captions are encoded once (:mod:`microcinema.data.latent_cache`), then the U-Net learns the shared
:class:`~microcinema.core.diffusion.DiffusionLoss` (uniform timesteps, plain loss) with 10 % of the captions
replaced by the empty prompt, for classifier-free guidance. Data (``data:`` with a ``type``,
:mod:`microcinema.training.config`): the procedural domain's key frames (``digit_weight`` draws the digits
more often than the domain does, :func:`~microcinema.data.synthetic.sample_clip`), or real videos (a caption
table or WebDataset shards), one key frame per video: its centre frame.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from microcinema.core.diffusion import DiffusionLoss, make_training_scheduler, min_snr_weighting, prediction_type_of
from microcinema.data.latent_cache import LatentCache
from microcinema.data.synthetic import DIGIT_WEIGHT
from microcinema.data.synthetic_dataset import SyntheticKeyFrameDataset
from microcinema.training.common import (build_task_cache, check_model, export_fp16, load_vae, provenance,
                                         resolve_components, train_config, write_components)
from microcinema.training.config import parse_diffusion_config
from microcinema.training.trainer import Trainer, condition_dropout_mask

__all__ = ["load_vae", "text_conditioning", "sample_latents", "make_loss", "build_cache", "train"]


def text_conditioning(batch: dict, cache: LatentCache, drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text states and mask of a cached batch, with the rows in ``drop`` replaced by the empty prompt."""
    states, mask = batch["text_states"].float(), batch["text_mask"]
    uncond_states = cache.uncond_states.to(states.device).float().expand_as(states)
    uncond_mask = cache.uncond_mask.to(mask.device).expand_as(mask)
    keep = ~drop.to(states.device)
    return (torch.where(keep[:, None, None], states, uncond_states),
            torch.where(keep[:, None], mask, uncond_mask))


def sample_latents(batch: dict, scaling_factor: float, generator: torch.Generator, mode: bool = True) -> torch.Tensor:
    """Training latents from the cached VAE posterior, scaled to unit variance: its mean (``mode=True``) or a
    fresh draw. The embedded VAE (KL weight 1e-6) has a posterior std wider than the spread of its means,
    which its decoder learned to ignore; drawing from it would make the diffusion model spend its capacity on
    that noise, so the tiny family trains on the mean, the latent the decoder is evaluated on."""
    mean = batch["latent_mean"]
    if mode:
        return mean * scaling_factor
    noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
    return (mean + batch["latent_std"] * noise) * scaling_factor


def make_loss(cache: LatentCache, scaling_factor: float, condition_dropout: float, latents: str = "mode",
              loss: DiffusionLoss | None = None):
    """``loss_fn(model, batch, generator)`` for the trainer: the shared :class:`DiffusionLoss` (default: SD's
    schedule, uniform timesteps, epsilon target) on the cached latents, captions dropped with probability
    ``condition_dropout``. Draws: the latent (``latents="sample"`` only), the noise, the timesteps, the
    dropout mask."""
    loss = loss or DiffusionLoss(make_training_scheduler())

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        z0 = sample_latents(batch, scaling_factor, generator, mode=latents == "mode")

        def denoise(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            states, mask = text_conditioning(batch, cache, condition_dropout_mask(len(z0), condition_dropout, generator))
            return model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample

        return loss(denoise, z0, generator)

    return loss_fn


def build_cache(config: dict[str, Any], output_dir: str | Path, vae: AutoencoderKL, text_encoder: str = "minilm",
                mixed_precision: str = "no") -> tuple[LatentCache, bool]:
    """The key frames' latent cache and whether it is this process's own share (real data; encoded on this
    process's device, in ``mixed_precision``'s dtype)."""
    data = parse_diffusion_config(config, "t2i").data

    def procedural() -> SyntheticKeyFrameDataset:
        weight = DIGIT_WEIGHT if data.digit_weight is None else data.digit_weight
        return SyntheticKeyFrameDataset(data.num, seed=data.seed, size=data.size, digit_weight=weight)

    return build_task_cache(config, data, output_dir, vae, text_encoder, "keyframes", procedural,
                            mixed_precision=mixed_precision)


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
          **overrides: Any) -> dict[str, Any]:
    parsed = parse_diffusion_config(config, "t2i")  # strict: every section checked before any work
    check_model(UNet2DConditionModel, parsed.model, parsed.path)
    train_settings = train_config(config, output_dir, **overrides)
    started = time.time()
    components = resolve_components(config, None)
    vae = load_vae(components["vae"])
    cache, local = build_cache(config, output_dir, vae, components["text_encoder"],
                               mixed_precision=train_settings.mixed_precision)
    unet = UNet2DConditionModel(**parsed.model)
    scheduler = make_training_scheduler()
    prediction_type = parsed.loss.prediction_type or prediction_type_of(dict(scheduler.config))
    gamma = parsed.loss.min_snr_gamma
    weighting = None if gamma is None else min_snr_weighting(gamma, scheduler, prediction_type)
    loss_fn = make_loss(cache, vae.config.scaling_factor, parsed.loss.condition_dropout, latents=parsed.loss.latents,
                        loss=DiffusionLoss(scheduler, weighting=weighting, prediction_type=prediction_type))
    probe = None
    if parsed.probe is not None:  # key frames judged every probe.every steps (procedural data only)
        from microcinema.eval.stage_one import make_probe

        settings = parsed.probe
        train_settings.probe_every = settings.every
        probe = make_probe(vae, components["text_encoder"], num_digits=settings.num_digits,
                           num_shapes=settings.num_shapes, steps=settings.steps,
                           guidance_scale=settings.guidance_scale, prompt_seed=settings.prompt_seed, seed=settings.seed)
    trainer = Trainer(unet, cache, loss_fn, train_settings, local_data=local, probe=probe)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        write_components(output_dir, components, scheduler, prediction_type)
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "final_loss": result.last_loss, "params": sum(p.numel() for p in unet.parameters())}
    if export and trainer.accelerator.is_main_process:
        unet = UNet2DConditionModel.from_pretrained(result.final_dir)
        export_fp16(unet, export, provenance(config, evaluation=report))
    return report
