"""The domain video classifier (feature network of the domain FVD): shapes, saving, its training task, the
distance itself and input checks. Tiny random models only; the shipped one is trained by its command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from microcinema.cli import main
from microcinema.data.synthetic import make_clip
from microcinema.core.errors import MicroCinemaError
from microcinema.eval import domain_classifier as dc
from microcinema.eval.domain_classifier import (DomainVideoClassifier, domain_features, domain_fvd,
                                                load_domain_classifier)
from microcinema.training.common import load_config

TINY = {"block_out_channels": [8, 8, 16, 16], "norm_num_groups": 4}


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    """16 real procedural clips, uint8 (N, T, H, W, 3), 9 frames at 2 fps, 32x32 (resized to 64 by the model)."""
    return np.stack([make_clip(i, seed=5, num_frames=9, fps=2.0, size=32)[0] for i in range(16)])


@pytest.fixture(scope="module")
def tiny_model() -> DomainVideoClassifier:
    torch.manual_seed(0)
    return DomainVideoClassifier(**TINY).eval()


@pytest.mark.parametrize("frames", [2, 5, 9, 33])
def test_outputs_have_head_and_feature_shapes_for_any_length(frames):
    model = DomainVideoClassifier().eval()
    with torch.no_grad():
        out = model(torch.rand(2, frames, 3, 64, 64) * 2 - 1)
    assert out.features.shape == (2, model.feature_dim) == (2, 192)
    assert (out.colour.shape, out.object.shape, out.motion.shape) == ((2, 8), (2, 14), (2, 7))
    assert sum(p.numel() for p in model.parameters()) < 1_000_000


def test_save_and_load_round_trip(tmp_path, tiny_model):
    tiny_model.save_pretrained(tmp_path / "m")
    loaded = load_domain_classifier(tmp_path / "m")
    x = torch.rand(2, 4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x).motion, tiny_model(x).motion)
    assert list(loaded.config.block_out_channels) == TINY["block_out_channels"]


def test_training_task_exports_weights_with_accuracies(tmp_path):
    config = load_config("classifier")
    config.pop("_path")
    config["model"].update(TINY)
    config["data"].update(num=16, size=32)
    config["eval"]["num"] = 4
    config["train"].update(max_steps=5, batch_size=4, checkpoint_every=5, log_every=1, warmup_steps=1,
                           progress_bar=False)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "classifier", "--config", str(tmp_path / "c.yaml"), "--output-dir", str(tmp_path / "run"),
                 "--export", str(tmp_path / "export")]) == 0
    record = json.loads((tmp_path / "export" / "training.json").read_text())
    assert record["command"].startswith("microcinema train classifier")
    for key in ("accuracy_fp32", "accuracy_fp16_export"):
        for split in ("heldout", "train_split"):
            accuracy = record["evaluation"][key][split]
            assert set(accuracy) == {"colour", "object", "motion"} and all(0 <= a <= 1 for a in accuracy.values())
    assert record["evaluation"]["steps"] == 5
    model = load_domain_classifier(tmp_path / "export")
    assert model.dtype == torch.float32 and model.config.sample_size == 32


def test_domain_fvd_is_zero_for_a_set_against_itself_and_grows_for_a_different_set(tiny_model, clips):
    same = domain_fvd(clips, clips, tiny_model)
    inverted = domain_fvd(clips, 255 - clips, tiny_model)
    shuffled = domain_fvd(clips, clips[:, np.random.default_rng(0).permutation(9)], tiny_model)
    assert same < 1e-8 and inverted > 1e-2 and shuffled > 1e-3  # a random net: small, but far above zero
    # float tensors (N, T, 3, H, W) in [-1, 1] give the same features as the uint8 arrays
    as_tensor = torch.from_numpy(clips).permute(0, 1, 4, 2, 3).float() / 127.5 - 1
    np.testing.assert_allclose(domain_features(as_tensor, tiny_model, batch_size=5),
                               domain_features(list(clips), tiny_model), rtol=1e-4, atol=1e-4)


def test_bad_videos_and_missing_weights_are_clear_errors(tmp_path, tiny_model, clips, monkeypatch):
    with pytest.raises(MicroCinemaError, match=r"uint8 \(N, T, H, W, 3\)"):
        domain_features(clips[0], tiny_model)  # one clip, no batch axis
    with pytest.raises(MicroCinemaError, match=r"uint8 \(N, T, H, W, 3\)"):
        domain_features(clips.astype(np.float32), tiny_model)
    with pytest.raises(MicroCinemaError, match=r"float \(N, T, 3, H, W\)"):
        domain_features(torch.zeros(2, 9, 32, 32, 3), tiny_model)  # channels last
    with pytest.raises(MicroCinemaError, match="at least 2 frames"):
        domain_features(clips[:, :1], tiny_model)
    with pytest.raises(MicroCinemaError, match="at least 2 videos"):
        domain_fvd(clips[:1], clips, tiny_model)
    monkeypatch.setattr(dc, "SHIPPED_PATH", tmp_path / "nothing")
    with pytest.raises(MicroCinemaError, match="microcinema train classifier --config classifier"):
        load_domain_classifier()
