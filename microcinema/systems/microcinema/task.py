"""Train MicroCinema's stage two: the image&text-to-video base model and the temporal interpolation model.

Both are a :class:`~microcinema.models.unet3d.VideoUNet` inflated from a text-to-image U-Net (the embedded tiny
one, or an SD pipeline folder's: then its VAE, CLIP text encoder and training schedule, prediction type
included, come with it); its temporal layers and AppearNet injections start as the identity, so training
starts from stage one.

* ``video`` (base model, paper section 3.1): 9-frame clips at 2 fps; the condition is the centre frame's
  latent repeated over the frames (AppearNet's input); the training noise is the Appearance Noise Prior
  ``lambda * z_c + n`` (section 3.3, eq. 3); 10 % of the captions are dropped for classifier-free guidance.
  The key frame alone does not tell the motion: it must come from the text.
* ``interp`` (temporal interpolation, x4 frame rate): 5-frame clips at 8 fps; the condition is the
  latents linearly interpolated between the first and the last frame; no text (the empty prompt), as the
  interpolation model is run without text guidance.

The loss is the shared :class:`~microcinema.core.diffusion.DiffusionLoss` with the noise prior as its noise
hook and, when configured, the high-noise timestep mix, the capped x0 weighting and the hidden motion
(:func:`~microcinema.systems.microcinema.noise_prior.hide_motion_at_high_noise`) as its other hooks.
Spatial (inherited 2D) weights learn 10x slower than the new temporal/AppearNet modules (section 4.1).

**Phases.** A config with ``phases:`` runs the top-level settings as the first phase (named ``base``), then
each phase in order, each starting from the previous one's final EMA weights with the changes it names
(:class:`~microcinema.training.config.Phase`), in ``output_dir/phases/<n>_<name>/``; every phase uses the
first phase's VAE, text encoder and training schedule (:func:`stage_two_components`), and every phase's
settings are checked before the first one starts. A finished phase
(``done.json``) is skipped on restart, an interrupted one resumes from its checkpoints. The last phase's
weights are the run's: copied to ``output_dir/final`` and exported.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from microcinema.core.diffusion import (DiffusionLoss, high_noise_mix, min_snr_weighting, prediction_type_of,
                                        uniform_weighting, x0_weighting)
from microcinema.core.errors import MicroCinemaError, check
from microcinema.data.latent_cache import LatentCache
from microcinema.data.synthetic import DIGIT_WEIGHT
from microcinema.data.synthetic_dataset import SyntheticVideoDataset
from microcinema.systems.microcinema.interpolation import interpolation_condition  # noqa: F401 (re-exported)
from microcinema.systems.microcinema.noise_prior import appearance_noise, hide_motion_at_high_noise
from microcinema.training.common import (build_task_cache, embedded_path, export_fp16, is_pipeline_folder,
                                         load_vae, provenance, resolve_components, train_config,
                                         training_scheduler, write_components)
from microcinema.training.config import VideoLoss, parse_diffusion_config
from microcinema.training.tasks.t2i import sample_latents, text_conditioning
from microcinema.training.trainer import Trainer, condition_dropout_mask

__all__ = ["key_frame_condition", "interpolation_condition", "make_condition", "make_loss", "build_cache",
           "build_model", "grow_model", "GROWABLE", "train_video", "train_interp", "train", "load_vae"]


def key_frame_condition(z0: torch.Tensor, key_index: int | None = None) -> torch.Tensor:
    """The base model's condition: the key frame's latent (default the centre frame) repeated over frames."""
    frames = z0.shape[2]
    key = z0[:, :, frames // 2 if key_index is None else key_index]
    return key.unsqueeze(2).expand(-1, -1, frames, -1, -1)


def make_condition(kind: str, z0: torch.Tensor) -> torch.Tensor:
    if kind == "video":
        return key_frame_condition(z0)
    return interpolation_condition(z0[:, :, 0], z0[:, :, -1], z0.shape[2])


def make_loss(kind: str, cache: LatentCache, scaling_factor: float, *, lam: float, condition_dropout: float,
              latents: str = "mode", high_noise_fraction: float = 0.0, high_noise_from: int = 850,
              max_x0_weight: float = 1.0, hide_motion_from: int | None = None, min_snr_gamma: float | None = None,
              scheduler: Any = None, prediction_type: str = "epsilon"):
    """The training loss: :class:`DiffusionLoss` with the Appearance Noise Prior (``lam``) as its noise.
    ``high_noise_fraction`` / ``high_noise_from``: extra timesteps from ``[high_noise_from, 1000)``
    (:func:`~microcinema.core.diffusion.high_noise_mix`); ``max_x0_weight``: weight the high noise levels as an
    x0-loss, up to that factor (:func:`~microcinema.core.diffusion.x0_weighting`); ``hide_motion_from``: from that
    timestep up, the input's signal is the condition, not the clip
    (:func:`~microcinema.systems.microcinema.noise_prior.hide_motion_at_high_noise`); ``min_snr_gamma``:
    Min-SNR-gamma weighting (:func:`~microcinema.core.diffusion.min_snr_weighting`).
    Defaults: the plain epsilon loss with uniform timesteps (the paper's)."""
    from microcinema.core.diffusion import make_training_scheduler

    scheduler = make_training_scheduler() if scheduler is None else scheduler
    check(max_x0_weight == 1 or prediction_type == "epsilon",
          f"max_x0_weight is an epsilon-loss weighting; drop it (or set 1) for prediction_type {prediction_type!r}")
    check(max_x0_weight == 1 or min_snr_gamma is None, "max_x0_weight and min_snr_gamma are two loss weightings; "
          "set one of them")
    if min_snr_gamma is not None:
        weighting = min_snr_weighting(min_snr_gamma, scheduler, prediction_type)
    else:
        weighting = x0_weighting(max_x0_weight, scheduler) if max_x0_weight != 1 else uniform_weighting()
    loss = DiffusionLoss(scheduler, timesteps=high_noise_mix(high_noise_fraction, high_noise_from,
                                                             int(scheduler.config.num_train_timesteps)),
                         weighting=weighting, prediction_type=prediction_type)
    p_drop = condition_dropout if kind == "video" else 1.0  # interp: always the empty prompt

    def loss_fn(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
        z0 = sample_latents(batch, scaling_factor, generator, mode=latents == "mode")
        # the condition comes from the posterior mean: at inference it is the encoded key frame's mode
        condition = make_condition(kind, batch["latent_mean"] * scaling_factor)

        def denoise(z_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            states, mask = text_conditioning(batch, cache, condition_dropout_mask(len(z0), p_drop, generator))
            return model(z_t, t, encoder_hidden_states=states, encoder_attention_mask=mask, condition=condition).sample

        hide = None if hide_motion_from is None else (
            lambda x0, noise, t: hide_motion_at_high_noise(x0, condition, noise, t, hide_motion_from, scheduler))
        return loss(denoise, z0, generator, noise_prior=lambda n: appearance_noise(condition, n, lam), noisy_input=hide)

    return loss_fn


def build_cache(config: dict[str, Any], output_dir: str | Path, vae, text_encoder: str = "minilm"
                ) -> LatentCache:
    """The clips' latent cache (see :func:`build_cache_and_layout`)."""
    return build_cache_and_layout(config, output_dir, vae, text_encoder)[0]


def build_cache_and_layout(config: dict[str, Any], output_dir: str | Path, vae, text_encoder: str = "minilm",
                           mixed_precision: str = "no") -> tuple[LatentCache, bool]:
    """The clips' latent cache and whether it is this process's own share (real data; encoded on this
    process's device, in ``mixed_precision``'s dtype)."""
    data = parse_diffusion_config(config, "video").data

    def procedural() -> SyntheticVideoDataset:
        weight = DIGIT_WEIGHT if data.digit_weight is None else data.digit_weight
        return SyntheticVideoDataset(data.num, seed=data.seed, num_frames=data.num_frames, fps=data.fps,
                                     size=data.size, digit_weight=weight)

    return build_task_cache(config, data, output_dir, vae, text_encoder, "clips", procedural, batch_size=16,
                            mixed_precision=mixed_precision)


def build_model(config: dict[str, Any]):
    """The model to train: ``init_from`` a 2D U-Net (inflated: temporal layers and injections at zero), or a
    trained :class:`VideoUNet` folder (continued training, e.g. a second phase with other learning rates)."""
    from microcinema.models.unet3d import VideoUNet

    source = config.get("init_from") or "embedded"
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
    if not (source / "config.json").is_file() and not is_pipeline_folder(source):
        raise MicroCinemaError(f"init_from {str(source)!r} is neither a U-Net folder (config.json) nor a diffusers "
                               "pipeline folder (unet/); give 'embedded', a trained VideoUNet, a 2D U-Net or an SD folder")
    return VideoUNet.from_pretrained_2d(source, **config.get("model", {}))


#: VideoUNet options that, set to true, add zero-initialised layers (so a trained model can be grown with
#: them) -> the parameter-name fragment of those layers.
GROWABLE: dict[str, str] = {"frame_text_modulation": "frame_text_modulations.",
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


def phase_configs(config: dict[str, Any]) -> list[tuple[str, dict[str, Any], bool]]:
    """``(name, config of that phase alone, from_fp16)`` for each phase of ``config`` in order; a config
    without ``phases:`` is one phase (``base``). A phase's ``init_from`` is filled in when it runs."""
    parsed = parse_diffusion_config(config, "video")
    base = {k: copy.deepcopy(v) for k, v in config.items() if k != "phases"}
    result = [("base", base, False)]
    for phase in parsed.phases:
        previous = result[-1][1]
        current = copy.deepcopy(previous)
        current["model"] = {**previous.get("model", {}), **phase.model}
        current["loss"] = {**previous.get("loss", {}), **phase.loss}
        same_type = phase.data.get("type", "procedural") == previous["data"].get("type", "procedural")
        current["data"] = {**previous["data"], **phase.data} if same_type or not phase.data else dict(phase.data)
        current["train"] = {**previous["train"], **phase.train}
        check(not phase.model or _growable(phase.model),
              f"config {parsed.path}: phases ({phase.name}): model {phase.model} may only switch on (true) the "
              f"options that grow a trained model: {', '.join(GROWABLE)}")
        parse_diffusion_config(current, "video")  # each phase's merged settings are checked up front
        result.append((phase.name, current, phase.from_fp16))
    for name, phase_config, _ in result:  # every phase's model keys, before any training
        check_model_keys(phase_config.get("model") or {}, parsed.path, name)
    return result


def check_model_keys(model: dict[str, Any], path: Any = None, phase: str | None = None) -> None:
    """The ``model:`` keys (of a phase: merged with the earlier phases') must be :class:`VideoUNet` options."""
    from microcinema.models.unet3d import VideoUNet

    allowed = sorted(VideoUNet._get_init_keys(VideoUNet) - {"self", "unet", "unet_config"})
    where = "section 'model'" + (f" (phase {phase})" if phase else "")
    check(all(k in allowed for k in model),
          f"config {path}: unknown key {next((k for k in model if k not in allowed), '')!r} in {where}; "
          f"allowed: {', '.join(allowed)}")


def stage_two_components(config: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    """The frozen VAE and text encoder names and the training scheduler of a run, from its (first phase's)
    ``init_from``: an SD folder brings its own. Later phases start from a trained VideoUNet folder, which
    has none of them, so every phase uses these (not its own ``init_from``'s)."""
    init_from = config.get("init_from")
    return resolve_components(config, init_from), training_scheduler(init_from)


def _prediction_type(loss: VideoLoss, scheduler: Any, path: Any = None) -> str:
    """The loss's target (the config's, else the scheduler's); the loss options checked against it and the
    schedule's length."""
    prediction_type = loss.prediction_type or prediction_type_of(dict(scheduler.config))
    loss.check_timesteps(int(scheduler.config.num_train_timesteps), path)
    check(loss.max_x0_weight == 1 or prediction_type == "epsilon",
          f"config {path}: max_x0_weight is an epsilon-loss weighting; drop it (or set 1) for prediction_type "
          f"{prediction_type!r}")
    return prediction_type


def train(config: dict[str, Any], output_dir: str | Path, export: str | Path | None = None, *,
          kind: str = "video", **overrides: Any) -> dict[str, Any]:
    phases = phase_configs(config)
    resolved = stage_two_components(config)  # from the first phase's init_from, for every phase
    for _, phase_config, _ in phases:  # every train section (with the overrides) is checked before any work
        train_config(phase_config, output_dir, **overrides)
        _prediction_type(parse_diffusion_config(phase_config, "video").loss, resolved[1], config.get("_path"))
    if len(phases) == 1:
        report = train_phase(config, output_dir, kind=kind, components=resolved, **overrides)
        final = Path(output_dir) / "final"
    else:
        started = time.time()
        reports, previous = {}, None
        for n, (name, phase_config, from_fp16) in enumerate(phases):
            run = Path(output_dir) / "phases" / f"{n}_{name}"
            if previous is not None:
                phase_config = {**phase_config, "init_from": str(_phase_init(previous, from_fp16))}
            reports[name] = _run_phase(phase_config, run, previous, kind, overrides, resolved)
            previous = run
        final = Path(output_dir) / "final"
        if _is_main():
            if final.exists():
                shutil.rmtree(final)
            shutil.copytree(previous / "final", final)
            for name in ("components.json", "scheduler"):
                source = previous / name
                if source.is_dir():
                    shutil.copytree(source, Path(output_dir) / name, dirs_exist_ok=True)
                elif source.is_file():
                    shutil.copy(source, Path(output_dir) / name)
        report = {"phases": reports, "steps": sum(r["steps"] for r in reports.values()),
                  "train_minutes": round((time.time() - started) / 60, 2),
                  "final_loss": reports[phases[-1][0]]["final_loss"], "params": reports[phases[-1][0]]["params"]}
    if export and _is_main():
        from microcinema.models.unet3d import VideoUNet

        export_fp16(VideoUNet.from_pretrained(final), export, provenance(config, evaluation=report))
    return report


def _is_main() -> bool:
    from microcinema.data.build import process_state

    return process_state().is_main_process


def _phase_init(previous: Path, from_fp16: bool) -> Path:
    """The previous phase's final weights, or (``from_fp16``) a copy rounded to fp16 as its export holds them."""
    if not from_fp16:
        return previous / "final"
    rounded = previous / "final_fp16"
    if _is_main() and not (rounded / "config.json").is_file():
        from microcinema.models.unet3d import VideoUNet

        model = VideoUNet.from_pretrained(previous / "final")
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
        tmp = previous / ".final_fp16.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        tmp.rename(rounded)
    from microcinema.data.build import process_state

    process_state().wait_for_everyone()
    return rounded


def _run_phase(config: dict[str, Any], run: Path, previous: Path | None, kind: str, overrides: dict,
               components: tuple[dict[str, Any], Any]) -> dict:
    done = run / "done.json"
    if done.is_file():  # finished: skipped on restart
        return json.loads(done.read_text())
    cache = run / "latents.safetensors"
    if previous is not None and _is_main() and not cache.exists() and (previous / "latents.safetensors").exists():
        run.mkdir(parents=True, exist_ok=True)  # same clips as the previous phase: reuse its encoding
        shutil.copyfile(previous / "latents.safetensors", cache)  # (the fingerprint check rebuilds otherwise)
    report = train_phase(config, run, kind=kind, components=components, **overrides)
    if _is_main():
        done.write_text(json.dumps(report, indent=2, default=str))
    return report


def train_phase(config: dict[str, Any], output_dir: str | Path, *, kind: str = "video",
                components: tuple[dict[str, Any], Any] | None = None, **overrides: Any) -> dict[str, Any]:
    """One training run (one phase): ``init_from`` -> ``output_dir/final``. ``components``: the run's
    ``(VAE / text encoder names, training scheduler)`` (:func:`stage_two_components`; default: from this
    config's ``init_from``)."""
    parsed = parse_diffusion_config({k: v for k, v in config.items() if k != "phases"}, "video")
    check_model_keys(parsed.model, parsed.path)
    train_settings = train_config(config, output_dir, **overrides)
    started = time.time()
    names, scheduler = components if components is not None else stage_two_components(config)
    scheduler = copy.deepcopy(scheduler)  # write_components registers this phase's prediction type on it
    loss: VideoLoss = parsed.loss
    prediction_type = _prediction_type(loss, scheduler, parsed.path)
    vae = load_vae(names["vae"])
    cache, local = build_cache_and_layout(config, output_dir, vae, names["text_encoder"],
                                          mixed_precision=train_settings.mixed_precision)
    torch.manual_seed(train_settings.seed)  # the randomly initialised new layers: the same for the same config
    model = build_model(config)
    loss_fn = make_loss(kind, cache, vae.config.scaling_factor, lam=loss.noise_prior_lambda,
                        condition_dropout=loss.condition_dropout, latents=loss.latents,
                        high_noise_fraction=loss.high_noise_fraction, high_noise_from=loss.high_noise_from,
                        max_x0_weight=loss.max_x0_weight, hide_motion_from=loss.hide_motion_from,
                        min_snr_gamma=loss.min_snr_gamma, scheduler=scheduler, prediction_type=prediction_type)
    groups = model.parameter_groups(train_settings.learning_rate, spatial_lr_scale=loss.spatial_lr_scale)
    trainer = Trainer(model, cache, loss_fn, train_settings, param_groups=groups, local_data=local)
    result = trainer.train()
    if trainer.accelerator.is_main_process:
        write_components(output_dir, names, scheduler, prediction_type)
    return {"steps": result.global_step, "train_minutes": round((time.time() - started) / 60, 2),
            "final_loss": result.last_loss, "params": sum(p.numel() for p in model.parameters())}
