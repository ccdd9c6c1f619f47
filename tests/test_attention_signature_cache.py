"""SignatureCachedAttnProcessor (issue 19): diffusers' attention without the per-call signature inspection."""

from __future__ import annotations

import inspect

import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from microcinema.models.layers import SignatureCachedAttnProcessor, cache_attention_signatures
from microcinema.testing import tiny_unet2d


def test_swapped_processors_give_bit_identical_outputs_and_skip_inspection(monkeypatch):
    unet = tiny_unet2d(cross_attention_dim=32, sample_size=8).eval()
    assert {type(p) for p in unet.attn_processors.values()} == {AttnProcessor2_0}
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 5, 32)
    with torch.no_grad():
        before = unet(x, t, text).sample
    count = cache_attention_signatures(unet)
    assert count == len(unet.attn_processors) > 0
    assert {type(p) for p in unet.attn_processors.values()} == {SignatureCachedAttnProcessor}
    assert cache_attention_signatures(unet) == 0  # already swapped
    built = []
    original = inspect._signature_from_function
    monkeypatch.setattr(inspect, "_signature_from_function", lambda *a, **k: built.append(1) or original(*a, **k))
    with torch.no_grad():
        after = unet(x, t, text).sample
    assert torch.equal(before, after)
    assert built == []  # diffusers' Attention.forward found the cached signature
    assert list(inspect.signature(SignatureCachedAttnProcessor().__call__).parameters)[:4] == [
        "attn", "hidden_states", "encoder_hidden_states", "attention_mask"]


def test_pipelines_use_it_for_their_plain_attention():
    from microcinema.pipelines.text_to_image import TextToImagePipeline

    pipe = TextToImagePipeline.embedded()
    assert {type(p) for p in pipe.unet.attn_processors.values()} == {SignatureCachedAttnProcessor}
