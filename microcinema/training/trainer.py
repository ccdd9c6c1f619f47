"""The one trainer shared by every model of the project.

:class:`Trainer` runs an ``accelerate`` training loop (CPU, one GPU, DDP over many GPUs or nodes, mixed
precision: the same code) with AdamW, a warm-up learning-rate schedule, gradient clipping, gradient
accumulation, an EMA of the trainable weights, a tqdm progress bar, a plottable loss log and periodic,
atomically written checkpoints. Every model supplies only a *loss function*::

    def loss_fn(model, batch, generator) -> Tensor | dict[str, Tensor]

which draws all of its randomness (timesteps, noise, condition dropout via :func:`drop_conditions`)
from ``generator``.

Exact resume
------------
Killing a run at any moment (even ``SIGKILL`` while a checkpoint is being written) and starting it again
with the same config continues the loss trajectory bit for bit (on CPU; on GPU up to kernel
non-determinism). Everything random is a pure function of ``(seed, global_step)``, so nothing but the
step has to be restored to get the same randomness:

* **Per-step randomness.** Before every micro-batch the trainer seeds a fresh ``torch.Generator`` (on
  ``accelerator.device``) from ``(seed, step, process index, micro-batch index)`` and hands it to
  ``loss_fn``; it also reseeds torch's global RNG from the same tuple (a different stream), so randomness
  inside the model (``nn.Dropout``) is reproducible too, independently of the RNG states that
  ``accelerate`` also saves and restores.
* **Data order.** Epoch ``e`` visits the data set in the permutation drawn from ``(seed, e)``; each
  micro-step takes ``batch_size * num_processes`` consecutive indices and process ``r`` keeps its slice.
  The position in the data (epoch, batch within epoch) follows from the number of micro-batches consumed,
  ``step * gradient_accumulation_steps``; on resume the batches already consumed in the current epoch are
  skipped without being loaded. A data set must therefore return the same item for the same index (derive
  any augmentation randomness from the index).
* **State.** A checkpoint (``accelerator.save_state``) holds the model, the AdamW state, the lr scheduler,
  the EMA, the grad scaler, and ``trainer_state.json`` (step, epoch, batch, the partial loss-log window).
  It is written to ``checkpoints/.tmp-step_N`` and renamed to ``checkpoints/step_N`` with
  :func:`os.replace` only when complete, so a kill never leaves a half-written checkpoint where resume
  looks; leftovers are deleted at the next start. The newest ``keep_checkpoints`` are kept.
* **Loss log.** ``output_dir/loss.jsonl`` gets one JSON line per logged step (mean over the steps since
  the previous log line). On resume, lines past the resumed step (and a line cut by the kill) are dropped,
  so the log stays monotone with no duplicates.

Data split across processes
---------------------------
By default every process holds the same map-style data set and keeps its slice of each global batch. With
``Trainer(..., local_data=True)`` each process holds *its own* data set instead (real videos: every process
encodes its own caption-table rows or WebDataset shards into its own latent cache, see
:mod:`microcinema.data.build`): epoch ``e`` of process ``r`` visits its data in the permutation drawn from
``(seed, e, r)``, and an epoch has as many batches as the smallest process's data set holds, so all processes
step together. Streaming shards always go through that per-process cache (encoding is the expensive part of
a step on real video; a map-style cache keeps the exact-resume logic above unchanged), so the trainer never
iterates an ``IterableDataset``.

Samples seen
------------
When a batch is a dict with a ``"key"`` list (the latent caches of real data give the sample keys), each
process records the keys of the samples it trained on in ``output_dir/samples_seen/rank_<r>.json``
(``{"rank", "num_processes", "keys", "draws"}``, written at every checkpoint and at the end; kept across
resumes): to check what each process trained on, e.g. that the shards were split.

Resuming with a different seed, batch size, accumulation or process count still works but is no longer
exact (a warning says so). Raising ``max_steps`` and resuming continues a finished run (the cosine and
linear schedules then stretch to the new length).

At the end the EMA weights (or the raw weights when ``ema_decay`` is ``None``) are exported to
``output_dir/final``: with ``save_pretrained`` (safetensors) when the model is a diffusers ``ModelMixin``,
else as ``model.safetensors``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from microcinema.core.errors import MicroCinemaError, check

__all__ = [
    "EMA",
    "LossFn",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingStopped",
    "condition_dropout_mask",
    "drop_conditions",
    "latest_checkpoint",
    "plot_loss",
    "read_loss_log",
]

LossFn = Callable[[nn.Module, Any, torch.Generator], Union[Tensor, dict[str, Tensor]]]
"""``loss_fn(model, batch, generator)``: a scalar loss, or a dict with ``"loss"`` and extra scalars to log."""

LOG_NAME = "loss.jsonl"
PROBE_NAME = "probe.jsonl"
STATE_NAME = "trainer_state.json"
CKPT_DIR = "checkpoints"
CKPT_PREFIX = "step_"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULES = ("constant", "cosine", "linear")


@dataclass
class TrainConfig:
    """Settings of a training run. ``batch_size`` is per process and per micro-batch; one optimizer step
    sees ``batch_size * num_processes * gradient_accumulation_steps`` samples."""

    output_dir: str
    max_steps: int
    batch_size: int = 8
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float | None = 0.999
    warmup_steps: int = 0
    lr_schedule: str = "constant"  # after warm-up: "constant", "cosine" or "linear" (both decay to 0 at max_steps)
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    seed: int = 0
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    num_workers: int = 0
    probe_every: int | None = None  # run the trainer's probe (EMA weights) every N steps, log to probe.jsonl
    progress_bar: bool = True
    ddp_find_unused_parameters: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # free-form, saved with checkpoints for the record

    def __post_init__(self) -> None:
        self.adam_betas = tuple(self.adam_betas)
        check(bool(self.output_dir), "output_dir must be a non-empty path")
        check(self.max_steps > 0, f"max_steps must be > 0, got {self.max_steps}")
        check(self.batch_size > 0, f"batch_size must be > 0, got {self.batch_size}")
        check(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(
            len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
            f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}",
        )
        check(self.adam_eps > 0, f"adam_eps must be > 0, got {self.adam_eps}")
        check(self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or None, got {self.grad_clip}")
        check(
            self.ema_decay is None or 0 <= self.ema_decay < 1,
            f"ema_decay must be in [0, 1) or None, got {self.ema_decay}",
        )
        check(self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}")
        check(self.lr_schedule in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}")
        check(self.checkpoint_every > 0, f"checkpoint_every must be > 0, got {self.checkpoint_every}")
        check(self.keep_checkpoints >= 1, f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        check(self.log_every > 0, f"log_every must be > 0, got {self.log_every}")
        check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        check(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}",
        )
        check(
            self.gradient_accumulation_steps >= 1,
            f"gradient_accumulation_steps must be >= 1, got {self.gradient_accumulation_steps}",
        )
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(self.probe_every is None or self.probe_every > 0, f"probe_every must be > 0 or null, got {self.probe_every}")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the learning rates for optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        if self.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.max_steps - self.warmup_steps))
        if self.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0 - progress


class TrainingStopped(MicroCinemaError):
    """:meth:`Trainer.train` stopped early because ``should_stop()`` said so; a checkpoint of the last step was
    saved first, so the same run resumes exactly from it."""

    def __init__(self, step: int, checkpoint: Path | None):
        super().__init__(f"training stopped at step {step}; checkpoint {checkpoint} saved: run it again to resume")
        self.step, self.checkpoint = step, checkpoint


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` did."""

    global_step: int
    resumed_from: int | None  # step of the checkpoint the run resumed from, None for a fresh start
    last_loss: float | None  # last logged (window-mean) loss
    final_dir: Path
    log_path: Path
    checkpoint: Path | None  # newest complete checkpoint


# --------------------------------------------------------------------------------------------- randomness


def _derive_seed(*key: int) -> int:
    """A well-mixed 63-bit seed from a tuple of non-negative ints."""
    return int(np.random.SeedSequence(list(key)).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def condition_dropout_mask(n: int, p: float, generator: torch.Generator) -> Tensor:
    """Bool mask of ``n`` items, each ``True`` (drop) with probability ``p``, drawn from ``generator``."""
    check(0.0 <= p <= 1.0, f"condition dropout probability must be in [0, 1], got {p}")
    return torch.rand(n, generator=generator, device=generator.device) < p


def drop_conditions(texts: list[str], p: float, generator: torch.Generator) -> list[str]:
    """Condition dropout for classifier-free guidance: each text becomes ``""`` with probability ``p``
    (10% in the papers). Returns a new list; deterministic given the generator state."""
    mask = condition_dropout_mask(len(texts), p, generator).tolist()
    return ["" if drop else text for text, drop in zip(texts, mask)]


class _EpochBatches:
    """Batch sampler for one epoch: a permutation from ``(seed, epoch)``, cut into global batches of
    ``batch_size * num_processes`` (last partial batch dropped); yields this process's slices from
    ``start`` on."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, start: int, rank: int, world: int):
        gen = torch.Generator().manual_seed(_derive_seed(seed, epoch, 0xDA7A))
        self.perm = torch.randperm(n, generator=gen).tolist()
        self.batch_size, self.start, self.rank, self.world = batch_size, start, rank, world

    def __len__(self) -> int:
        return len(self.perm) // (self.batch_size * self.world) - self.start

    def __iter__(self) -> Iterator[list[int]]:
        global_batch = self.batch_size * self.world
        for b in range(self.start, self.start + len(self)):
            lo = b * global_batch + self.rank * self.batch_size
            yield self.perm[lo : lo + self.batch_size]


# -------------------------------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of parameters, kept in fp32. The decay warms up as in diffusers'
    ``EMAModel``: update ``k`` (0-based) uses ``min(decay, (1 + k) / (10 + k))``.

    Why not ``EMAModel`` itself: this keeps fp32 shadows of the trainable parameters only (whatever the
    model's dtype) and a minimal ``state_dict`` that ``register_for_checkpointing`` saves with the optimizer,
    so a resumed run continues the average bit for bit."""

    def __init__(self, params: list[nn.Parameter], decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        """Decay the next :meth:`update` will use."""
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, params: list[nn.Parameter]) -> None:
        """``shadow <- d * shadow + (1 - d) * param``."""
        d = self.current_decay()
        for s, p in zip(self.shadow, params):
            s.lerp_(p.detach().float(), 1.0 - d)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, params: list[nn.Parameter]) -> None:
        """Write the averaged values into ``params``."""
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": [s.cpu() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        check(len(state["shadow"]) == len(self.shadow), "EMA state does not match the trainable parameters")
        self.decay, self.num_updates = state["decay"], state["num_updates"]
        for s, saved in zip(self.shadow, state["shadow"]):
            s.copy_(saved)


# ------------------------------------------------------------------------------------------ checkpoints


def _step_of(path: Path) -> int:
    return int(path.name[len(CKPT_PREFIX) :])


def _complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints (renamed into place, with a trainer state), oldest first."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(CKPT_PREFIX) and p.name[len(CKPT_PREFIX) :].isdigit()
        and (p / STATE_NAME).is_file()
    ]
    return sorted(found, key=_step_of)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``output_dir/checkpoints``, or ``None``."""
    found = _complete_checkpoints(output_dir)
    return found[-1] if found else None


def _remove_dir(path: Path) -> None:
    """Delete a directory so that a kill midway never leaves it looking like a checkpoint: rename, then delete."""
    trash = path.with_name(TRASH_PREFIX + path.name)
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(path, trash)
    shutil.rmtree(trash)


def _clean_leftovers(output_dir: str | os.PathLike) -> None:
    """Delete temp/trash dirs and incomplete ``step_*`` dirs a killed run may have left."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return
    complete = set(_complete_checkpoints(output_dir))
    for p in root.iterdir():
        if p.name.startswith((TMP_PREFIX, TRASH_PREFIX)):
            shutil.rmtree(p, ignore_errors=True)
        elif p.is_dir() and p.name.startswith(CKPT_PREFIX) and p not in complete:
            _remove_dir(p)
    for p in Path(output_dir).glob(TMP_PREFIX + "*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------- loss log


def read_loss_log(log_path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a ``loss.jsonl`` file; a line cut short by a kill is skipped."""
    records = []
    path = Path(log_path)
    if not path.is_file():
        return records
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep only the complete records with ``record["step"] <= step`` (atomically)."""
    if not log_path.exists():
        return
    kept = [r for r in read_loss_log(log_path) if r.get("step", math.inf) <= step]
    tmp = log_path.with_name(TMP_PREFIX + log_path.name)
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, log_path)


def _figure(caller: str) -> tuple[Any, Any]:
    """A 7 x 4 inch matplotlib figure and its axes (matplotlib is an optional dependency: the "metrics" extra)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MicroCinemaError(f"{caller} needs matplotlib: pip install matplotlib") from e
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save_figure(fig: Any, ax: Any, out_png: str | os.PathLike) -> Path:
    """Grid, legend and tight layout, then the PNG written to ``out_png`` (its folder made)."""
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_loss(log_path: str | os.PathLike, out_png: str | os.PathLike, smoothing: float = 0.9) -> Path:
    """Plot loss vs step from ``loss.jsonl`` (raw, and smoothed by an EMA with factor ``smoothing``) to a PNG."""
    records = [r for r in read_loss_log(log_path) if "loss" in r]
    check(bool(records), f"no loss records in {log_path}")
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    smooth, acc = [], losses[0]
    for value in losses:
        acc = smoothing * acc + (1 - smoothing) * value
        smooth.append(acc)
    fig, ax = _figure("plot_loss")
    ax.plot(steps, losses, alpha=0.35, label="loss")
    ax.plot(steps, smooth, label=f"smoothed ({smoothing})")
    if min(losses) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    return _save_figure(fig, ax, out_png)


def plot_probe(probe_path: str | os.PathLike, out_png: str | os.PathLike) -> Path:
    """Plot every number a probe logged (``probe.jsonl``) against the step, one line each, to a PNG."""
    records = read_loss_log(probe_path)
    check(bool(records), f"no probe records in {probe_path}")
    names = [k for k in records[-1] if k not in ("step", "probe_seconds")
             and isinstance(records[-1][k], (int, float))]
    fig, ax = _figure("plot_probe")
    for name in names:
        points = [(r["step"], r[name]) for r in records if isinstance(r.get(name), (int, float))]
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("probe")
    return _save_figure(fig, ax, out_png)


# ---------------------------------------------------------------------------------------------- trainer


class Trainer:
    """Train ``model`` on ``dataset`` by minimising ``loss_fn``; see the module docstring.

    Args:
        model: the module to train. Parameters with ``requires_grad=False`` stay frozen.
        dataset: a map-style data set (same item for the same index).
        loss_fn: ``loss_fn(model, batch, generator)``. ``model`` is the accelerate-prepared module (call it;
            under DDP reach attributes through ``trainer.unwrapped_model``); ``batch`` is already on the
            device; ``generator`` lives on ``accelerator.device`` (draw with ``device=generator.device``).
        config: a :class:`TrainConfig`.
        param_groups: optional AdamW groups, each ``{"params": [...], "lr": x}`` or ``{"params": [...],
            "lr_scale": s}`` (``lr = s * config.learning_rate``), plus any AdamW option. ``params`` may be
            parameters or parameter names. Frozen parameters are dropped; trainable parameters in no group
            go into a default group at ``config.learning_rate``.
        collate_fn: passed to the ``DataLoader``.
        trainable: optional ``trainable(name, param) -> bool``; sets ``requires_grad`` of every parameter.
        local_data: ``dataset`` is this process's own share of the data (see "Data split across processes").
        probe: optional ``probe(model, step) -> {name: number}``, run on the main process with the EMA weights
            (eval mode, no grad) every ``config.probe_every`` steps and at the end, before that step's
            checkpoint; records go to ``probe.jsonl``. It must draw from its own generator: the training
            draws do not depend on it, so a run with a probe trains exactly as one without.
        should_stop: optional ``should_stop() -> bool``, asked after every step (a cancel button, a time limit);
            when it says so on any process, a checkpoint of that step is saved and :class:`TrainingStopped`
            raised: running the same training again resumes exactly there.
    """

    def __init__(
        self,
        model: nn.Module,
        dataset: Dataset,
        loss_fn: LossFn,
        config: TrainConfig,
        *,
        param_groups: list[dict] | None = None,
        collate_fn: Callable | None = None,
        trainable: Callable[[str, nn.Parameter], bool] | None = None,
        local_data: bool = False,
        probe: Callable[[nn.Module, int], dict[str, float]] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.config = config
        self.dataset = dataset
        self.loss_fn = loss_fn
        self.collate_fn = collate_fn
        self.output_dir = Path(config.output_dir)
        self.log_path = self.output_dir / LOG_NAME
        self.probe = probe
        self.should_stop = should_stop
        self.probe_path = self.output_dir / PROBE_NAME

        if trainable is not None:
            for name, p in model.named_parameters():
                p.requires_grad_(bool(trainable(name, p)))
        self.param_names = {p: n for n, p in model.named_parameters()}
        self.trainable_params = [p for p in model.parameters() if p.requires_grad]
        check(bool(self.trainable_params), "the model has no trainable parameters")

        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)],
        )
        world = self.accelerator.num_processes
        self.local_data = local_data
        self.samples_per_epoch = len(dataset)  # type: ignore[arg-type]
        if local_data:
            sizes = self.accelerator.gather(torch.tensor([self.samples_per_epoch], device=self.accelerator.device))
            smallest = int(sizes.min())
            self.batches_per_epoch = smallest // config.batch_size
            check(
                self.batches_per_epoch > 0,
                f"the smallest process's data set ({smallest} items) is smaller than one batch "
                f"(batch_size {config.batch_size})",
            )
        else:
            self.batches_per_epoch = self.samples_per_epoch // (config.batch_size * world)
            check(
                self.batches_per_epoch > 0,
                f"data set of {self.samples_per_epoch} items is smaller than one global batch "
                f"(batch_size {config.batch_size} x {world} processes)",
            )
        self.seen_keys: set[str] = set()
        self.seen_draws = 0

        groups = self._build_param_groups(model, param_groups)
        optimizer = torch.optim.AdamW(
            groups, lr=config.learning_rate, betas=config.adam_betas, eps=config.adam_eps,
            weight_decay=config.weight_decay,
        )
        # Not passed to prepare(): an AcceleratedScheduler steps once per process; this one steps once per
        # optimizer step, whatever the process count. Saved through register_for_checkpointing.
        # Not diffusers' get_scheduler: lr_factor is a pure function of (step, config), so a resumed run
        # recomputes it exactly from the restored step and a max_steps raised on resume stretches the decay
        # to the new end; its warm-up starts above zero (get_scheduler's first step has learning rate 0).
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, config.lr_factor)
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.ema = EMA(self.trainable_params, config.ema_decay) if config.ema_decay is not None else None
        self.accelerator.register_for_checkpointing(self.lr_scheduler)
        if self.ema is not None:
            self.accelerator.register_for_checkpointing(self.ema)

        self.global_step = 0
        self._window: dict[str, float] = {}
        self._window_count = 0
        self.last_loss: float | None = None

    # ------------------------------------------------------------------------------------------ setup

    @property
    def unwrapped_model(self) -> nn.Module:
        """The model without DDP/autocast wrappers."""
        return self.accelerator.unwrap_model(self.model)

    def _build_param_groups(self, model: nn.Module, param_groups: list[dict] | None) -> list[dict]:
        by_name = dict(model.named_parameters())
        seen: set[nn.Parameter] = set()
        groups = []
        for i, spec in enumerate(param_groups or []):
            check("params" in spec, f"param group {i} has no 'params'")
            check(not ("lr" in spec and "lr_scale" in spec), f"param group {i} has both 'lr' and 'lr_scale'")
            group = {k: v for k, v in spec.items() if k not in ("params", "lr_scale")}
            if "lr_scale" in spec:
                group["lr"] = spec["lr_scale"] * self.config.learning_rate
            params = []
            for p in spec["params"]:
                if isinstance(p, str):
                    check(p in by_name, f"param group {i}: the model has no parameter {p!r}")
                    p = by_name[p]
                check(p in self.param_names, f"param group {i} holds a tensor that is not a parameter of the model")
                check(p not in seen, f"parameter {self.param_names[p]!r} is in more than one param group")
                seen.add(p)
                if p.requires_grad:
                    params.append(p)
            if params:
                groups.append({**group, "params": params})
        rest = [p for p in self.trainable_params if p not in seen]
        if rest:
            groups.append({"params": rest})
        return groups

    # ----------------------------------------------------------------------------------------- helpers

    def _step_generator(self, step: int, micro: int) -> torch.Generator:
        """Seed torch's global RNG and return the loss generator for (step, micro-batch) of this process."""
        key = (self.config.seed, step, self.accelerator.process_index, micro)
        torch.manual_seed(_derive_seed(*key, 1))
        gen = torch.Generator(device=self.accelerator.device)
        gen.manual_seed(_derive_seed(*key, 0))
        return gen

    def _batches(self, start_micro: int) -> Iterator[Any]:
        """Micro-batches from the ``start_micro``-th on, epoch after epoch, on the device."""
        from accelerate.utils import send_to_device

        epoch, start = divmod(start_micro, self.batches_per_epoch)
        rank = self.accelerator.process_index
        while True:
            if self.local_data:  # this process's own data: its own permutation, no slicing
                sampler = _EpochBatches(self.samples_per_epoch, self.config.batch_size,
                                        _derive_seed(self.config.seed, rank, 0x10CA1), epoch, start, 0, 1)
                sampler.perm = sampler.perm[: self.batches_per_epoch * self.config.batch_size]
            else:
                sampler = _EpochBatches(
                    self.samples_per_epoch, self.config.batch_size, self.config.seed, epoch, start,
                    rank, self.accelerator.num_processes,
                )
            loader = DataLoader(
                self.dataset, batch_sampler=sampler, collate_fn=self.collate_fn,
                num_workers=self.config.num_workers,
                generator=torch.Generator().manual_seed(_derive_seed(self.config.seed, epoch, 0x5EED)),
                pin_memory=self.accelerator.device.type == "cuda",
            )
            for batch in loader:
                yield send_to_device(batch, self.accelerator.device)
            epoch, start = epoch + 1, 0

    def _record_keys(self, batch: Any) -> None:
        if isinstance(batch, dict) and isinstance(batch.get("key"), (list, tuple)):
            self.seen_keys.update(str(k) for k in batch["key"])
            self.seen_draws += len(batch["key"])

    def _seen_path(self) -> Path:
        return self.output_dir / "samples_seen" / f"rank_{self.accelerator.process_index:03d}.json"

    def _load_seen(self) -> None:
        path = self._seen_path()
        if path.is_file():
            try:
                record = json.loads(path.read_text())
                self.seen_keys, self.seen_draws = set(record["keys"]), int(record["draws"])
            except (ValueError, KeyError):
                pass

    def _write_seen(self) -> None:
        if not self.seen_keys:
            return
        path = self._seen_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(TMP_PREFIX + path.name)
        tmp.write_text(json.dumps({"rank": self.accelerator.process_index,
                                   "num_processes": self.accelerator.num_processes,
                                   "keys": sorted(self.seen_keys), "draws": self.seen_draws}, indent=1))
        os.replace(tmp, path)

    def _compute_loss(self, batch: Any, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.loss_fn(self.model, batch, generator)
        if isinstance(out, dict):
            check("loss" in out, "loss_fn returned a dict without a 'loss' entry")
            extras = {k: v for k, v in out.items() if k != "loss"}
            out = out["loss"]
        else:
            extras = {}
        check(isinstance(out, Tensor) and out.numel() == 1, "loss_fn must return a scalar tensor")
        return out, extras

    def _log(self, step: int, values: dict[str, float]) -> None:
        """Add one step to the log window; write the window mean every ``log_every`` steps and at the end."""
        for k, v in values.items():
            self._window[k] = self._window.get(k, 0.0) + v
        self._window_count += 1
        if step % self.config.log_every and step != self.config.max_steps:
            return
        record = {"step": step, **{k: v / self._window_count for k, v in self._window.items()}}
        self.last_loss = record["loss"]
        if self.accelerator.is_main_process:
            with open(self.log_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        self._window, self._window_count = {}, 0

    def _trainer_state(self) -> dict[str, Any]:
        micro = self.global_step * self.config.gradient_accumulation_steps
        return {
            "step": self.global_step,
            "epoch": micro // self.batches_per_epoch,
            "batch_in_epoch": micro % self.batches_per_epoch,
            "num_processes": self.accelerator.num_processes,
            "window": self._window,
            "window_count": self._window_count,
            "last_loss": self.last_loss,
            "config": asdict(self.config),
        }

    # --------------------------------------------------------------------------------- checkpointing

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_N`` atomically (temp dir + rename), then drop the oldest beyond
        ``keep_checkpoints``. Call on every process."""
        acc = self.accelerator
        root = self.output_dir / CKPT_DIR
        final = root / f"{CKPT_PREFIX}{self.global_step:08d}"
        tmp = root / f"{TMP_PREFIX}{final.name}"
        if acc.is_main_process and tmp.exists():
            shutil.rmtree(tmp)
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / STATE_NAME).write_text(json.dumps(self._trainer_state(), indent=1, default=str))
            if final.exists():
                _remove_dir(final)
            os.replace(tmp, final)
            for old in _complete_checkpoints(self.output_dir)[: -self.config.keep_checkpoints]:
                _remove_dir(old)
        acc.wait_for_everyone()
        return final

    def _resume(self) -> int | None:
        """Load the newest complete checkpoint, if any, and trim the loss log to it."""
        acc = self.accelerator
        if acc.is_main_process:
            _clean_leftovers(self.output_dir)
        acc.wait_for_everyone()
        ckpt = latest_checkpoint(self.output_dir)
        step = 0
        if ckpt is not None:
            acc.load_state(str(ckpt))
            state = json.loads((ckpt / STATE_NAME).read_text())
            step = self.global_step = state["step"]
            self._window = state["window"]
            self._window_count = state["window_count"]
            self.last_loss = state["last_loss"]
            saved = state["config"]
            changed = [
                k for k in ("seed", "batch_size", "gradient_accumulation_steps")
                if saved.get(k) != getattr(self.config, k)
            ]
            if state["num_processes"] != acc.num_processes:
                changed.append("num_processes")
            if changed:
                warnings.warn(f"resuming {ckpt} with different {', '.join(changed)}: the run will not be exact")
        if acc.is_main_process:
            _truncate_log(self.log_path, step)
            _truncate_log(self.probe_path, step)
        acc.wait_for_everyone()
        return None if ckpt is None else step

    @contextlib.contextmanager
    def _ema_weights(self) -> Iterator[None]:
        """The EMA weights (if any) in the trainable parameters for the block; the raw weights restored after."""
        backup = [p.detach().clone() for p in self.trainable_params]
        if self.ema is not None:
            self.ema.copy_to(self.trainable_params)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(self.trainable_params, backup):
                    p.copy_(b)

    def _run_probe(self) -> None:
        """Call the probe on the EMA weights (main process), append its record to ``probe.jsonl``, restore."""
        acc = self.accelerator
        if acc.is_main_process:
            model = self.unwrapped_model
            was_training = model.training
            started = time.time()
            with self._ema_weights():
                try:
                    model.eval()
                    with torch.no_grad():
                        values = self.probe(model, self.global_step)
                finally:
                    model.train(was_training)
            record = {"step": self.global_step, **values, "probe_seconds": round(time.time() - started, 1)}
            with open(self.probe_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        acc.wait_for_everyone()

    def _stop_requested(self) -> bool:
        """``should_stop()`` on any process (all processes agree, so they stop at the same step)."""
        if self.should_stop is None:
            return False
        flag = torch.tensor([1.0 if self.should_stop() else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    def _export_final(self) -> Path:
        """Save the EMA (or raw) weights to ``output_dir/final`` (atomically)."""
        from safetensors.torch import save_model

        final = self.output_dir / "final"
        tmp = self.output_dir / f"{TMP_PREFIX}final"
        if not self.accelerator.is_main_process:
            return final
        model = self.unwrapped_model
        with self._ema_weights():
            if tmp.exists():
                shutil.rmtree(tmp)
            if hasattr(model, "save_pretrained"):
                model.save_pretrained(str(tmp), safe_serialization=True)
            else:
                tmp.mkdir(parents=True)
                save_model(model, str(tmp / "model.safetensors"))
        if final.exists():
            _remove_dir(final)
        os.replace(tmp, final)
        return final

    # ---------------------------------------------------------------------------------------- training

    def train(self) -> TrainResult:
        """Train to ``config.max_steps``, resuming from the newest complete checkpoint in ``output_dir``."""
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        acc.wait_for_everyone()
        resumed_from = self._resume()
        self._load_seen()
        accum = cfg.gradient_accumulation_steps
        batches = self._batches(self.global_step * accum)
        self.model.train()
        bar = tqdm(
            total=cfg.max_steps, initial=self.global_step, desc="train", dynamic_ncols=True,
            disable=not (cfg.progress_bar and acc.is_main_process),
        )
        while self.global_step < cfg.max_steps:
            step = self.global_step
            lr = cfg.learning_rate * cfg.lr_factor(step)
            total: dict[str, Tensor] = {}
            for micro in range(accum):
                generator = self._step_generator(step, micro)
                batch = next(batches)
                self._record_keys(batch)
                sync = contextlib.nullcontext() if micro == accum - 1 else acc.no_sync(self.model)
                with sync:
                    loss, extras = self._compute_loss(batch, generator)
                    acc.backward(loss / accum)
                for k, v in {"loss": loss, **extras}.items():
                    total[k] = total.get(k, 0.0) + v.detach().float().reshape(()) / accum
            if cfg.grad_clip is not None:
                total["grad_norm"] = acc.clip_grad_norm_(self.trainable_params, cfg.grad_clip).detach().float()
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update(self.trainable_params)
            self.global_step += 1

            names = list(total)
            reduced = acc.reduce(torch.stack([total[k] for k in names]), reduction="mean").tolist()
            values = dict(zip(names, reduced))
            values["lr"] = lr
            self._log(self.global_step, values)
            bar.update(1)
            bar.set_postfix(loss=f"{values['loss']:.4g}", lr=f"{lr:.3g}")
            last = self.global_step == cfg.max_steps
            if self.probe is not None and cfg.probe_every and (self.global_step % cfg.probe_every == 0 or last):
                self._run_probe()  # before the checkpoint: a run resumed from this step already has its record
            checkpoint = None
            if self.global_step % cfg.checkpoint_every == 0 or last:
                checkpoint = self.save_checkpoint()
                self._write_seen()
            if not last and self._stop_requested():
                if checkpoint is None:
                    checkpoint = self.save_checkpoint()
                    self._write_seen()
                bar.close()
                raise TrainingStopped(self.global_step, checkpoint)
        bar.close()
        self._write_seen()
        acc.wait_for_everyone()
        final = self._export_final()
        acc.wait_for_everyone()
        return TrainResult(
            global_step=self.global_step, resumed_from=resumed_from, last_loss=self.last_loss,
            final_dir=final, log_path=self.log_path, checkpoint=latest_checkpoint(self.output_dir),
        )
