"""The refinement passes reuse AppearNet's features of the first passes (same condition, timestep and text):
the videos are bit-identical to recomputing them, with fewer AppearNet evaluations."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest
import torch

import microcinema.systems.microcinema.pipeline as pipeline_module
from microcinema.models.appearnet import AppearNet
from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
from microcinema.testing import tiny_vae
from test_microcinema_pipeline import TRICKS, FixedKeyFrames, video_unet


@pytest.fixture(scope="module")
def pipeline(minilm_encoder):
    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_unet=video_unet(1),
                               key_frame_model=FixedKeyFrames(), guidance_scale=3.0, **TRICKS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _run(pipe: MicroCinemaPipeline, monkeypatch, reuse: bool, **kwargs):
    calls = []
    compute = AppearNet.forward

    def counted(self, *args, **kw):
        calls.append(self)
        return compute(self, *args, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(AppearNet, "forward", counted)
        if not reuse:
            patch.setattr(pipeline_module, "_reused_appearance_features", lambda unet, keep: nullcontext())
        out = pipe("a red circle moving left", num_inference_steps=10, generator=torch.Generator().manual_seed(0),
                   progress=False, output_type="np", **kwargs)
    base = sum(c is pipe.unet.appearnet for c in calls)
    interp = sum(c is pipe.interp_unet.appearnet for c in calls)
    return out, base, interp


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "scheduler"])
def test_reused_features_give_identical_videos_with_fewer_appearnet_calls(pipeline, monkeypatch, sampler):
    monkeypatch.setattr(pipeline, "sampler", sampler)
    fresh, base_fresh, interp_fresh = _run(pipeline, monkeypatch, reuse=False)
    reused, base_reused, interp_reused = _run(pipeline, monkeypatch, reuse=True)
    assert np.array_equal(fresh.frames, reused.frames)
    refine_steps = 3  # refine_strength 0.3 of 10 steps
    assert (base_fresh, interp_fresh) == (10 + refine_steps, 10 + refine_steps)
    assert (base_reused, interp_reused) == (10, 10)
    # nothing is kept after the call: the AppearNets compute again
    assert "forward" not in vars(pipeline.unet.appearnet) and "forward" not in vars(pipeline.interp_unet.appearnet)


def test_nothing_is_reused_without_refinement_or_beyond_the_memory_budget(pipeline, monkeypatch):
    _, base, interp = _run(pipeline, monkeypatch, reuse=True, refine_strength=0.0)
    assert (base, interp) == (10, 10)
    monkeypatch.setattr(pipeline_module, "APPEARANCE_REUSE_BYTES", 0)
    fresh, base, interp = _run(pipeline, monkeypatch, reuse=True)
    assert (base, interp) == (13, 13)
    again, _, _ = _run(pipeline, monkeypatch, reuse=False)
    assert np.array_equal(fresh.frames, again.frames)
