"""Tests of microcinema.training.trainer: exact resume after SIGKILL, checkpoints, EMA, clipping, param groups, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from microcinema.core.errors import MicroCinemaError
from microcinema.training.trainer import (
    EMA,
    TrainConfig,
    Trainer,
    condition_dropout_mask,
    drop_conditions,
    latest_checkpoint,
    plot_loss,
    plot_probe,
    read_loss_log,
)

sys.path.insert(0, str(Path(__file__).parent))
import trainer_resume_script as job  # noqa: E402

SCRIPT = Path(__file__).parent / "trainer_resume_script.py"


@pytest.fixture(autouse=True)
def _one_thread():
    """Same thread count in-process as in the subprocesses, so CPU reductions match bit for bit."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _launch(out: Path, steps: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(out.parent / f"{out.name}.stderr", "a") as stderr:
        return subprocess.Popen(
            [sys.executable, str(SCRIPT), str(out), str(steps), *extra],
            env=env, stdout=subprocess.DEVNULL, stderr=stderr,
        )


def _last_step(log: Path) -> int:
    records = read_loss_log(log)
    return records[-1]["step"] if records else 0


# ------------------------------------------------------------------------------------------- exact resume


def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference = job.run(str(tmp_path / "ref"), 40)
    ref_log = read_loss_log(reference.log_path)
    assert [r["step"] for r in ref_log] == list(range(1, 41))

    out = tmp_path / "killed"
    out.mkdir()
    proc = _launch(out, 40, "--sleep-after", "20", "--sleep", "0.4")  # slow after step 20: time to kill
    deadline = time.monotonic() + 60
    while _last_step(out / "loss.jsonl") < 25:
        assert proc.poll() is None, (out.parent / "killed.stderr").read_text()
        assert time.monotonic() < deadline, "the training subprocess made no progress"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    killed_at = _last_step(out / "loss.jsonl")
    assert 25 <= killed_at < 30, "killed between checkpoints 20 and 30"
    assert latest_checkpoint(out).name == "step_00000020"
    assert not (out / "final").exists()

    # Leftovers of a kill while writing: a temp dir, an incomplete step dir, a line cut in half.
    ckpts = out / "checkpoints"
    (ckpts / ".tmp-step_00000030").mkdir()
    (ckpts / ".tmp-step_00000030" / "model.safetensors").write_bytes(b"garbage")
    (ckpts / "step_00000035").mkdir()
    (ckpts / "step_00000035" / "model.safetensors").write_bytes(b"garbage")
    with open(out / "loss.jsonl", "a") as f:
        f.write('{"step": 26, "lo')
    assert latest_checkpoint(out).name == "step_00000020"

    proc = _launch(out, 40)
    assert proc.wait(timeout=120) == 0, (out.parent / "killed.stderr").read_text()
    assert json.loads((out / "result.json").read_text()) == {"global_step": 40, "resumed_from": 20}

    log = read_loss_log(out / "loss.jsonl")
    assert [r["step"] for r in log] == list(range(1, 41)), "monotone, no duplicates"
    assert log == ref_log, "per-step loss (and lr, grad norm, dropout rate) identical to the uninterrupted run"
    final, ref_final = load_file(out / "final" / "model.safetensors"), load_file(reference.final_dir / "model.safetensors")
    assert final.keys() == ref_final.keys()
    assert all(torch.equal(final[k], ref_final[k]) for k in final)
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000030", "step_00000040"]


@pytest.mark.slow
def test_ddp_two_processes_resume_exactly(tmp_path: Path) -> None:
    """Two CPU processes (gloo) through torchrun: data sharding, loss reduction, per-rank RNG state files,
    gradient accumulation with no_sync, and exact resume."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "true"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), "--ddp-check", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "ddp.json").read_text())
    assert report == {
        "world": 2, "resumed_from": 4, "same_log": True, "steps": list(range(1, 9)), "same_weights": True,
        "rng_files": ["random_states_0.pkl", "random_states_1.pkl"],
    }


def test_crash_resume_keeps_log_windows_exact(tmp_path: Path) -> None:
    """log_every=3 does not divide checkpoint_every=10: the partial log window is restored too."""
    kw = dict(log_every=3, checkpoint_every=10)
    ref = read_loss_log(job.run(str(tmp_path / "ref"), 30, **kw).log_path)

    class Crash(job.SlowLoss):
        def __call__(self, model, batch, generator):
            if self.calls == 22:
                raise RuntimeError("simulated crash")
            return super().__call__(model, batch, generator)

    out = str(tmp_path / "run")
    torch.manual_seed(0)
    trainer = Trainer(job.TinyDenoiser(), job.TinyData(), Crash(), job.make_config(out, 30, **kw))
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    assert _last_step(Path(out) / "loss.jsonl") == 21
    result = job.run(out, 30, **kw)
    assert result.resumed_from == 20
    assert read_loss_log(result.log_path) == ref
    assert [r["step"] for r in ref] == [3, 6, 9, 12, 15, 18, 21, 24, 27, 30]


def test_rerun_of_finished_run_is_a_no_op(tmp_path: Path) -> None:
    first = job.run(str(tmp_path), 12)
    log = read_loss_log(first.log_path)
    again = job.run(str(tmp_path), 12)
    assert again.resumed_from == 12 and again.global_step == 12
    assert read_loss_log(again.log_path) == log


# -------------------------------------------------------------------------------------- training pieces


def test_ema_moves_toward_params() -> None:
    p = nn.Parameter(torch.zeros(4))
    ema = EMA([p], decay=0.5)
    with torch.no_grad():
        p.add_(1.0)
    ema.update([p])  # first update: decay min(0.5, 1/10) = 0.1
    assert torch.allclose(ema.shadow[0], torch.full((4,), 0.9))
    ema.update([p])  # second: min(0.5, 2/11)
    assert torch.allclose(ema.shadow[0], torch.full((4,), 1 - 0.1 * 2 / 11))
    for _ in range(20):
        ema.update([p])
    assert ema.current_decay() == 0.5
    assert (1.0 - ema.shadow[0]).abs().max() < 1e-6


def test_final_export_holds_ema_weights_and_training_weights_are_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = job.TinyDenoiser()
    trainer = Trainer(model, job.TinyData(), job.SlowLoss(), job.make_config(str(tmp_path), 15, ema_decay=0.8))
    result = trainer.train()
    exported = load_file(result.final_dir / "model.safetensors")
    names = [n for n, _ in model.named_parameters()]
    for name, shadow, param in zip(names, trainer.ema.shadow, model.parameters()):
        assert torch.equal(exported[name], shadow)
        assert not torch.equal(param.detach(), shadow), "EMA lags behind the raw weights"
    assert trainer.ema.num_updates == 15


def test_gradient_clipping_is_applied(tmp_path: Path) -> None:
    torch.manual_seed(0)

    def huge_loss(model, batch, generator):
        return 1e4 * job.SlowLoss()(model, batch, generator)["loss"]

    trainer = Trainer(job.TinyDenoiser(), job.TinyData(), huge_loss, job.make_config(str(tmp_path), 4, grad_clip=0.5))
    norms = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())

    trainer.optimizer.optimizer.register_step_pre_hook(record)
    trainer.train()
    assert len(norms) == 4 and max(norms) <= 0.5 * (1 + 1e-5)
    assert min(r["grad_norm"] for r in read_loss_log(tmp_path / "loss.jsonl")) > 100, "pre-clip norm is logged"


class Three(nn.Module):
    def __init__(self):
        super().__init__()
        self.spatial, self.temporal, self.frozen = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.temporal(self.spatial(self.frozen(x)))


class Vectors(Dataset):
    def __init__(self, n: int = 16, dim: int = 4):
        self.x = torch.randn(n, dim, generator=torch.Generator().manual_seed(1))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i]


def _mse(model, x, generator):
    return ((model(x) - 1.0) ** 2).mean()


def test_param_group_learning_rates_are_respected_and_frozen_params_excluded(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Three()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = TrainConfig(str(tmp_path), max_steps=1, batch_size=4, learning_rate=1e-3, grad_clip=None,
                      ema_decay=None, progress_bar=False)
    groups = [
        {"params": ["spatial.weight", "spatial.bias"], "lr_scale": 0.1},
        {"params": list(model.temporal.parameters()) + list(model.frozen.parameters()), "lr": 5e-3},
    ]
    trainer = Trainer(model, Vectors(), _mse, cfg, param_groups=groups)
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs == pytest.approx([1e-4, 5e-3])
    in_groups = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert not any(id(p) in in_groups for p in model.frozen.parameters())
    trainer.train()
    step = {n: (p.detach() - before[n]).abs().max().item() for n, p in model.named_parameters()}
    # The first AdamW step moves every weight by ~lr (|m_hat / sqrt(v_hat)| = 1).
    assert step["spatial.weight"] == pytest.approx(1e-4, rel=1e-3)
    assert step["temporal.weight"] == pytest.approx(5e-3, rel=1e-3)
    assert step["frozen.weight"] == 0 and step["frozen.bias"] == 0


def test_trainable_predicate_freezes_parameters(tmp_path: Path) -> None:
    model = Three()
    cfg = TrainConfig(str(tmp_path), max_steps=1, batch_size=4, progress_bar=False)
    trainer = Trainer(model, Vectors(), _mse, cfg, trainable=lambda name, p: name.startswith("temporal"))
    assert trainer.trainable_params == list(model.temporal.parameters())
    assert not model.spatial.weight.requires_grad and not model.frozen.weight.requires_grad


def test_gradient_accumulation_equals_the_big_batch(tmp_path: Path) -> None:
    def final_weights(out: str, batch: int, accum: int) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Linear(4, 4)
        cfg = TrainConfig(out, max_steps=6, batch_size=batch, gradient_accumulation_steps=accum,
                          ema_decay=None, progress_bar=False, learning_rate=1e-2)
        Trainer(model, Vectors(n=32), _mse, cfg).train()
        return model.weight.detach()

    big = final_weights(str(tmp_path / "a"), 8, 1)
    accumulated = final_weights(str(tmp_path / "b"), 4, 2)
    assert torch.allclose(big, accumulated, atol=1e-6)


def test_checkpoints_are_rotated_and_leftovers_ignored(tmp_path: Path) -> None:
    job.run(str(tmp_path), 25, checkpoint_every=5, keep_checkpoints=3, log_every=5)
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_00000015", "step_00000020", "step_00000025"]
    (ckpts / ".tmp-step_00000030").mkdir()
    (ckpts / "step_00000030").mkdir()  # renamed but without trainer state: not complete
    assert latest_checkpoint(tmp_path).name == "step_00000025"
    assert [r["step"] for r in read_loss_log(tmp_path / "loss.jsonl")] == [5, 10, 15, 20, 25]


def test_diffusers_model_is_exported_with_save_pretrained(tmp_path: Path) -> None:
    from diffusers import ConfigMixin, ModelMixin
    from diffusers.configuration_utils import register_to_config

    class TinyMixin(ModelMixin, ConfigMixin):
        @register_to_config
        def __init__(self, dim: int = 4):
            super().__init__()
            self.proj = nn.Linear(dim, dim)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = TinyMixin()
    cfg = TrainConfig(str(tmp_path), max_steps=3, batch_size=4, ema_decay=0.9, progress_bar=False)
    trainer = Trainer(model, Vectors(), _mse, cfg)
    final = trainer.train().final_dir
    assert (final / "config.json").is_file() and (final / "diffusion_pytorch_model.safetensors").is_file()
    loaded = TinyMixin.from_pretrained(final)
    assert torch.equal(loaded.proj.weight, trainer.ema.shadow[0])


# ------------------------------------------------------------------------------------ helpers and errors


def test_drop_conditions_rate_and_determinism() -> None:
    texts = [f"caption {i}" for i in range(20000)]
    dropped = drop_conditions(texts, 0.1, torch.Generator().manual_seed(0))
    rate = sum(t == "" for t in dropped) / len(texts)
    assert 0.09 < rate < 0.11
    assert all(d in ("", t) for d, t in zip(dropped, texts))
    assert dropped == drop_conditions(texts, 0.1, torch.Generator().manual_seed(0))
    assert drop_conditions(texts[:50], 0.0, torch.Generator()) == texts[:50]
    assert drop_conditions(texts[:50], 1.0, torch.Generator()) == [""] * 50
    assert condition_dropout_mask(7, 0.5, torch.Generator()).dtype == torch.bool
    with pytest.raises(MicroCinemaError):
        drop_conditions(texts, 1.5, torch.Generator())


@pytest.mark.parametrize(
    "bad",
    [
        {"max_steps": 0}, {"batch_size": 0}, {"learning_rate": 0.0}, {"weight_decay": -1.0},
        {"adam_betas": (0.9, 1.0)}, {"grad_clip": 0.0}, {"ema_decay": 1.0}, {"warmup_steps": -1},
        {"checkpoint_every": 0}, {"keep_checkpoints": 0}, {"log_every": 0}, {"mixed_precision": "fp8"},
        {"gradient_accumulation_steps": 0}, {"num_workers": -1}, {"lr_schedule": "exp"}, {"seed": -1},
        {"output_dir": ""},
    ],
)
def test_bad_config_raises(bad: dict) -> None:
    kwargs = {"output_dir": "out", "max_steps": 10, **bad}
    with pytest.raises(MicroCinemaError):
        TrainConfig(**kwargs)


def test_bad_inputs_raise(tmp_path: Path) -> None:
    cfg = TrainConfig(str(tmp_path), max_steps=2, batch_size=32, progress_bar=False)
    with pytest.raises(MicroCinemaError, match="smaller than one global batch"):
        Trainer(nn.Linear(4, 4), Vectors(n=16), _mse, cfg)
    cfg = TrainConfig(str(tmp_path), max_steps=2, batch_size=4, progress_bar=False)
    with pytest.raises(MicroCinemaError, match="no parameter"):
        Trainer(Three(), Vectors(), _mse, cfg, param_groups=[{"params": ["nope.weight"]}])
    model = Three()
    with pytest.raises(MicroCinemaError, match="more than one"):
        Trainer(model, Vectors(), _mse, cfg, param_groups=[{"params": ["spatial.weight"]}, {"params": ["spatial.weight"]}])
    with pytest.raises(MicroCinemaError, match="scalar"):
        Trainer(nn.Linear(4, 4), Vectors(), lambda m, x, g: m(x), cfg).train()


def test_lr_schedule_warmup_and_cosine() -> None:
    cfg = TrainConfig("out", max_steps=14, warmup_steps=4, lr_schedule="cosine")
    factors = [cfg.lr_factor(s) for s in range(14)]
    assert factors[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(factors[4:], factors[5:])) and factors[-1] < 0.05


def test_plot_loss_writes_png(tmp_path: Path) -> None:
    log = tmp_path / "loss.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 30)))
    png = plot_loss(log, tmp_path / "plots" / "loss.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(MicroCinemaError):
        plot_loss(tmp_path / "empty.jsonl", tmp_path / "x.png")


def test_probe_sees_ema_weights_and_does_not_change_training(tmp_path: Path) -> None:
    """The probe runs every probe_every steps and at the end, on the EMA weights in eval mode; the weights
    after training are those of a run without a probe, and a resumed run keeps one record per step."""
    def run(out: Path, steps: int, probe=None, **extra) -> Trainer:
        torch.manual_seed(0)
        config = job.make_config(str(out), steps, ema_decay=0.8, probe_every=4, checkpoint_every=4, keep_checkpoints=5, **extra)
        trainer = Trainer(job.TinyDenoiser(), job.TinyData(), job.SlowLoss(), config, probe=probe)
        trainer.train()
        return trainer

    seen = []

    def probe(model, step):
        shadow = trainer_ref[0].ema.shadow
        seen.append((step, model.training, torch.is_grad_enabled(),
                     all(torch.equal(p, s) for p, s in zip(model.parameters(), shadow))))
        torch.randn(3)  # the global RNG: the training draws must not depend on it
        return {"score": step / 10}

    trainer_ref: list[Trainer] = []
    torch.manual_seed(0)
    config = job.make_config(str(tmp_path / "probed"), 10, ema_decay=0.8, probe_every=4, checkpoint_every=4, keep_checkpoints=5)
    probed = Trainer(job.TinyDenoiser(), job.TinyData(), job.SlowLoss(), config, probe=probe)
    trainer_ref.append(probed)
    probed.train()
    assert [s[0] for s in seen] == [4, 8, 10]
    assert all(not training and not grad and is_ema for _, training, grad, is_ema in seen)
    assert probed.model.training, "train mode is restored after the probe"
    plain = run(tmp_path / "plain", 10)
    for a, b in zip(probed.trainable_params, plain.trainable_params):
        assert torch.equal(a, b), "a probe must not change the training"
    records = read_loss_log(tmp_path / "probed" / "probe.jsonl")
    assert [(r["step"], r["score"]) for r in records] == [(4, 0.4), (8, 0.8), (10, 1.0)]
    assert plot_probe(tmp_path / "probed" / "probe.jsonl", tmp_path / "probe.png").read_bytes()[:4] == b"\x89PNG"

    # resume: a run killed after step 8's checkpoint and raised to 12 steps logs 12, not 10 twice
    ckpts = sorted((tmp_path / "probed" / "checkpoints").iterdir())
    for ckpt in ckpts:
        if not ckpt.name.endswith("00000008"):
            import shutil

            shutil.rmtree(ckpt)
    seen.clear()
    torch.manual_seed(0)
    config = job.make_config(str(tmp_path / "probed"), 12, ema_decay=0.8, probe_every=4, checkpoint_every=4, keep_checkpoints=5)
    resumed = Trainer(job.TinyDenoiser(), job.TinyData(), job.SlowLoss(), config, probe=probe)
    trainer_ref[0] = resumed
    resumed.train()
    assert [s[0] for s in seen] == [12]
    assert [r["step"] for r in read_loss_log(tmp_path / "probed" / "probe.jsonl")] == [4, 8, 12]


def test_should_stop_saves_a_checkpoint_and_the_rerun_resumes_exactly(tmp_path: Path) -> None:
    """A cancel (should_stop) after step 3 of 8: TrainingStopped, a checkpoint of step 3, and running again
    ends with the weights of an uninterrupted run (nothing lost)."""
    from microcinema.training.trainer import TrainingStopped

    def trainer(out: Path, should_stop=None) -> Trainer:
        torch.manual_seed(0)
        config = job.make_config(str(out), 8, ema_decay=None, checkpoint_every=100)
        return Trainer(job.TinyDenoiser(), job.TinyData(), job.SlowLoss(), config, should_stop=should_stop)

    plain = trainer(tmp_path / "plain")
    plain.train()
    stopped = trainer(tmp_path / "stopped", should_stop=lambda: stopped.global_step >= 3)
    with pytest.raises(TrainingStopped, match="stopped at step 3"):
        stopped.train()
    assert latest_checkpoint(tmp_path / "stopped").name.endswith("3")
    resumed = trainer(tmp_path / "stopped")
    result = resumed.train()
    assert result.resumed_from is not None and result.global_step == 8
    for a, b in zip(plain.trainable_params, resumed.trainable_params):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
