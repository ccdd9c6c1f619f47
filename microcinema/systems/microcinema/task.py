"""Train MicroCinema's stage two: the image&text-to-video base model and the temporal interpolation model.

Both are a :class:`~microcinema.models.unet3d.VideoUNet` inflated from the tiny text-to-image U-Net (its
temporal layers and AppearNet injections start as the identity, so training starts from stage one).

* ``video`` (base model, paper section 3.1): 9-frame clips at 2 fps; the condition is the centre frame's
  latent repeated over the frames (AppearNet's input); the training noise is the Appearance Noise Prior
  ``lambda * z_c + n`` (section 3.3, eq. 3); 10 % of the captions are dropped for classifier-free guidance.
  The key frame alone does not tell the motion: it must come from the text.
* ``interp`` (temporal interpolation, x4 frame rate): 5-frame clips at 8 fps; the condition is the
  latents linearly interpolated between the first and the last frame; no text (the empty prompt), as the
  interpolation model is run without text guidance.

Spatial (inherited 2D) weights learn 10x slower than the new temporal/AppearNet modules (section 4.1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from microcinema.data.latent_cache import LatentCache
from microcinema.data.synthetic import DIGIT_WEIGHT
from microcinema.data.synthetic_dataset import SyntheticVideoDataset
from microcinema.core.diffusion import high_noise_timesteps, make_training_scheduler, per_sample_mse, x0_loss_weights
from microcinema.core.errors import MicroCinemaError, check
from microcinema.systems.microcinema.noise_prior import appearance_noise, hide_motion_at_high_noise
from microcinema.training.trainer import Trainer, condition_dropout_mask
from microcinema.training.common import build_latent_cache, embedded_path, export_fp16, provenance, require_sections, train_config
from microcinema.training.tasks.t2i import load_vae, sample_latents, text_conditioning


def key_frame_condition(z0: torch.Tensor, key_index: int | None = None) -> torch.Tensor:
    """The base model's condition: the key frame's latent (default the centre frame) repeated over frames."""
    frames = z0.shape[2]
    key = z0[:, :, frames // 2 if key_index is None else key_index]
    return key.unsqueeze(2).expand(-1, -1, frames, -1, -1)


def interpolation_condition(first: torch.Tensor, last: torch.Tensor, num_frames: int) -> torch.Tensor:
    """The interpolation model's condition: latents linearly interpolated from ``first`` to ``last`` (section 3.1)."""
    w = torch.linspace(0, 1, num_frames, device=first.device, dtype=first.dtype).view(1, 1, -1, 1, 1)
    return (1 - w) * first.unsqueeze(2) + w * last.unsqueeze(2)


def make_condition(kind: str, z0: torch.Tensor) -> torch.Tensor:
    if kind == "video":
        return key_frame_condition(z0)
    return interpolation_condition(z0[:, :, 0], z0[:, :, -1], z0.shape[2])


def make_loss(kind: str, cache: LatentCache, scaling_factor: float, *, lam: float, condition_dropout: float,
              latents: str = "mode", high_noise_fraction: float = 0.0, high_noise_from: int = 850,
              max_x0_weight: float = 1.0, hide_motion_from: int | None = None):
    """The training loss. ``high_noise_fraction`` / ``high_noise_from``: extra timesteps from
    ``[high_noise_from, 1000)`` (:func:`~microcinema.core.diffusion.high_noise_timesteps`); ``max_x0_weight``:
    weight the high noise levels as an x0-loss, up to that factor (:func:`~microcinema.core.diffusion.x0_loss_weights`);
    ``hide_motion_from``: from that timestep up, the input's signal is the condition, not the clip
    (:func:`~microcinema.systems.microcinema.noise_prior.hide_motion_at_high_noise`).
    Defaults: the plain epsilon loss with uniform timesteps (the paper's)."""
    scheduler = make_training_scheduler()

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        z0 = sample_latents(batch, scaling_factor, generator, mode=latents == "mode")
        # the condition comes from the posterior mean: at inference it is the encoded key frame's mode
        condition = make_condition(kind, batch["latent_mean"] * scaling_factor)
        n = torch.randn(z0.shape, generator=generator, device=generator.device).to(z0.device)
        eps = appearance_noise(condition, n, lam)
        t = high_noise_timesteps(len(z0), high_noise_fraction, high_noise_from, generator=generator).to(z0.device)
        p_drop = condition_dropout if kind == "video" else 1.0  # interp: always the empty prompt
        states, mask = text_conditioning(batch, cache, condition_dropout_mask(len(z0), p_drop, generator))
        z_t, target = hide_motion_at_high_noise(z0, condition, eps, t, hide_motion_from, scheduler)
        pred = model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, condition=condition).sample
        return (x0_loss_weights(t, max_x0_weight, scheduler) * per_sample_mse(pred, target)).mean()

    return loss_fn


def build_cache(config: dict[str, Any], output_dir: str | Path, vae) -> LatentCache:
    data = config["data"]
    dataset = SyntheticVideoDataset(data["num"], seed=data["seed"], num_frames=data["num_frames"], fps=data["fps"],
                                    size=data["size"], digit_weight=data.get("digit_weight", DIGIT_WEIGHT))
    return build_latent_cache(config, output_dir, vae, dataset, "clips", batch_size=16)


def build_model(config: dict[str, Any]):
    """The model to train: ``init_from`` a 2D U-Net (inflated: temporal layers and injections at zero), or a
    trained :class:`VideoUNet` folder (continued training, e.g. a second phase with other learning rates)."""
    from microcinema.models.unet3d import VideoUNet

    source = config.get("init_from", "embedded")
    source = embedded_path("t2i") if source == "embedded" else Path(source)
    config_file = source / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("_class_name") == VideoUNet.__name__:
        model = VideoUNet.from_pretrained(source)
        wanted = {k: v for k, v in config.get("model", {}).items() if model.config.get(k) != v}
        if _growable(wanted):  # new zero-initialised layers
            return grow_model(model, **wanted)
        if wanted:
            raise MicroCinemaError(f"init_from {source} is a VideoUNet with other settings than the config's "
                                   f"model section: {wanted}; drop them (these may be set to true on a trained "
                                   f"model: {', '.join(GROWABLE)}) or start from a 2D U-Net")
        return model
    return VideoUNet.from_pretrained_2d(source, **config.get("model", {}))


#: VideoUNet options that, set to true, add zero-initialised layers (so a trained model can be grown with
#: them) -> the parameter-name fragment of those layers.
GROWABLE: dict[str, str] = {"temporal_text": ".text_proj.", "frame_text_modulation": "frame_text_modulations.",
                             "frame_text_shift": "frame_text_shifts.", "appearance_attention": "appearance_attentions."}


def _growable(options: dict[str, Any]) -> bool:
    return bool(options) and all(k in GROWABLE and v is True for k, v in options.items())


def grow_model(model, **options: bool):
    """``model`` (a trained VideoUNet) with the extensions in ``options`` switched on (keys of
    :data:`GROWABLE`): its weights, plus the new zero-initialised layers, so it computes exactly what
    ``model`` did."""
    from microcinema.models.unet3d import VideoUNet

    check(_growable(options), f"grow_model: options {options} are not among {', '.join(GROWABLE)} (set to true)")
    config = {k: v for k, v in model.config.items() if not k.startswith("_")}
    grown = VideoUNet.from_config({**config, **options})
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    new = tuple(GROWABLE[k] for k in options)
    check(not unexpected and all(any(f in k for f in new) for k in missing),
          f"grow_model: unexpected weights {unexpected[:3]} or missing {[k for k in missing if not any(f in k for f in new)][:3]}")
    return grown.to(dtype=model.dtype)


def train_video(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
                **overrides: Any) -> dict[str, Any]:
    """``microcinema train video``: the base image&text-to-video model."""
    return train(config, output_dir, export, kind="video", **overrides)


def train_interp(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None,
                 **overrides: Any) -> dict[str, Any]:
    """``microcinema train interp``: the x4 temporal interpolation model."""
    return train(config, output_dir, export, kind="interp", **overrides)


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None, *,
          kind: str = "video", **overrides: Any) -> dict[str, Any]:
    require_sections(config, "data", "loss")
    train_settings = train_config(config, output_dir, **overrides)
    started = time.time()
    vae = load_vae(config.get("vae", "embedded"))
    cache = build_cache(config, output_dir, vae)
    torch.manual_seed(train_settings.seed)  # the randomly initialised new layers: the same for the same config
    model = build_model(config)
    loss = config["loss"]
    loss_fn = make_loss(kind, cache, vae.config.scaling_factor, lam=loss.get("noise_prior_lambda", 0.03),
                        condition_dropout=loss.get("condition_dropout", 0.1), latents=loss.get("latents", "mode"),
                        high_noise_fraction=loss.get("high_noise_fraction", 0.0),
                        high_noise_from=loss.get("high_noise_from", 850), max_x0_weight=loss.get("max_x0_weight", 1.0),
                        hide_motion_from=loss.get("hide_motion_from"))
    groups = model.parameter_groups(train_settings.learning_rate, spatial_lr_scale=loss.get("spatial_lr_scale", 0.1))
    result = Trainer(model, cache, loss_fn, train_settings, param_groups=groups).train()
    report = {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
              "final_loss": result.last_loss, "params": sum(p.numel() for p in model.parameters())}
    if export:
        export_fp16(type(model).from_pretrained(result.final_dir), export, provenance(config, evaluation=report))
    return report
