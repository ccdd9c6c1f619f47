"""The paper's ablations (microcinema.eval.ablations) end to end on tiny models: every row, resume, 'held here?'."""

from __future__ import annotations

import json

import pytest
import yaml

from microcinema.eval import ablations
from microcinema.eval.ablations import INJECTIONS, Budget, held_column, tables
from microcinema.eval.domain_classifier import DomainVideoClassifier
from microcinema.training.common import load_config
from microcinema.testing import tiny_unet2d, tiny_vae


@pytest.fixture()
def tiny_setup(tmp_path):
    """A video config that trains a tiny random U-Net (32x32 frames, tiny VAE) and a random domain classifier."""
    tiny_unet2d(cross_attention_dim=384, sample_size=16).save_pretrained(tmp_path / "t2i")
    tiny_vae().save_pretrained(tmp_path / "vae")
    config = load_config("video")
    config.pop("_path")
    config.update(init_from=str(tmp_path / "t2i"), vae=str(tmp_path / "vae"))
    config["model"]["temporal_attention_head_dim"] = 4
    config["data"].update(num=4, size=32)
    config["train"].update(batch_size=2, learning_rate=1e-3, warmup_steps=0, log_every=1, progress_bar=False)
    (tmp_path / "video.yaml").write_text(yaml.safe_dump(config))
    DomainVideoClassifier(block_out_channels=[8, 8, 16, 16], norm_num_groups=4, sample_size=32).save_pretrained(
        tmp_path / "classifier")
    return tmp_path


def test_ablations_end_to_end_and_resume(tiny_setup, monkeypatch, capsys):
    out = tiny_setup / "ablations"
    argv = ["--out", str(out), "--config", str(tiny_setup / "video.yaml"), "--steps-budget", "2", "--num-samples", "2",
            "--sample-steps", "2", "--few-steps", "1", "--domain-classifier", str(tiny_setup / "classifier")]
    assert ablations.main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    labels = {t["id"]: [r["label"] for r in t["rows"]] for t in results["tables"]}
    assert labels["table2"] == list(INJECTIONS)
    assert labels["fig5"] == [f"lambda {lam}, gamma {g}" for lam in ("0", "0.03", "0.1") for g in ("0", "0.02")]
    assert labels["fig11"] == [f"{p}, {s} steps" for p in ("prior (lambda 0.03, gamma 0.02)", "no prior (0, 0)")
                               for s in (2, 1)]
    for table in results["tables"]:
        assert table["metric"] == "domain_fvd"  # the classifier was given
        for row in table["rows"]:
            assert row["held"].startswith(("yes: ", "no: ")) and row["domain_fvd"] >= 0 and row["warping_error"] >= 0
    # six trained variants: four injections at lambda 0.03, SPADE at lambda 0 and 0.1 (0.03 is shared)
    assert sorted(p.name for p in (out / "runs").iterdir()) == sorted(
        [f"{i}_lambda0.03" for i in INJECTIONS] + ["add_encdec_spade_lambda0", "add_encdec_spade_lambda0.1"])
    md = (out / "ablations.md").read_text()
    for heading in ("## Table 2", "## Fig. 5", "## Fig. 11"):
        assert heading in md
    assert md.count("held here?") >= 3 and "508.56" in md and "692 to 508" in md
    assert "trained 2 steps at batch 2 on 4 procedural clips" in md
    assert "python -m microcinema.eval.ablations --out" in md and "not measured" not in md
    noise = results["sampling_noise"]  # the reference row again with the next sampling seed
    assert noise["rows"][0]["domain_fvd"] == results["tables"][0]["rows"][-1]["domain_fvd"]  # seed 0: reused
    assert noise["rows"][0]["domain_fvd"] != noise["rows"][1]["domain_fvd"] and "Sampling noise: " in md

    # second run: every variant and every evaluation is reused
    calls = {"train": 0, "generate": 0}

    def counting(name, real):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(ablations, "train_video", counting("train", ablations.train_video))
    monkeypatch.setattr(ablations, "generate_videos", counting("generate", ablations.generate_videos))
    assert ablations.main(argv) == 0
    assert calls == {"train": 0, "generate": 0}
    again = json.loads((out / "results.json").read_text())
    assert again["tables"] == results["tables"]

    # a larger budget trains again (resuming each run from its checkpoint)
    assert ablations.main([*argv[:5], "3", *argv[6:]]) == 0
    assert calls["train"] == 6
    record = json.loads((out / "runs" / "concat_lambda0.03" / "ablation.json").read_text())
    assert record["report"]["steps"] == 3


def test_held_here_is_computed_from_the_numbers():
    table2, fig5, fig11 = tables(Budget(sample_steps=25, few_steps=5))
    rows = {label: {"domain_fvd": v} for label, v in zip(INJECTIONS, (40.0, 30.0, 35.0, 10.0))}
    held = held_column(table2, rows, "domain_fvd")
    assert held["add_encdec_spade"] == "yes: best of all rows"
    assert held["concat"] == "yes: add_encdec_spade 10 vs 40"
    rows["add_dec"]["domain_fvd"] = 5.0
    held = held_column(table2, rows, "domain_fvd")
    assert held["add_encdec_spade"] == "no: add_dec as good or better" and held["add_dec"].startswith("no: ")
    labels = [label for label, _ in fig11["rows"]]
    motion = dict(zip(labels, (0.8, 0.7, 0.6, 0.2)))  # prior loses 0.1 at 5 steps, no prior loses 0.4
    held = held_column(fig11, {k: {"motion": v} for k, v in motion.items()}, "motion")
    assert held[labels[1]] == held[labels[3]] == "yes: at 5 steps, prior 0.7 vs none 0.2"
    assert held[labels[0]] == "yes: 25->5 steps costs 0.1 with the prior vs 0.4 without"
    assert fig5["best"] in [label for label, _ in fig5["rows"]]


def test_only_more_training_steps_resume_a_finished_variant():
    from microcinema.eval.ablations import _resumable

    old = {"model": {"injection": "concat"}, "train": {"max_steps": 100, "checkpoint_every": 100, "seed": 0}}
    more = {"model": {"injection": "concat"}, "train": {"max_steps": 300, "checkpoint_every": 250, "seed": 0}}
    assert _resumable(old, more) and not _resumable(more, old)  # fewer steps than trained: start again
    assert not _resumable(old, {**more, "model": {"injection": "add_dec"}})
    assert not _resumable(old, {**more, "train": {**more["train"], "seed": 1}})
