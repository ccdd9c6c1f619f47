"""The project's own text-to-image latent diffusion pipeline (MicroCinema stage one, section 3.1).

A ``UNet2DConditionModel`` on a VAE's latents, conditioned on a frozen text encoder, sampled by the
shared loop (:func:`microcinema.core.samplers.sample`) with classifier-free guidance. The embedded tiny model
ships in the package (``TextToImagePipeline.embedded()``); any folder written by ``save_pretrained`` loads.

Folder layout: ``unet/`` and ``vae/`` (diffusers folders) and ``pipeline.json``
(``{"text_encoder": "minilm" | SD folder, "sampler": ..., "guidance_scale": ...}``). A folder that is itself
a ``UNet2DConditionModel`` (what ``microcinema train t2i --export`` writes) also loads, with the embedded VAE,
MiniLM and the settings of a ``pipeline.json`` beside the weights if there is one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image

from microcinema.core.errors import MicroCinemaError, check
from microcinema.core.guidance import cfg_eps_model
from microcinema.core.samplers import SAMPLERS, sample
from microcinema.embedded import embedded_path
from microcinema.models.layers import cache_attention_signatures
from microcinema.core.text_encoders import TextEncoder, load_text_encoder

PIPELINE_FILE = "pipeline.json"


@dataclass
class ImagePipelineOutput:
    """``images``: a list of PIL images, a uint8 array (B, H, W, 3), a tensor (B, 3, H, W) in [-1, 1] or latents."""

    images: Any


def check_prompts(prompt: str | list[str]) -> list[str]:
    """A prompt or a list of prompts, each non-empty."""
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    check(len(prompts) > 0, "no prompt given: pass a non-empty text such as 'a red circle moving left'")
    for p in prompts:
        check(isinstance(p, str) and p.strip() != "",
              "empty prompt: describe what to generate, e.g. 'a red circle moving left'")
    return prompts


def check_steps(num_inference_steps: int, name: str = "num_inference_steps") -> int:
    check(isinstance(num_inference_steps, (int, np.integer)) and not isinstance(num_inference_steps, bool)
          and num_inference_steps >= 1, f"{name} must be an integer >= 1, got {num_inference_steps!r}")
    return int(num_inference_steps)


def to_output(pixels: torch.Tensor, output_type: str) -> Any:
    """Convert (B, 3, H, W) in [-1, 1] to the requested ``output_type``: pil, np (uint8), pt."""
    pixels = pixels.clamp(-1, 1)
    if output_type == "pt":
        return pixels
    array = ((pixels.permute(0, 2, 3, 1).float().cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
    if output_type == "np":
        return array
    if output_type == "pil":
        return [Image.fromarray(a) for a in array]
    raise MicroCinemaError(f"unknown output_type {output_type!r}: allowed are pil, np, pt, latent")


def unet_text_cond(embedding: Any, dtype: torch.dtype | None = None, mask_padding: bool = True) -> dict:
    """A :class:`~microcinema.core.text_encoders.TextEmbedding` as the U-Net's text keyword arguments; no
    ``encoder_attention_mask`` (None) when the encoder's ``mask_padding`` is False (CLIP, as Stable Diffusion)."""
    return {"encoder_hidden_states": embedding.hidden_states.to(dtype or embedding.hidden_states.dtype),
            "encoder_attention_mask": embedding.attention_mask if mask_padding else None}


def prompt_and_empty_conds(text_encoder: TextEncoder, prompts: list[str], dtype: torch.dtype | None = None
                           ) -> tuple[dict, dict]:
    """Text conditioning of ``prompts`` and of as many empty prompts (the unconditional branch of guidance)."""
    masked = getattr(text_encoder, "mask_padding", True)
    return (unet_text_cond(text_encoder.encode(prompts), dtype, masked),
            unet_text_cond(text_encoder.encode([""] * len(prompts)), dtype, masked))


def cond_eps_model(unet: Any, prediction_type: str = "epsilon", alphas_cumprod: Any = None):
    """A diffusers-style U-Net (2D or :class:`~microcinema.models.unet3d.VideoUNet`) as the guidance module's
    ``eps_model_with_cond(z, t, cond)``, ``cond`` being the U-Net's keyword arguments. A ``v_prediction``
    network's output is turned into a noise prediction (:func:`~microcinema.core.samplers.eps_from_prediction`
    on the schedule ``alphas_cumprod``, e.g. the pipeline's scheduler)."""
    from microcinema.core.samplers import check_prediction_type, eps_from_prediction

    check_prediction_type(prediction_type)

    def eps_with_cond(z: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        # the U-Net's dtype and device for every float input (text states, AppearNet condition); masks keep theirs.
        # Read from the first parameter: diffusers' ModelMixin.device/.dtype walk every submodule (group-offload
        # hooks), which costs more per step than a small U-Net's forward pass.
        weight = next(unet.parameters())
        device, dtype = weight.device, weight.dtype
        cast = {k: v.to(device, dtype) if torch.is_tensor(v) and v.is_floating_point()
                else v.to(device) if torch.is_tensor(v) else v for k, v in cond.items()}
        out = unet(z.to(device, dtype), t.to(device), **cast).sample.float().to(z.device)
        return out if prediction_type == "epsilon" else eps_from_prediction(out, z, t, prediction_type, alphas_cumprod)

    return eps_with_cond


def _is_unet2d(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "UNet2DConditionModel"


def is_text_to_image_folder(folder: str | os.PathLike) -> bool:
    """A folder :meth:`TextToImagePipeline.from_pretrained` loads (either layout)."""
    folder = Path(folder)
    return (folder / PIPELINE_FILE).is_file() or _is_unet2d(folder) or _is_unet2d(folder / "unet")


class TextToImagePipeline:
    """Text -> key frame with a latent diffusion model of this project (diffusers-style call)."""

    def __init__(self, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: TextEncoder, *,
                 text_encoder_name: str = "minilm", sampler: str = "ddim", guidance_scale: float = 5.0) -> None:
        self.unet, self.vae, self.text_encoder = unet.eval(), vae.eval(), text_encoder
        cache_attention_signatures(self.unet)  # same outputs, less Python per attention call
        self.text_encoder_name, self.sampler, self.guidance_scale = text_encoder_name, sampler, guidance_scale

    # ------------------------------------------------------------------ loading and saving
    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, torch_dtype: torch.dtype = torch.float32) -> "TextToImagePipeline":
        path = Path(path)
        unet_dir = path / "unet" if (path / "unet" / "config.json").is_file() else path
        if not _is_unet2d(unet_dir):
            raise MicroCinemaError(f"{path} is not a MicroCinema text-to-image folder (expected {PIPELINE_FILE} and "
                                   "unet/, or a UNet2DConditionModel folder); for a diffusers pipeline folder or hub id "
                                   "use load_key_frame_model")
        settings = json.loads((path / PIPELINE_FILE).read_text()) if (path / PIPELINE_FILE).is_file() else {}
        vae_path = path / "vae" if (path / "vae" / "config.json").is_file() else embedded_path("vae")
        unet = UNet2DConditionModel.from_pretrained(unet_dir, torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(vae_path, torch_dtype=torch_dtype)
        name = settings.get("text_encoder", "minilm")
        return cls(unet, vae, load_text_encoder(name), text_encoder_name=name,
                   sampler=settings.get("sampler", "ddim"), guidance_scale=settings.get("guidance_scale", 5.0))

    @classmethod
    def embedded(cls) -> "TextToImagePipeline":
        """The tiny model shipped with the package (64x64, procedural domain)."""
        return cls.from_pretrained(embedded_path("t2i"))

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.vae.save_pretrained(path / "vae")
        settings = {"text_encoder": self.text_encoder_name, "sampler": self.sampler, "guidance_scale": self.guidance_scale}
        (path / PIPELINE_FILE).write_text(json.dumps(settings, indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ generation
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        return self.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_prompt(self, prompts: list[str]) -> tuple[dict, dict]:
        return prompt_and_empty_conds(self.text_encoder, prompts, self.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, num_inference_steps: int = 25, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, sampler: str | None = None, num_images_per_prompt: int = 1,
                 output_type: str = "pil", progress: bool = False) -> ImagePipelineOutput:
        """Generate key frames for ``prompt`` (a string or a list), as diffusers pipelines do."""
        prompts = [p for p in check_prompts(prompt) for _ in range(num_images_per_prompt)]
        steps = check_steps(num_inference_steps)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check(scale >= 0, f"guidance_scale must be >= 0 (1 = no guidance), got {scale}")
        sampler = sampler or self.sampler
        check(sampler in SAMPLERS, f"unknown sampler {sampler!r}: allowed are {', '.join(SAMPLERS)}")
        cond, uncond = self.encode_prompt(prompts)
        noise = torch.randn((len(prompts), *self.latent_shape), generator=generator,
                            device=generator.device if generator is not None else "cpu")
        latents = sample(cfg_eps_model(cond_eps_model(self.unet), cond, uncond, scale), noise, sampler=sampler,
                         num_inference_steps=steps, generator=generator, progress=progress)
        if output_type == "latent":
            return ImagePipelineOutput(latents)
        pixels = self.vae.decode((latents / self.vae.config.scaling_factor).to(self.vae.dtype)).sample
        return ImagePipelineOutput(to_output(pixels, output_type))
