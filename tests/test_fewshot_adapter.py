"""The few-shot adapter file (issue 18 item 4): only the trained parameters, with metadata; round trip, size, the
base fingerprint, and one-line errors for files that are not adapters or do not fit."""

from __future__ import annotations

import json

import pytest
import torch

from microcinema.core.errors import MicroCinemaError
from microcinema.systems.fewshot.adapter import (AdapterMetadata, check_adapter_fits, load_adapter,
                                                 read_adapter_metadata, save_adapter)
from microcinema.systems.fewshot.base import base_fingerprint
from microcinema.systems.fewshot.inflation import FewShotVideoUNet, count_parameters, inflate_unet
from microcinema.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_unet2d, tiny_vae


def _metadata(**overrides) -> AdapterMetadata:
    values = dict(base="embedded", base_fingerprint="0123456789abcdef", attention="recurrent", num_frames=8,
                  height=64, width=64, fps=2.0, noise="autoregressive", noise_alpha=0.2, steps=3,
                  captions=["a red ball bouncing"])
    return AdapterMetadata(**{**values, **overrides})


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    model = inflate_unet(tiny_unet2d(), "recurrent")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    state = model.trainable_state_dict()
    path = save_adapter(tmp_path / "a.safetensors", state, _metadata(trainable_parameters=123))
    loaded, meta = load_adapter(path)
    assert sorted(loaded) == sorted(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert meta.attention == "recurrent" and meta.num_frames == 8 and meta.noise == "autoregressive"
    assert meta.captions == ["a red ball bouncing"] and meta.trainable_parameters == 123 and meta.created
    assert read_adapter_metadata(path) == meta
    fresh = inflate_unet(tiny_unet2d(), "recurrent")
    fresh.load_trainable_state_dict(loaded)
    assert all(torch.equal(a, b) for a, b in zip(fresh.trainable_state_dict().values(), state.values()))
    # only the trained parameters: the file is the trainable tensors plus a small header
    assert path.stat().st_size < sum(v.numel() * 4 for v in state.values()) + 8192
    assert path.stat().st_size < count_parameters(model) * 4 / 5
    assert not list(tmp_path.glob(".*tmp"))


def test_embedded_adapter_is_a_few_megabytes():
    from microcinema.embedded import embedded_path

    config = json.loads((embedded_path("t2i") / "config.json").read_text())
    for attention in ("recurrent", "sparse-causal"):
        with torch.device("meta"):
            model = FewShotVideoUNet(unet_config={k: v for k, v in config.items() if not k.startswith("_")},
                                     attention=attention)
        trainable = count_parameters(model, model.trainable_parameter_names())
        assert 0 < trainable * 4 < 3 * 2**20, (attention, trainable)  # fp32 file: under 3 MiB


def test_not_an_adapter_is_one_line_error(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(MicroCinemaError, match="adapter not found"):
        read_adapter_metadata(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(MicroCinemaError, match="not a safetensors file") as info:
        load_adapter(garbage)
    assert "\n" not in str(info.value)
    plain = tmp_path / "plain.safetensors"
    save_file({"x": torch.zeros(2)}, str(plain))
    with pytest.raises(MicroCinemaError, match="not a few-shot adapter"):
        load_adapter(plain)
    with pytest.raises(MicroCinemaError, match=".safetensors"):
        save_adapter(tmp_path / "a.pt", {"x": torch.zeros(1)}, _metadata())


@pytest.mark.parametrize("metadata, message", [
    ("[1, 2]", "not a JSON object"),
    ('{"format": "microcinema-fewshot-adapter", "version": "two"}', "version 'two' is not one this microcinema reads"),
    ('{"format": "microcinema-fewshot-adapter", "version": null}', "version None is not one"),
    ('{"format": "microcinema-fewshot-adapter", "version": Infinity}', "version inf is not one"),
    ('{"format": "microcinema-fewshot-adapter", "version": 1}', "incomplete adapter metadata"),
    ("{oops", "not valid JSON"),
])
def test_bad_metadata_is_one_line_error(tmp_path, metadata, message):
    from safetensors.torch import save_file

    from microcinema.systems.fewshot.adapter import METADATA_KEY

    path = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(2)}, str(path), metadata={METADATA_KEY: metadata})
    with pytest.raises(MicroCinemaError, match=message) as info:
        read_adapter_metadata(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_fits_checks_base_and_size():
    meta = _metadata()
    check_adapter_fits(meta, "0123456789abcdef", "embedded", height=64, width=64)
    with pytest.raises(MicroCinemaError, match="tuned on base 'embedded'.*not on './other'"):
        check_adapter_fits(meta, "fedcba9876543210", "./other")
    with pytest.raises(MicroCinemaError, match="tuned at 64x64 pixels"):
        check_adapter_fits(meta, "0123456789abcdef", "embedded", height=32, width=64)


def test_fingerprint_tells_bases_apart_but_not_dtypes():
    from microcinema.core.text_encoders import wrap_text_encoder

    text = wrap_text_encoder(tiny_clip_text_model(), tiny_clip_tokenizer())
    a = base_fingerprint(tiny_unet2d(seed=0), tiny_vae(), text)
    assert a == base_fingerprint(tiny_unet2d(seed=0), tiny_vae(), text)
    assert a != base_fingerprint(tiny_unet2d(seed=1), tiny_vae(), text)
    assert a != base_fingerprint(tiny_unet2d(seed=0, block_out_channels=(8, 8)), tiny_vae(), text)
    half = tiny_unet2d(seed=0)
    with torch.no_grad():
        for p in half.parameters():
            p.copy_(p.half().float())  # what an fp16 file holds
    assert base_fingerprint(half, tiny_vae(), text) == base_fingerprint(half.half(), tiny_vae(), text)
