"""Pseudo-3D inflation with sparse-causal and recurrent causal attention (recurrent few-shot paper, 3.1-3.2)
on tiny random U-Nets and the embedded text-to-image U-Net.

The properties: a one-frame video is exactly the image model; gradient reaches the memory (W_hh, W_zh, b_h) at
step 0 and backward works in fp32 and bf16 (both broken in the paper's public code); keys per query constant in
the number of frames; sparse-causal attends to frames 1 and i-1 only; the 2D weights keep their names; only the
paper's parameters train.
"""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

import microcinema.systems.fewshot.inflation as inflation
from microcinema.core.errors import MicroCinemaError
from microcinema.core.samplers import sample
from microcinema.systems.fewshot.inflation import (ATTENTION_KINDS, FewShotVideoUNet, RecurrentCausalAttnProcessor,
                                                   RecurrentMemory, SparseCausalAttnProcessor, count_parameters,
                                                   inflate_unet, mark_trainable)
from microcinema.testing import tiny_unet2d

B, C, H, W, L, D = 2, 4, 8, 8, 5, 32


def _inputs(frames: int, seed: int = 0, text_dim: int = D, size: int = H) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, frames, size, size, generator=g)
    text = torch.randn(B, L, text_dim, generator=g)
    return x, torch.tensor([37, 800]), text


def _inflated(attention: str, seed: int = 0, **kwargs) -> FewShotVideoUNet:
    return inflate_unet(tiny_unet2d(seed=seed, sample_size=H), attention, **kwargs)


# ------------------------------------------------------------------------------------------ one frame = image


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("sd21_layout", [True, False])
def test_one_frame_video_is_exactly_the_image_model(attention, sd21_layout):
    ref = tiny_unet2d(seed=3, sd21_layout=sd21_layout, sample_size=H)
    model = inflate_unet(copy.deepcopy(ref), attention)
    x, t, text = _inputs(1)
    with torch.no_grad():
        video = model(x, t, text).sample
        image = ref(x[:, :, 0], t, encoder_hidden_states=text).sample
    assert video.shape == x.shape
    assert torch.equal(video[:, :, 0], image)

    # and so it generates exactly the image model's sample (a few DDIM steps, same noise)
    noise = torch.randn(B, C, 1, H, W, generator=torch.Generator().manual_seed(1))
    out_video = sample(lambda z, s: model(z, s, text).sample, noise, num_inference_steps=3, progress=False)
    out_image = sample(lambda z, s: ref(z, s, encoder_hidden_states=text).sample, noise[:, :, 0],
                       num_inference_steps=3, progress=False)
    assert torch.equal(out_video[:, :, 0], out_image)


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_one_frame_equality_on_the_embedded_t2i_unet(attention):
    from microcinema.embedded import embedded_path

    ref = UNet2DConditionModel.from_pretrained(embedded_path("t2i"), torch_dtype=torch.float32).eval()
    model = inflate_unet(copy.deepcopy(ref), attention)
    size = ref.config.sample_size
    x, t, text = _inputs(1, text_dim=ref.config.cross_attention_dim, size=size)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, 3:] = False  # MiniLM text comes with a padding mask
    with torch.no_grad():
        video = model(x, t, text, encoder_attention_mask=mask).sample
        image = ref(x[:, :, 0], t, encoder_hidden_states=text, encoder_attention_mask=mask).sample
    assert torch.equal(video[:, :, 0], image)


def test_recurrent_with_identity_memory_is_sparse_causal_at_init():
    """With f = identity the memory starts as a copy of frame i-1: the layer is Tune-A-Video's at init; with
    tanh it is a soft-clipped copy, close but not equal."""
    x, t, text = _inputs(4)
    with torch.no_grad():
        sparse = _inflated("sparse-causal")(x, t, text).sample
        linear = _inflated("recurrent", memory_nonlinearity="identity")(x, t, text).sample
        tanh = _inflated("recurrent")(x, t, text).sample
    torch.testing.assert_close(linear, sparse, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(tanh, sparse, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ gradients


def _memory_grads(model: FewShotVideoUNet, frames: int, autocast: bool = False) -> dict[str, torch.Tensor]:
    mark_trainable(model, log=None)
    x, t, text = _inputs(frames)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = model(x, t, text).sample
    assert out.dtype == (torch.bfloat16 if autocast else torch.float32)
    out.float().square().mean().backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("nonlinearity", ["tanh", "identity"])
def test_gradient_reaches_the_memory_at_step_0(nonlinearity):
    model = _inflated("recurrent", memory_nonlinearity=nonlinearity)
    grads = _memory_grads(model, frames=4)
    memory_names = [n for n in grads if n.startswith("memories.")]
    assert len(memory_names) == 3 * len(model.memories) and len(model.memories) >= 3
    for suffix in ("w_hh.weight", "w_zh.weight", "b_h"):
        names = [n for n in memory_names if n.endswith(suffix)]
        assert names and all(grads[n].abs().sum() > 0 for n in names), suffix


def test_two_frames_have_no_recurrence_so_w_hh_waits_for_frame_three():
    grads = _memory_grads(_inflated("recurrent"), frames=2)
    assert all(grads[n] is None for n in grads if n.endswith("w_hh.weight"))  # not even used
    assert all(grads[n].abs().sum() > 0 for n in grads if n.endswith("w_zh.weight"))


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_backward_works_in_fp32_and_bf16(attention, autocast):
    model = _inflated(attention)
    grads = _memory_grads(model, frames=3, autocast=autocast)
    assert set(grads) == set(model.trainable_parameter_names())
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # every parameter except the temporal attentions' q/k/v (their output projection is zero at step 0)
    # has a non-zero gradient
    zero = [n for n, g in grads.items() if g.abs().sum() == 0]
    assert zero and all(n.startswith("temporal_attentions.") and ".to_out." not in n for n in zero)


def test_gradient_checkpointing_gives_the_same_gradients():
    model = _inflated("recurrent")
    reference = {n: g.clone() for n, g in _memory_grads(model, frames=3).items()}
    model.zero_grad(set_to_none=True)
    model.enable_gradient_checkpointing()
    assert model.unet.is_gradient_checkpointing
    model.train()
    checkpointed = _memory_grads(model, frames=3)
    for name, grad in reference.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------ which frames


def _attention_layer(processor, seed: int = 0) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(query_dim=8, heads=2, dim_head=4)
    attn.set_processor(processor)
    return attn


def _changed_frames(attn: Attention, frames: int, k: int) -> set[int]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B * frames, 6, 8, generator=g)
    y = x.clone().view(B, frames, 6, 8)
    y[:, k] += torch.randn(B, 6, 8, generator=g)
    with torch.no_grad():
        a = attn(x, num_frames=frames).view(B, frames, 6, 8)
        b = attn(y.view(B * frames, 6, 8), num_frames=frames).view(B, frames, 6, 8)
    return {i for i in range(frames) if not torch.allclose(a[:, i], b[:, i], atol=1e-6)}


def test_sparse_causal_attends_to_frames_one_and_previous():
    attn = _attention_layer(SparseCausalAttnProcessor())
    frames = 6
    for k in range(frames):
        expected = set(range(frames)) if k == 0 else {k, k + 1} & set(range(frames))
        assert _changed_frames(attn, frames, k) == expected, k


def test_recurrent_memory_carries_all_previous_frames():
    memory = RecurrentMemory(8)
    attn = _attention_layer(RecurrentCausalAttnProcessor(memory))
    frames = 6
    # at init (W_hh = 0) the memory of frame i holds frame i - 1 only: the sparse-causal pattern
    for k in range(1, frames):
        assert _changed_frames(attn, frames, k) == {k, k + 1} & set(range(frames)), k
    # once W_hh is non-zero, frame i's memory depends on every frame before it
    with torch.no_grad():
        memory.w_hh.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(0))
    for k in range(1, frames):
        assert _changed_frames(attn, frames, k) == set(range(k, frames)), k


def test_keys_per_query_constant_in_the_number_of_frames(monkeypatch):
    """Count the keys each query sees (not wall time): recurrent attention has 2N keys per query after frame 1
    (N = the layer's tokens), whatever the video length, and two attention calls per layer."""
    seen: list[tuple[int, int, int]] = []  # (frames, queries, keys)
    real = inflation._attend

    def counting(q, k, v):
        seen.append((current, q.shape[-2], k.shape[-2]))
        return real(q, k, v)

    monkeypatch.setattr(inflation, "_attend", counting)
    model = _inflated("recurrent")
    layers = len(model.memories)
    ratios = {}
    for current in (1, 2, 4, 8, 12):
        x, t, text = _inputs(current)
        with torch.no_grad():
            model(x, t, text)
        calls = [(q, k) for f, q, k in seen if f == current]
        assert len(calls) == layers * (1 if current == 1 else 2)  # frame 1, then all later frames in one batch
        ratios[current] = sorted({k / q for q, k in calls})
    assert ratios[1] == [1.0]
    assert all(r == [1.0, 2.0] for f, r in ratios.items() if f > 1)


# ------------------------------------------------------------------------------------------ names and loading


def test_inflated_model_keeps_the_2d_names(tmp_path):
    model = _inflated("recurrent", seed=0)
    other = tiny_unet2d(seed=5, sample_size=H)
    assert set(model.unet.state_dict()) == set(other.state_dict())
    assert set(model.state_dict()) == {"unet." + k for k in other.state_dict()} | set(model.new_parameter_names())
    # a saved 2D state dict loads into the inflated model's 2D part, strictly
    torch.save(other.state_dict(), tmp_path / "unet2d.pt")
    model.unet.load_state_dict(torch.load(tmp_path / "unet2d.pt"))
    for name, p in other.state_dict().items():
        assert torch.equal(model.unet.state_dict()[name], p)
    # from a diffusers folder (a pipeline folder with unet/)
    other.save_pretrained(tmp_path / "pipe" / "unet")
    from_folder = inflate_unet(tmp_path / "pipe", "sparse-causal")
    assert all(torch.equal(from_folder.unet.state_dict()[k], v) for k, v in other.state_dict().items())


def test_save_and_load_the_whole_model(tmp_path):
    model = _inflated("recurrent")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(tmp_path / "m")
    loaded = FewShotVideoUNet.from_pretrained(tmp_path / "m")
    assert loaded.attention == "recurrent"
    x, t, text = _inputs(3)
    with torch.no_grad():
        assert torch.equal(model(x, t, text).sample, loaded(x, t, text).sample)


def test_deepcopy_is_independent():
    model = _inflated("recurrent")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.memories.parameters():
            p.add_(0.5)
    x, t, text = _inputs(3)
    with torch.no_grad():
        assert not torch.equal(model(x, t, text).sample, twin(x, t, text).sample)
        assert torch.equal(model(x, t, text).sample, _inflated("recurrent")(x, t, text).sample)


# ------------------------------------------------------------------------------------------ what trains


@pytest.mark.parametrize("attention", ATTENTION_KINDS)
def test_only_the_papers_parameters_train(attention):
    model = _inflated(attention)
    lines: list[str] = []
    names = mark_trainable(model, log=lines.append)
    assert len(lines) == 1 and f"{count_parameters(model, names):,}" in lines[0]
    # the paper's list, by kind
    unet_names = [n for n in names if n.startswith("unet.")]
    assert unet_names and all(n.endswith(("attn1.to_q.weight", "attn2.to_q.weight")) for n in unet_names)
    temporal = [n for n in names if n.startswith("temporal_attentions.")]
    assert len(temporal) == 5 * len(model.temporal_attentions)  # to_q, to_k, to_v, to_out weight and bias
    memory = [n for n in names if n.startswith("memories.")]
    assert len(memory) == (3 * len(model.memories) if attention == "recurrent" else 0)
    assert len(names) == len(unet_names) + len(temporal) + len(memory)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(2):  # the temporal q/k/v get gradient once their zero output projection has moved
        x, t, text = _inputs(3, seed=step)
        optimizer.zero_grad()
        model(x, t, text).sample.square().mean().backward()
        optimizer.step()
    chosen = set(names)
    for name, p in model.named_parameters():
        if name in chosen:
            assert not torch.equal(p, before[name]), f"{name} did not move"
        else:
            assert torch.equal(p, before[name]), f"{name} moved"


def test_trainable_state_dict_round_trip():
    model = _inflated("recurrent")
    mark_trainable(model, log=None)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad:
                p.add_(0.1)
    adapter = model.trainable_state_dict()
    assert list(adapter) == model.trainable_parameter_names()
    fresh = _inflated("recurrent")
    fresh.load_trainable_state_dict(adapter)
    x, t, text = _inputs(3)
    with torch.no_grad():
        assert torch.equal(model(x, t, text).sample, fresh(x, t, text).sample)
    with pytest.raises(MicroCinemaError, match="does not fit"):
        _inflated("sparse-causal").load_trainable_state_dict(adapter)


# ------------------------------------------------------------------------------------------ errors


def test_bad_input_is_one_line():
    with pytest.raises(MicroCinemaError, match="allowed: recurrent, sparse-causal"):
        _inflated("full")
    with pytest.raises(MicroCinemaError, match="allowed: tanh, identity"):
        _inflated("recurrent", memory_nonlinearity="relu")
    model = _inflated("recurrent")
    x, t, text = _inputs(2)
    with pytest.raises(MicroCinemaError, match=r"\(B, C, F, h, w\)"):
        model(x[:, :, 0], t, text)
    model.unet.set_attn_processor(AttnProcessor2_0())
    with pytest.raises(MicroCinemaError, match="re-inflate"):
        model(x, t, text)
    with pytest.raises(MicroCinemaError, match="cannot load a 2D U-Net"):
        inflate_unet("/nonexistent/folder")
