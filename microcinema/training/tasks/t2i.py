"""Train the embedded tiny text-to-image U-Net (MicroCinema stage one) on procedural key frames.

Standard latent diffusion (SD's schedule, epsilon prediction, DESIGN.md section 3): key frames and
captions are encoded once (:mod:`microcinema.data.latent_cache`), then the U-Net learns
``|| eps - unet(sqrt(abar_t) z + sqrt(1 - abar_t) eps, t, text) ||^2`` with 10 % of the captions replaced
by the empty prompt, for classifier-free guidance. Options (``loss:`` in the config): ``min_snr_gamma``
weights the steps by Min-SNR (:func:`~microcinema.core.diffusion.min_snr_weights`); ``max_x0_weight`` weights the
high noise levels as an x0-loss up to that factor (:func:`~microcinema.core.diffusion.x0_loss_weights`); ``data: digit_weight`` draws
the digits more often than the domain does (:func:`~microcinema.data.synthetic.sample_clip`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import nn

from microcinema.data.latent_cache import LatentCache
from microcinema.data.synthetic import DIGIT_WEIGHT
from microcinema.data.synthetic_dataset import SyntheticKeyFrameDataset
from microcinema.core.diffusion import (make_training_scheduler, min_snr_weights, per_sample_mse, random_timesteps,
                         x0_loss_weights)
from microcinema.systems.microcinema.noise_prior import hide_layout_at_high_noise
from microcinema.training.trainer import Trainer, condition_dropout_mask
from microcinema.training.common import build_latent_cache, embedded_path, require_sections, export_fp16, provenance, train_config


def load_vae(name_or_path: str) -> AutoencoderKL:
    path = embedded_path("vae") if name_or_path == "embedded" else Path(name_or_path)
    return AutoencoderKL.from_pretrained(path, torch_dtype=torch.float32).eval().requires_grad_(False)


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
    fresh draw. The embedded VAE (KL weight 1e-6) has a wide posterior (std 0.80 against 0.55 spread of the
    means) that its decoder learned to ignore; drawing from it would make the diffusion model spend its
    capacity on that noise, so the tiny family trains on the mean, the latent the decoder is evaluated on."""
    mean = batch["latent_mean"]
    if mode:
        return mean * scaling_factor
    noise = torch.randn(mean.shape, generator=generator, device=generator.device).to(mean.device)
    return (mean + batch["latent_std"] * noise) * scaling_factor


def make_loss(cache: LatentCache, scaling_factor: float, condition_dropout: float, latents: str = "mode",
              min_snr_gamma: float | None = None, max_x0_weight: float = 1.0, hide_layout_from: int | None = None):
    scheduler = make_training_scheduler()

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        z0 = sample_latents(batch, scaling_factor, generator, mode=latents == "mode")
        noise = torch.randn(z0.shape, generator=generator, device=generator.device).to(z0.device)
        t = random_timesteps(len(z0), generator=generator).to(z0.device)
        drop = condition_dropout_mask(len(z0), condition_dropout, generator)
        states, mask = text_conditioning(batch, cache, drop)
        z_t, target = hide_layout_at_high_noise(z0, noise, t, hide_layout_from, scheduler)  # None: forward process
        eps = model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask).sample
        weights = x0_loss_weights(t, max_x0_weight, scheduler)  # 1 everywhere unless max_x0_weight > 1
        if min_snr_gamma is not None:
            weights = weights * min_snr_weights(t, min_snr_gamma, scheduler)
        return (weights * per_sample_mse(eps, target)).mean()

    return loss_fn


def build_cache(config: dict[str, Any], output_dir: str | Path, vae: AutoencoderKL) -> LatentCache:
    data = config["data"]
    dataset = SyntheticKeyFrameDataset(data["num"], seed=data["seed"], size=data["size"],
                                       digit_weight=data.get("digit_weight", DIGIT_WEIGHT))
    return build_latent_cache(config, output_dir, vae, dataset, "keyframes")


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
          **overrides: Any) -> dict[str, Any]:
    require_sections(config, "model", "data", "loss")
    train_settings = train_config(config, output_dir, **overrides)  # validated before any work
    started = time.time()
    vae = load_vae(config.get("vae", "embedded"))
    cache = build_cache(config, output_dir, vae)
    unet = UNet2DConditionModel(**config["model"])
    loss_fn = make_loss(cache, vae.config.scaling_factor, config["loss"]["condition_dropout"],
                        latents=config["loss"].get("latents", "mode"),
                        min_snr_gamma=config["loss"].get("min_snr_gamma"),
                        max_x0_weight=config["loss"].get("max_x0_weight", 1.0),
                        hide_layout_from=config["loss"].get("hide_layout_from"))
    result = Trainer(unet, cache, loss_fn, train_settings).train()
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "final_loss": result.last_loss, "params": sum(p.numel() for p in unet.parameters())}
    if export:
        unet = UNet2DConditionModel.from_pretrained(result.final_dir)
        export_fp16(unet, export, provenance(config, evaluation=report))
    return report
