"""Few-shot motion tuning (recurrent few-shot paper, sections 3-4): teach a text-to-image model one motion from
8-16 clips, and save only what was trained as an adapter (:mod:`microcinema.systems.fewshot.adapter`).

:func:`train_fewshot` (the CLI's ``microcinema fewshot train``):

1. loads the base (:func:`~microcinema.systems.fewshot.base.load_base`) and the clips
   (:func:`~microcinema.systems.fewshot.data.read_tuning_clips`; bad input is a one-line error);
2. inflates the base U-Net (:func:`~microcinema.systems.fewshot.inflation.inflate_unet`, sparse-causal or
   recurrent causal attention) and marks the paper's parameters trainable (section 3.2), printing their count;
3. prints a memory estimate (:mod:`microcinema.systems.fewshot.memory`) before training starts;
4. encodes every clip once with the frozen VAE (the posterior's mode) and text encoder, then trains on the
   shared :class:`~microcinema.training.trainer.Trainer` (progress bar, ``loss.jsonl``, checkpoints, exact
   resume after a kill, optional EMA) with the shared :class:`~microcinema.core.diffusion.DiffusionLoss` whose
   noise is the structured prior (section 3.3, :func:`~microcinema.systems.fewshot.structured_noise.noise_prior`);
5. writes the adapter (the trained parameters only, EMA weights when EMA is on) and ``loss.png``.

The defaults are the paper's (section 4.1): learning rate 3e-5 with linear decay after a warm-up of a tenth of the
steps (1600 of 16000), batch 1, no EMA; independent noise (standard diffusion training). The structured priors of section 3.3
(shared as LAMP, auto-regressive as the paper proposes) are options; the paper's section 4.3 compares them
for sampling and reaches no conclusion, so none is the default. The run folder (``<adapter stem>_run/`` beside the adapter by default) keeps the
checkpoints, the loss log and ``fewshot.json`` (the settings): the same ``--out`` again resumes; a run folder or
adapter made with other settings is never overwritten without ``overwrite=True``.

Checkpoints hold only the trainable parameters (and their optimizer state): the Trainer is given a view that
registers exactly those parameters (:class:`TrainableView`), not the frozen base.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from microcinema.core.errors import MicroCinemaError, check
from microcinema.systems.fewshot.inflation import ATTENTION_KINDS, MEMORY_NONLINEARITIES
from microcinema.systems.fewshot.structured_noise import DEFAULT_ALPHA, NOISE_KINDS

#: The settings file in the run folder.
SETTINGS_FILE = "fewshot.json"
#: Settings that may change when a run is resumed (the rest must match the run folder's).
RESUMABLE = ("steps", "checkpoint_every", "progress", "dry_run", "overwrite", "run_dir", "out", "log_every")


@dataclass
class FewShotSettings:
    """Everything :func:`train_fewshot` needs. ``data``: a caption table or a folder of videos (then ``caption``);
    ``out``: the adapter file (``.safetensors``); ``base``: ``"embedded"`` or a folder
    (:mod:`~microcinema.systems.fewshot.base`); ``height``/``width``: default the base's size; ``warmup_steps``:
    default a tenth of ``steps`` (the paper's 1600 of 16000); ``ema_decay``: None (off, the paper's) or a decay."""

    data: str
    out: str
    base: str = "embedded"
    caption: str | None = None
    attention: str = "recurrent"
    memory_nonlinearity: str = "tanh"
    steps: int = 16000
    num_frames: int = 8
    fps: float = 2.0
    height: int | None = None
    width: int | None = None
    noise: str = "independent"
    noise_alpha: float = DEFAULT_ALPHA
    learning_rate: float = 3e-5
    lr_schedule: str = "linear"
    warmup_steps: int | None = None
    batch_size: int = 1
    seed: int = 0
    ema_decay: float | None = None
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    log_every: int = 10
    run_dir: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    progress: bool = True

    def check(self) -> None:
        check(self.attention in ATTENTION_KINDS,
              f"unknown attention {self.attention!r}; allowed: {', '.join(ATTENTION_KINDS)}")
        check(self.memory_nonlinearity in MEMORY_NONLINEARITIES,
              f"unknown memory nonlinearity {self.memory_nonlinearity!r}; allowed: {', '.join(MEMORY_NONLINEARITIES)}")
        check(self.noise in NOISE_KINDS, f"unknown noise prior {self.noise!r}; allowed: {', '.join(NOISE_KINDS)}")
        check(0 <= self.noise_alpha <= 1, f"--noise-alpha must be in [0, 1], got {self.noise_alpha}")
        check(isinstance(self.num_frames, int) and self.num_frames >= 2,
              f"--frames must be an integer >= 2 (a motion needs frames), got {self.num_frames!r}")
        check(self.fps > 0, f"--fps must be positive, got {self.fps}")
        check(isinstance(self.steps, int) and self.steps >= 1, f"--steps must be an integer >= 1, got {self.steps!r}")
        check(self.learning_rate > 0, f"--lr must be positive, got {self.learning_rate}")
        check(Path(self.out).suffix == ".safetensors", f"--out is the adapter file and must end in .safetensors, "
                                                       f"got {self.out}")

    @property
    def run_path(self) -> Path:
        out = Path(self.out)
        return Path(self.run_dir) if self.run_dir else out.with_name(out.stem + "_run")

    def identity(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run folder's."""
        return {k: v for k, v in asdict(self).items() if k not in RESUMABLE}


# ------------------------------------------------------------------------------------------ the trainer's view


def _escape(name: str) -> str:
    return name.replace(".", "__")


class TrainableView(nn.Module):
    """The module the shared Trainer sees: it registers exactly the inflated model's trainable parameters (the same
    tensors, under escaped names) and forwards calls to the model, which it holds without registering it. So the
    Trainer's checkpoints, optimizer state, EMA and ``final/`` export hold the adapter's parameters only."""

    def __init__(self, model: nn.Module):
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a submodule: its frozen weights stay out of state_dict()
        self.names = list(model.trainable_parameter_names())
        check(all("__" not in n for n in self.names), "parameter names with '__' cannot be escaped")
        params = dict(model.named_parameters())
        self.params = nn.ParameterDict({_escape(n): params[n] for n in self.names})

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)

    @staticmethod
    def unescape(state: dict[str, Tensor]) -> dict[str, Tensor]:
        """``params.<escaped>`` keys (a saved view) -> the model's parameter names."""
        prefix = "params."
        return {k[len(prefix):].replace("__", "."): v for k, v in state.items() if k.startswith(prefix)}


class _ClipLatents(torch.utils.data.Dataset):
    def __init__(self, items: list[dict[str, Tensor]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return self.items[index]


# ------------------------------------------------------------------------------------------ run folder


def _check_run_folder(settings: FewShotSettings) -> None:
    """Refuse to overwrite silently: a run folder or an adapter made with other settings."""
    run, out = settings.run_path, Path(settings.out)
    saved_file = run / SETTINGS_FILE
    if settings.overwrite:
        return
    if saved_file.is_file():
        saved = json.loads(saved_file.read_text())
        mine = json.loads(json.dumps(settings.identity()))
        changed = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        diffs = "; ".join(f"{k}: {saved.get(k)!r} there, {mine.get(k)!r} now" for k in changed[:3])
        check(not changed, f"{run} holds a run with other settings ({diffs}); pass --overwrite to replace it or "
                           "choose another --out")
    else:
        check(not out.exists(), f"{out} exists and has no run folder ({run}) with these settings; pass --overwrite to "
                                "replace it or choose another --out")
        check(not (run.exists() and any(run.iterdir())),
              f"{run} exists but is not a few-shot run folder; pass --overwrite to replace it or choose another --out")


# ------------------------------------------------------------------------------------------ training


def encode_clips(clips: list[Any], vae: Any, text_encoder: Any, device: torch.device) -> list[dict[str, Tensor]]:
    """Each clip as ``{"latents": (C, F, h, w) scaled VAE posterior modes, "encoder_hidden_states": (L, D)}`` plus
    ``"encoder_attention_mask"`` (L,) for encoders that mask padding (not CLIP, as Stable Diffusion)."""
    vae.to(device)
    text_encoder.to(device)
    items = []
    with torch.no_grad():
        for clip in clips:
            pixels = clip.pixels.to(device, vae.dtype)
            latents = torch.cat([vae.encode(part).latent_dist.mode() for part in pixels.split(16)])
            latents = (latents.float() * vae.config.scaling_factor).permute(1, 0, 2, 3).contiguous().cpu()
            emb = text_encoder.encode([clip.text])
            item = {"latents": latents, "encoder_hidden_states": emb.hidden_states[0].float().cpu()}
            if text_encoder.mask_padding:
                item["encoder_attention_mask"] = emb.attention_mask[0].cpu()
            items.append(item)
    return items


def make_loss_fn(scheduler_config: dict[str, Any], noise: str, noise_alpha: float):
    """``loss_fn(model, batch, generator)`` for the Trainer: :class:`~microcinema.core.diffusion.DiffusionLoss`
    (the base's schedule and prediction type, uniform timesteps) with the structured noise prior as its noise."""
    from diffusers import DDPMScheduler

    from microcinema.core.diffusion import DiffusionLoss
    from microcinema.systems.fewshot.structured_noise import noise_prior

    scheduler = DDPMScheduler.from_config({**scheduler_config, "clip_sample": False})
    loss = DiffusionLoss(scheduler, prediction_type=scheduler_config.get("prediction_type") or "epsilon")

    def loss_fn(model: nn.Module, batch: dict[str, Tensor], generator: torch.Generator) -> Tensor:
        def denoise(z_t: Tensor, t: Tensor) -> Tensor:
            return model(z_t, t, encoder_hidden_states=batch["encoder_hidden_states"],
                         encoder_attention_mask=batch.get("encoder_attention_mask")).sample

        return loss(denoise, batch["latents"], generator, noise_prior=noise_prior(noise, noise_alpha, generator))

    return loss_fn


def train_fewshot(settings: FewShotSettings, *, log: Any = print, probe: Any = None, probe_every: int | None = None,
                  should_stop: Any = None) -> dict[str, Any]:
    """Tune and save an adapter (see the module docstring); returns a report (paths, counts, timings, estimate).
    ``settings.dry_run``: check the data, base and settings and print the memory estimate, train nothing.
    ``probe(model, step)`` (the inflated :class:`~microcinema.systems.fewshot.inflation.FewShotVideoUNet` with the
    weights of that step; e.g. a sample for a live view) runs every ``probe_every`` steps and at the end;
    ``should_stop()`` is asked after every step: when true, a checkpoint is saved and
    :class:`~microcinema.training.trainer.TrainingStopped` raised (the same settings resume from it)."""
    from microcinema.systems.fewshot.adapter import AdapterMetadata, save_adapter
    from microcinema.systems.fewshot.base import load_base
    from microcinema.systems.fewshot.data import read_tuning_clips
    from microcinema.systems.fewshot.inflation import count_parameters, inflate_unet, mark_trainable
    from microcinema.systems.fewshot.memory import estimate_memory

    settings.check()
    started = time.time()
    run, out = settings.run_path, Path(settings.out)
    _check_run_folder(settings)
    base = load_base(settings.base)
    default_h, default_w = base.default_size
    height, width = settings.height or default_h, settings.width or default_w
    m = base.vae_scale_factor
    check(height % m == 0 and width % m == 0 and height > 0 and width > 0,
          f"--size must be a positive multiple of {m} pixels (the VAE downsamples x{m}), got {height}x{width}")
    latent = (height // m, width // m)
    clips = read_tuning_clips(settings.data, num_frames=settings.num_frames, fps=settings.fps, size=(height, width),
                              caption=settings.caption)
    estimate = estimate_memory(dict(base.unet.config), settings.attention, batch_size=settings.batch_size,
                               num_frames=settings.num_frames, latent_size=latent,
                               text_length=base.text_encoder.max_length, text_dim=base.text_encoder.hidden_size,
                               memory_nonlinearity=settings.memory_nonlinearity,
                               ema=settings.ema_decay is not None,
                               gradient_checkpointing=settings.gradient_checkpointing)
    check(len(clips) >= settings.batch_size, f"--batch-size {settings.batch_size} is larger than the {len(clips)} clips")
    log(f"fewshot: {len(clips)} clips of {settings.num_frames} frames at {settings.fps:g} fps, {height}x{width}; "
        f"base {settings.base} [{base.fingerprint}]")
    log(estimate.describe())
    report: dict[str, Any] = {"adapter": str(out), "run_dir": str(run), "clips": len(clips),
                              "memory_estimate": estimate.to_dict(), "base_fingerprint": base.fingerprint}
    if settings.dry_run:
        log("fewshot: dry run: data, base and settings are fine; nothing trained")
        return {**report, "dry_run": True}

    from accelerate import PartialState

    from microcinema.training.trainer import TrainConfig, Trainer, plot_loss

    if settings.overwrite:
        shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True, exist_ok=True)
    (run / SETTINGS_FILE).write_text(json.dumps(settings.identity(), indent=2) + "\n")
    device = PartialState().device
    items = encode_clips(clips, base.vae, base.text_encoder, device)
    base.vae.to("cpu")
    base.text_encoder.to("cpu")
    with torch.random.fork_rng(devices=[]):  # the new layers' random init from the seed: a run is reproducible
        torch.manual_seed(settings.seed)
        model = inflate_unet(base.unet, settings.attention, memory_nonlinearity=settings.memory_nonlinearity)
    names = mark_trainable(model, log=log)
    if settings.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device)
    view = TrainableView(model)
    warmup = settings.warmup_steps if settings.warmup_steps is not None else settings.steps // 10
    config = TrainConfig(output_dir=str(run), max_steps=settings.steps, batch_size=settings.batch_size,
                         learning_rate=settings.learning_rate, ema_decay=settings.ema_decay,
                         warmup_steps=min(warmup, settings.steps - 1), lr_schedule=settings.lr_schedule,
                         checkpoint_every=settings.checkpoint_every, log_every=settings.log_every,
                         seed=settings.seed, mixed_precision=settings.mixed_precision,
                         progress_bar=settings.progress, probe_every=probe_every if probe is not None else None,
                         extra={"fewshot": settings.identity(), "base_fingerprint": base.fingerprint})
    view_probe = None if probe is None else (lambda v, step: probe(v.inner, step) or {})
    trainer = Trainer(view, _ClipLatents(items), make_loss_fn(base.scheduler_config, settings.noise,
                                                               settings.noise_alpha), config,
                      probe=view_probe, should_stop=should_stop)
    trained = time.time()
    result = trainer.train()
    trained = time.time() - trained
    from safetensors.torch import load_file

    state = TrainableView.unescape(load_file(str(result.final_dir / "model.safetensors")))
    check(sorted(state) == sorted(names), "the trainer's export does not hold the adapter's parameters")
    metadata = AdapterMetadata(
        base=settings.base, base_fingerprint=base.fingerprint, attention=settings.attention,
        num_frames=settings.num_frames, height=height, width=width, fps=settings.fps, noise=settings.noise,
        noise_alpha=settings.noise_alpha, steps=result.global_step,
        memory_nonlinearity=settings.memory_nonlinearity, learning_rate=settings.learning_rate,
        batch_size=settings.batch_size, ema_decay=settings.ema_decay, seed=settings.seed,
        prediction_type=base.prediction_type, num_clips=len(clips),
        captions=sorted({c.text for c in clips}), trainable_parameters=count_parameters(model, names))
    save_adapter(out, state, metadata)
    plot = None
    try:
        plot = str(plot_loss(result.log_path, run / "loss.png"))
    except MicroCinemaError as error:  # matplotlib missing: the log is still there
        log(f"fewshot: note: no loss plot ({error})")
    report.update({"steps": result.global_step, "resumed_from": result.resumed_from, "last_loss": result.last_loss,
                   "adapter_bytes": out.stat().st_size, "trainable_parameters": metadata.trainable_parameters,
                   "loss_log": str(result.log_path), "loss_plot": plot, "train_seconds": round(trained, 1),
                   "total_seconds": round(time.time() - started, 1)})
    (run / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


def settings_from_dict(values: dict[str, Any]) -> FewShotSettings:
    """:class:`FewShotSettings` from a dict; unknown keys are a one-line error."""
    known = {f.name for f in fields(FewShotSettings)}
    unknown = sorted(set(values) - known)
    check(not unknown, f"unknown few-shot setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
    return FewShotSettings(**values)


__all__ = ["FewShotSettings", "SETTINGS_FILE", "TrainableView", "encode_clips", "make_loss_fn",
           "settings_from_dict", "train_fewshot"]
