"""The base text-to-image model a few-shot adapter is tuned on, and its fingerprint.

A base is a 2D ``UNet2DConditionModel`` with its VAE, text encoder and training schedule:

* ``"embedded"``: the embedded text-to-image U-Net (``microcinema/embedded/weights/t2i``), the embedded VAE and
  MiniLM (what ``TextToImagePipeline.embedded()`` uses), SD's schedule;
* a diffusers Stable Diffusion pipeline folder (``model_index.json`` or ``unet/`` + ``text_encoder/``): its
  U-Net, VAE, CLIP text encoder + tokenizer and its own scheduler config (betas, ``prediction_type``);
* a MicroCinema text-to-image folder (``pipeline.json`` + ``unet/``, or a bare U-Net folder, as
  :meth:`~microcinema.pipelines.text_to_image.TextToImagePipeline.from_pretrained` loads).

The fingerprint (:func:`base_fingerprint`) is a hash of the U-Net's and VAE's configs, the text encoder's kind and
width, and a few U-Net weights (rounded to fp16, so an fp32 and an fp16 load of the same file agree): an adapter
remembers it and refuses another base.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from microcinema.core.errors import MicroCinemaError, check, first_line
from microcinema.core.text_encoders import TextEncoder
from microcinema.models.unet2d import clean_config

EMBEDDED = "embedded"

#: The U-Net tensors the fingerprint hashes (when present), besides the configs.
_FINGERPRINT_TENSORS = ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight")


@dataclass
class FewShotBase:
    """A loaded base: ``name`` (``"embedded"`` or the path given), the 2D ``unet``, ``vae``, ``text_encoder``
    (a :class:`~microcinema.core.text_encoders.TextEncoder`), ``scheduler_config`` (the training schedule's
    diffusers config: betas, ``prediction_type``) and ``fingerprint``."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: TextEncoder
    scheduler_config: dict[str, Any]
    fingerprint: str

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_size(self) -> tuple[int, int]:
        """The U-Net's ``sample_size`` in pixels (height, width)."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type") or "epsilon"


def base_fingerprint(unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: TextEncoder) -> str:
    """16 hex digits identifying a base model (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps(clean_config(unet.config), sort_keys=True, default=str).encode())
    h.update(json.dumps(clean_config(vae.config), sort_keys=True, default=str).encode())
    h.update(f"{type(text_encoder.model).__name__}:{text_encoder.hidden_size}".encode())
    params = dict(unet.named_parameters())
    for name in _FINGERPRINT_TENSORS:
        if name in params and params[name].device.type != "meta":
            h.update(name.encode())
            h.update(params[name].detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _sd_scheduler_config(path: Path | None) -> dict[str, Any]:
    from microcinema.pipelines.base import SD_SCHEDULER_CONFIG

    config = dict(SD_SCHEDULER_CONFIG)
    file = None if path is None else path / "scheduler" / "scheduler_config.json"
    if file is not None and file.is_file():
        saved = json.loads(file.read_text())
        keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
                "timestep_spacing", "rescale_betas_zero_snr")
        config.update({k: v for k, v in saved.items() if k in keep})
    return config


def _is_sd_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or ((path / "unet" / "config.json").is_file()
                                                     and (path / "text_encoder").is_dir())


def load_base(base: str | Path = EMBEDDED, *, torch_dtype: torch.dtype = torch.float32) -> FewShotBase:
    """Load a base (``"embedded"`` or a folder, see the module docstring); one-line error for anything else."""
    from microcinema.core.text_encoders import load_text_encoder

    name = str(base)
    if name == EMBEDDED:
        from microcinema.embedded import embedded_path

        unet = UNet2DConditionModel.from_pretrained(embedded_path("t2i"), torch_dtype=torch_dtype)
        vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch_dtype)
        text = load_text_encoder("minilm")
        scheduler = _sd_scheduler_config(None)
    else:
        path = Path(name).expanduser()
        check(path.is_dir(), f"base model not found: {name} (give 'embedded', a Stable Diffusion pipeline folder or a "
                             "MicroCinema text-to-image folder)")
        try:
            if _is_sd_folder(path):
                unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=torch_dtype)
                vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=torch_dtype)
                text = load_text_encoder(str(path))
                scheduler = _sd_scheduler_config(path)
            else:
                from microcinema.pipelines.text_to_image import TextToImagePipeline, is_text_to_image_folder

                check(is_text_to_image_folder(path),
                      f"{name} is not a base model: expected a Stable Diffusion pipeline folder (model_index.json, "
                      "unet/, vae/, text_encoder/, tokenizer/) or a MicroCinema text-to-image folder")
                t2i = TextToImagePipeline.from_pretrained(path, torch_dtype=torch_dtype)
                unet, vae, text = t2i.unet, t2i.vae, t2i.text_encoder
                scheduler = _sd_scheduler_config(None)
        except (OSError, ValueError, KeyError) as error:
            if isinstance(error, MicroCinemaError):
                raise
            first = first_line(error)
            raise MicroCinemaError(f"cannot load the base model {name}: {first}") from None
    unet.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    text.eval()
    return FewShotBase(name=name, unet=unet, vae=vae, text_encoder=text, scheduler_config=scheduler,
                       fingerprint=base_fingerprint(unet, vae, text))


__all__ = ["EMBEDDED", "FewShotBase", "base_fingerprint", "load_base"]
