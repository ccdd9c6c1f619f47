"""Encode a data set once: VAE latents and text-encoder states, cached to disk, for every latent model.

Latent diffusion trains on ``vae.encode(x)`` and frozen text states; computing them every step would
cost more than the denoiser itself on a CPU. :func:`encode_dataset` runs the frozen encoders once over a
data set (images ``(3, H, W)`` or clips ``(F, 3, H, W)``, as every dataset of :mod:`microcinema.data`
yields) and :class:`LatentCache` serves the results as a ``Dataset``. The posterior's mean and std are kept
(not a sample), so training still draws a fresh latent each time. Clips are stored as ``(C, F, h, w)``,
the layout of the 3D U-Net.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from microcinema.core.errors import MicroCinemaError


@torch.no_grad()
def encode_dataset(dataset: Dataset, vae: Any, text_encoder: Any, *, batch_size: int = 64,
                   progress: bool = True, text_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Encode every item: ``latent_mean``/``latent_std`` (unscaled VAE posterior), ``text_states`` (fp16) and
    ``text_mask``; plus ``uncond_states``/``uncond_mask`` (the empty prompt, for classifier-free guidance)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    out: dict[str, list[torch.Tensor]] = {"latent_mean": [], "latent_std": [], "text_states": [], "text_mask": []}
    for batch in tqdm(loader, desc="encoding latents and captions", unit="batch", disable=not progress):
        pixels = batch["pixel_values"]
        video = pixels.ndim == 5
        flat = rearrange(pixels, "b f c h w -> (b f) c h w") if video else pixels
        posterior = vae.encode(flat.to(vae.device, vae.dtype)).latent_dist
        mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
        if video:
            mean, std = (rearrange(t, "(b f) c h w -> b c f h w", b=pixels.shape[0]) for t in (mean, std))
        text = text_encoder.encode(batch["text"])
        out["latent_mean"].append(mean)
        out["latent_std"].append(std)
        out["text_states"].append(text.hidden_states.to("cpu", text_dtype))
        out["text_mask"].append(text.attention_mask.cpu())
    tensors = {k: torch.cat(v) for k, v in out.items()}
    uncond = text_encoder.encode([""])
    tensors["uncond_states"] = uncond.hidden_states.to("cpu", text_dtype)
    tensors["uncond_mask"] = uncond.attention_mask.cpu()
    return tensors


def _collate(items: list[dict]) -> dict:
    return {"pixel_values": torch.stack([i["pixel_values"] for i in items]), "text": [i["text"] for i in items]}


class LatentCache(Dataset):
    """A cached encoding (see :func:`encode_dataset`) as a ``Dataset`` of dicts of tensors."""

    PER_ITEM = ("latent_mean", "latent_std", "text_states", "text_mask")

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        missing = [k for k in (*self.PER_ITEM, "uncond_states", "uncond_mask") if k not in tensors]
        if missing:
            raise MicroCinemaError(f"latent cache lacks {', '.join(missing)}; rebuild it (delete the cache file)")
        self.tensors = tensors
        self.uncond_states, self.uncond_mask = tensors["uncond_states"], tensors["uncond_mask"]

    def __len__(self) -> int:
        return len(self.tensors["latent_mean"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: self.tensors[k][index] for k in self.PER_ITEM}

    @classmethod
    def build_or_load(cls, path: str | Path, build: Callable[[], dict[str, torch.Tensor]],
                      fingerprint: dict[str, Any]) -> "LatentCache":
        """Load ``path`` if it was built with the same ``fingerprint`` (settings), else ``build()`` and save it
        atomically (a killed run never leaves a half-written cache)."""
        path = Path(path)
        key = json.dumps(fingerprint, sort_keys=True, default=str)
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("fingerprint") == key:
                    return cls(load_file(str(path)))
        tensors = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"fingerprint": key})
        os.replace(tmp, path)
        return cls(tensors)
