"""Tiny training job for tests/test_trainer.py: imported for the in-process runs and run as a subprocess
(which the kill test SIGKILLs mid-run, then resumes).

    python tests/trainer_resume_script.py OUTPUT_DIR MAX_STEPS [--sleep-after N --sleep S]
    ACCELERATE_USE_CPU=1 torchrun --standalone --nproc_per_node 2 tests/trainer_resume_script.py --ddp-check OUT

``--sleep-after/--sleep`` slow the loss function down after N calls (only the wall clock changes), so
the test has time to kill the process between two checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from microcinema.training.trainer import TrainConfig, Trainer, drop_conditions  # noqa: E402

WORDS = ["", "red", "green", "blue", "yellow"]


class TinyData(Dataset):
    """52 fixed items: an 8-vector and a one-word caption (not a multiple of the batch size on purpose)."""

    def __init__(self, n: int = 52):
        gen = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 8, generator=gen)
        self.words = [WORDS[1 + i % 4] for i in range(n)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "text": self.words[i]}


class TinyDenoiser(nn.Module):
    """MLP eps-predictor conditioned on a word embedding and the noise level, with dropout."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(len(WORDS), 16)
        self.net = nn.Sequential(nn.Linear(8 + 16 + 1, 32), nn.SiLU(), nn.Dropout(0.1), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor, t: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, self.embed(words), t[:, None]], dim=1))


class SlowLoss:
    """Diffusion-style loss drawing timesteps, noise and condition dropout from the generator."""

    def __init__(self, sleep_after: int = -1, sleep: float = 0.0):
        self.calls, self.sleep_after, self.sleep = 0, sleep_after, sleep

    def __call__(self, model: nn.Module, batch: dict, generator: torch.Generator) -> dict:
        self.calls += 1
        if 0 <= self.sleep_after < self.calls:
            time.sleep(self.sleep)
        x = batch["x"]
        texts = drop_conditions(batch["text"], 0.1, generator)
        words = torch.tensor([WORDS.index(t) for t in texts])
        t = torch.rand(len(x), generator=generator)
        noise = torch.randn(x.shape, generator=generator)
        noisy = (1 - t[:, None]).sqrt() * x + t[:, None].sqrt() * noise
        loss = ((model(noisy, t, words) - noise) ** 2).mean()
        return {"loss": loss, "dropped": torch.tensor(texts.count("") / len(texts))}


def make_config(output_dir: str, max_steps: int, **kw) -> TrainConfig:
    base = dict(
        batch_size=8, learning_rate=3e-3, ema_decay=0.9, warmup_steps=5, lr_schedule="cosine",
        checkpoint_every=10, keep_checkpoints=2, log_every=1, seed=7, progress_bar=False,
    )
    base.update(kw)
    return TrainConfig(output_dir=output_dir, max_steps=max_steps, **base)


def run(output_dir: str, max_steps: int, sleep_after: int = -1, sleep: float = 0.0, **kw):
    torch.manual_seed(0)
    model = TinyDenoiser()
    trainer = Trainer(model, TinyData(), SlowLoss(sleep_after, sleep), make_config(output_dir, max_steps, **kw))
    return trainer.train()


def ddp_check(output_dir: str) -> None:
    """Under ``torchrun --nproc_per_node 2`` (CPU, gloo): 8 straight steps vs 4 steps + resume to 8."""
    from safetensors.torch import load_file

    from microcinema.training.trainer import read_loss_log

    kw = dict(gradient_accumulation_steps=2, checkpoint_every=4, lr_schedule="constant")
    ref = run(f"{output_dir}/ref", 8, **kw)
    run(f"{output_dir}/part", 4, **kw)
    resumed = run(f"{output_dir}/part", 8, **kw)
    a = load_file(ref.final_dir / "model.safetensors")
    b = load_file(resumed.final_dir / "model.safetensors")
    if int(os.environ.get("RANK", 0)) == 0:
        Path(output_dir, "ddp.json").write_text(json.dumps({
            "world": int(os.environ.get("WORLD_SIZE", 1)),
            "resumed_from": resumed.resumed_from,
            "same_log": read_loss_log(ref.log_path) == read_loss_log(resumed.log_path),
            "steps": [r["step"] for r in read_loss_log(resumed.log_path)],
            "same_weights": a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a),
            "rng_files": sorted(p.name for p in ref.checkpoint.glob("random_states_*")),
        }))


def main() -> None:
    torch.set_num_threads(1)
    if sys.argv[1] == "--ddp-check":
        ddp_check(sys.argv[2])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("max_steps", type=int)
    parser.add_argument("--sleep-after", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    result = run(args.output_dir, args.max_steps, args.sleep_after, args.sleep)
    Path(args.output_dir, "result.json").write_text(
        json.dumps({"global_step": result.global_step, "resumed_from": result.resumed_from})
    )


if __name__ == "__main__":
    main()
