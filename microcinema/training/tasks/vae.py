"""Train the embedded tiny VAE (a diffusers ``AutoencoderKL``) on procedural frames.

Loss: mean squared reconstruction error plus a small KL term (``kl_weight``, 1e-6 as in SD's VAE; no
perceptual or adversarial term: no LPIPS weights can be fetched here, and PSNR is the target). After
training, the latent ``scaling_factor`` is set to ``1 / std`` of the latents (as SD's 0.18215), so the
diffusion models see unit-variance latents, and the held-out PSNR of the fp16 export is measured.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL
from torch import nn
from torch.utils.data import DataLoader

from microcinema.data.synthetic_dataset import SyntheticKeyFrameDataset
from microcinema.training.trainer import Trainer
from microcinema.training.common import check_sections, require_sections, export_fp16, provenance, train_config, write_evaluation


class VAEWithLoss(nn.Module):
    """Wraps the VAE so one forward (through DDP) returns reconstruction and KL; saves as the VAE itself."""

    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        posterior = self.vae.encode(x).latent_dist
        return self.vae.decode(posterior.sample(generator)).sample, posterior.kl().mean()

    def save_pretrained(self, *args: Any, **kwargs: Any) -> None:
        self.vae.save_pretrained(*args, **kwargs)


def _loss(kl_weight: float):
    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"]
        recon, kl = model(x, generator)
        mse = torch.nn.functional.mse_loss(recon, x)
        return {"loss": mse + kl_weight * kl, "mse": mse.detach(), "kl": kl.detach()}

    return loss_fn


def _pixels_only(items: list[dict]) -> dict:
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items])}


@torch.no_grad()
def heldout_psnr(vae: AutoencoderKL, num: int = 256, seed: int = 1234, size: int = 64) -> float:
    """PSNR (dB, images in [0, 1]) of encode->decode (posterior mean) on frames of the held-out split."""
    data = SyntheticKeyFrameDataset(num, seed=seed, split="heldout", size=size)
    mse, count = 0.0, 0
    for batch in DataLoader(data, batch_size=64, collate_fn=_pixels_only):
        x = batch["pixel_values"].to(vae.device, vae.dtype)
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)
        mse += ((recon.float() - x.float()) / 2).pow(2).mean(dim=(1, 2, 3)).sum().item()
        count += len(x)
    return 10 * math.log10(1 / max(mse / count, 1e-12))


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, num: int = 1024, seed: int = 7) -> float:
    data = SyntheticKeyFrameDataset(num, seed=seed)
    latents = [vae.encode(b["pixel_values"]).latent_dist.mode() for b in DataLoader(data, 128, collate_fn=_pixels_only)]
    return float(1.0 / torch.cat(latents).std())


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
          **overrides: Any) -> dict[str, Any]:
    """Train, set the scaling factor, evaluate; export fp16 weights when ``export`` is given."""
    require_sections(config, "model", "data", "loss")
    check_sections(config, {"model": None, "loss": ["kl_weight"], "data": ["type", "num", "seed", "size"],
                            "eval": ["num", "seed"], "train": None}, model=AutoencoderKL)
    train_settings = train_config(config, output_dir, **overrides)  # validated before any work
    started = time.time()
    vae = AutoencoderKL(**config["model"])
    data = config["data"]
    dataset = SyntheticKeyFrameDataset(data["num"], seed=data["seed"], size=data["size"])
    trainer = Trainer(VAEWithLoss(vae), dataset, _loss(config["loss"]["kl_weight"]),
                      train_settings, collate_fn=_pixels_only)
    result = trainer.train()
    vae = AutoencoderKL.from_pretrained(result.final_dir).eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae))
    evaluation = config.get("eval", {})
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "heldout_psnr_db_fp32": round(heldout_psnr(vae, evaluation.get("num", 256), evaluation.get("seed", 1234)), 2),
              "scaling_factor": vae.config.scaling_factor,
              "params": sum(p.numel() for p in vae.parameters())}
    if export:
        export_fp16(vae, export, provenance(config, evaluation=report))
        shipped = AutoencoderKL.from_pretrained(export, torch_dtype=torch.float32).eval()
        report["heldout_psnr_db_fp16_export"] = round(heldout_psnr(shipped, evaluation.get("num", 256), evaluation.get("seed", 1234)), 2)
        write_evaluation(export, report)
    return report
