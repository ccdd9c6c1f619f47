"""Tests for classifier-free and compositional guidance (microcinema.core.guidance)."""

from __future__ import annotations

import pytest
import torch

from microcinema.core.errors import MicroCinemaError
from microcinema.core.guidance import (
    cfg_eps_model,
    classifier_free_guidance,
    compositional_eps_model,
    compositional_guidance,
    concat_cond,
)
from microcinema.core.samplers import sample


def _eps(seed: int) -> torch.Tensor:
    return torch.randn(2, 4, 3, 4, 4, generator=torch.Generator().manual_seed(seed))


def test_cfg_limits_and_compositional_reduction() -> None:
    c, u = _eps(0), _eps(1)
    assert torch.equal(classifier_free_guidance(c, u, 1.0), c)
    assert torch.equal(classifier_free_guidance(c, u, 0.0), u)
    assert torch.allclose(classifier_free_guidance(c, u, 7.5), u + 7.5 * (c - u))
    # one term: e_all + w (e_all - e_without) == CFG with scale 1 + w (ART-V's w_text 6.5 == SD's 7.5)
    assert torch.allclose(compositional_guidance(c, {"text": (u, 6.5)}), classifier_free_guidance(c, u, 7.5), atol=1e-5)
    # ART-V's three terms
    r, a, t = _eps(2), _eps(3), _eps(4)
    got = compositional_guidance(c, {"ref": (r, 0.25), "anchor": (a, 0.25), "text": (t, 6.5)})
    assert torch.allclose(got, c + 0.25 * (c - r) + 0.25 * (c - a) + 6.5 * (c - t), atol=1e-5)


def test_negative_scales_rejected() -> None:
    c, u = _eps(0), _eps(1)
    with pytest.raises(MicroCinemaError, match="non-negative"):
        classifier_free_guidance(c, u, -1.0)
    with pytest.raises(MicroCinemaError, match="'text'"):
        compositional_guidance(c, {"text": (u, -0.5)})
    with pytest.raises(MicroCinemaError, match="non-negative"):
        cfg_eps_model(lambda x, t, cond: x, None, None, float("nan"))


class CountingModel:
    """eps = x * scale(cond) + text mean; records the batch size of each call."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, x: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
        assert t.shape == (x.shape[0],)
        self.batches.append(x.shape[0])
        text = cond["text"].mean(dim=(1, 2))
        scale = 1.0 + cond["extra"]["gain"]
        return x * scale.view(-1, *[1] * (x.ndim - 1)) + text.view(-1, *[1] * (x.ndim - 1))


def test_cfg_eps_model_batches_and_matches_manual() -> None:
    model = CountingModel()
    x = torch.randn(2, 4, 3, 2, 2)
    t = torch.full((2,), 500.0)
    cond = {"text": torch.randn(2, 7, 8), "extra": {"gain": torch.tensor([0.5, -0.2])}}
    uncond = {"text": torch.zeros(1, 7, 8), "extra": {"gain": torch.zeros(1)}}  # batch 1 broadcasts
    got = cfg_eps_model(model, cond, uncond, 5.0)(x, t)
    assert model.batches == [4]  # one network call for both branches
    u_full = {"text": uncond["text"].expand(2, 7, 8), "extra": {"gain": torch.zeros(2)}}
    manual = classifier_free_guidance(model(x, t, cond), model(x, t, u_full), 5.0)
    assert torch.allclose(got, manual, atol=1e-5)
    model.batches.clear()
    assert torch.allclose(cfg_eps_model(model, cond, uncond, 1.0)(x, t), model(x, t, cond))
    assert model.batches == [2, 2]  # scale 1 skips the unconditional branch


def test_compositional_eps_model_and_sampling() -> None:
    model = CountingModel()
    x = torch.randn(2, 4, 3, 2, 2)
    t = torch.full((2,), 10.0)
    g = torch.Generator().manual_seed(0)
    full = {"text": torch.randn(2, 5, 8, generator=g), "extra": {"gain": torch.tensor([0.3, 0.1])}}
    no_text = {"text": torch.zeros(2, 5, 8), "extra": full["extra"]}
    no_gain = {"text": full["text"], "extra": {"gain": torch.zeros(2)}}
    terms = {"text": (no_text, 6.5), "gain": (no_gain, 0.25), "off": (full, 0.0)}
    eps_model = compositional_eps_model(model, full, terms)
    got = eps_model(x, t)
    assert model.batches == [6]  # all + two active terms in one batch; zero-weight term skipped
    e_all = model(x, t, full)
    manual = e_all + 6.5 * (e_all - model(x, t, no_text)) + 0.25 * (e_all - model(x, t, no_gain))
    assert torch.allclose(got, manual, atol=1e-5)
    # guided models plug into the one sampling loop
    out = sample(eps_model, (2, 4, 3, 2, 2), sampler="edm_euler", num_inference_steps=3, generator=g, progress=False)
    assert out.shape == (2, 4, 3, 2, 2) and torch.isfinite(out).all()


def test_concat_cond_structure_errors() -> None:
    with pytest.raises(MicroCinemaError, match="keys"):
        concat_cond([{"a": torch.zeros(1)}, {"b": torch.zeros(1)}])
    with pytest.raises(MicroCinemaError, match="batch"):
        concat_cond([torch.zeros(3, 2), torch.zeros(2, 2)], batch=2)
    assert concat_cond([{"a": torch.zeros(1, 2), "n": None}, {"a": torch.ones(1, 2), "n": None}])["a"].shape == (2, 2)
