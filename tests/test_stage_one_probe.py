"""The training probe of stage one (eval/stage_one.make_probe): fixed prompts, judged from pixels."""

from __future__ import annotations

import torch

from microcinema.eval.stage_one import domain_prompts, make_probe, probe_prompts
from microcinema.pipelines.text_to_image import TextToImagePipeline


def test_probe_prompts_are_fixed_digits_then_shapes_apart_from_the_evaluation():
    specs = probe_prompts(6, 4, seed=555)
    assert [s.object.startswith("digit") for s in specs] == [True] * 6 + [False] * 4
    assert {s.split for s in specs[:6]} == {"train", "heldout"}
    assert [s.caption for s in specs] == [s.caption for s in probe_prompts(6, 4, seed=555)]
    evaluation = {s.caption for s in domain_prompts(200)}
    assert not evaluation & {s.caption for s in specs}


def test_probe_judges_the_models_key_frames_the_same_way_every_time():
    pipe = TextToImagePipeline.embedded()
    probe = make_probe(pipe.vae, num_digits=3, num_shapes=3, steps=3)
    torch.manual_seed(1)
    first = probe(pipe.unet, 10)
    torch.manual_seed(2)  # the probe draws from its own generator
    assert probe(pipe.unet, 20) == first
    assert set(first) == {"digits", "shapes", "colour"} and all(0 <= v <= 1 for v in first.values())
    assert first["colour"] > 0, "the shipped model draws the prompt's colour even in 3 steps"
