"""Stage one: the own text-to-image pipeline, any diffusers pipeline by path, the user's image, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.cli import main
from microcinema.core.errors import MicroCinemaError
from microcinema.pipelines.key_frame import generate_key_frames, load_image, load_key_frame_model
from microcinema.pipelines.text_to_image import TextToImagePipeline
from microcinema.testing import tiny_unet2d, tiny_vae


@pytest.fixture(scope="module")
def own_pipeline(minilm_encoder):
    unet = tiny_unet2d(cross_attention_dim=384, sample_size=8)
    return TextToImagePipeline(unet, tiny_vae(), minilm_encoder, guidance_scale=3.0)


def test_own_pipeline_generates_reproducibly_in_every_output_type(own_pipeline):
    run = lambda seed, **kw: own_pipeline(["a red circle", "a blue star"], num_inference_steps=3,  # noqa: E731
                                          generator=torch.Generator().manual_seed(seed), **kw).images
    a, b, c = run(0, output_type="pt"), run(0, output_type="pt"), run(1, output_type="pt")
    assert a.shape == (2, 3, 16, 16) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    pil = run(0, output_type="pil")
    assert len(pil) == 2 and pil[0].size == (16, 16)
    assert run(0, output_type="np").dtype == np.uint8
    assert run(0, output_type="latent").shape == (2, 4, 8, 8)
    # guidance matters: scale 1 (conditional only) differs from scale 3
    assert not torch.equal(a, run(0, output_type="pt", guidance_scale=1.0))


def test_own_pipeline_save_and_load(own_pipeline, tmp_path):
    own_pipeline.save_pretrained(tmp_path / "t2i")
    loaded = TextToImagePipeline.from_pretrained(tmp_path / "t2i")
    kwargs = dict(num_inference_steps=2, output_type="pt")
    a = own_pipeline("a green square", generator=torch.Generator().manual_seed(3), **kwargs).images
    b = loaded("a green square", generator=torch.Generator().manual_seed(3), **kwargs).images
    assert torch.allclose(a, b, atol=1e-5)
    runner = load_key_frame_model(tmp_path / "t2i")
    frames = generate_key_frames("a green square", model=runner, size=24, num_inference_steps=2)
    assert frames.shape == (1, 3, 24, 24)


def test_any_diffusers_pipeline_by_path(tiny_sd_path):
    frames = generate_key_frames(["a cat", "a dog"], model=str(tiny_sd_path), size=20, num_inference_steps=2, seed=1)
    again = generate_key_frames(["a cat", "a dog"], model=str(tiny_sd_path), size=20, num_inference_steps=2, seed=1)
    assert frames.shape == (2, 3, 20, 20) and torch.equal(frames, again)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_user_image_any_mode_is_fitted(tmp_path, mode):
    array = np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8)
    image = Image.fromarray(array).convert(mode)
    path = tmp_path / f"key_{mode}.png"
    image.save(path)
    tensor, notes = load_image(path, 32)
    assert tensor.shape == (3, 32, 32) and -1 <= tensor.min() and tensor.max() <= 1
    assert any("centre-cropped to 32x32" in n for n in notes)
    assert (mode == "RGB") != any("to RGB" in n for n in notes)


def test_unreadable_image_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(MicroCinemaError, match="cannot read image"):
        load_image(bad, 64)
    with pytest.raises(MicroCinemaError, match="image not found"):
        load_image(tmp_path / "missing.png", 64)


@pytest.mark.parametrize("prompt, steps, match", [
    ("", 5, "empty prompt"),
    ("   ", 5, "empty prompt"),
    ("a red circle", 0, "num_inference_steps must be an integer >= 1"),
])
def test_bad_prompt_and_steps(own_pipeline, prompt, steps, match):
    with pytest.raises(MicroCinemaError, match=match):
        generate_key_frames(prompt, model=lambda *a, **k: None, num_inference_steps=steps)


def test_model_that_does_not_exist_or_holds_the_wrong_thing(tmp_path):
    with pytest.raises(MicroCinemaError, match="model path not found"):
        load_key_frame_model(tmp_path / "nope")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "weights.bin").write_bytes(b"x")
    with pytest.raises(MicroCinemaError, match="neither a diffusers pipeline"):
        load_key_frame_model(tmp_path / "wrong")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text("{not json")
    with pytest.raises(MicroCinemaError, match="cannot load a diffusers text-to-image pipeline"):
        load_key_frame_model(broken)


def test_long_prompt_is_truncated_with_a_warning(own_pipeline):
    long_prompt = "a red circle moving left " * 20
    with pytest.warns(UserWarning, match="at most 32"):
        own_pipeline(long_prompt, num_inference_steps=1, output_type="pt")


def test_cli_image_with_a_diffusers_folder(tiny_sd_path, tmp_path, capsys):
    out = tmp_path / "key.png"
    assert main(["image", "a cat", "--out", str(out), "--model", str(tiny_sd_path), "--steps", "2", "--size", "24"]) == 0
    assert Image.open(out).size == (24, 24)
    assert main(["image", "", "--out", str(out), "--model", str(tiny_sd_path)]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert main(["image", "a cat", "--out", str(out), "--model", str(tmp_path / "missing")]) == 2
    assert "model path not found" in capsys.readouterr().err


def test_a_bare_unet_folder_loads_with_the_embedded_vae(tmp_path):
    """`microcinema train t2i --export DIR` writes a UNet folder; it loads as a pipeline (embedded VAE, MiniLM)."""
    import json

    tiny_unet2d(cross_attention_dim=384, sample_size=8).save_pretrained(tmp_path / "unet_only")
    (tmp_path / "unet_only" / "pipeline.json").write_text(json.dumps({"guidance_scale": 2.5}))
    pipeline = TextToImagePipeline.from_pretrained(tmp_path / "unet_only")
    assert pipeline.guidance_scale == 2.5 and pipeline.image_size == 32
    frames = generate_key_frames("a red circle", model=str(tmp_path / "unet_only"), size=32, num_inference_steps=1)
    assert frames.shape == (1, 3, 32, 32)
