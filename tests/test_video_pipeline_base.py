"""The diffusers video pipeline base (pipelines/base.py) through MicroCinemaPipeline on tiny SD-layout models (CLIP
text encoder): output types, return_dict, callbacks, negative prompts, num_videos_per_prompt, sizes, chunked
decoding, dtype moves, offload wiring, the paper's class defaults, and export_to_video on the frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema import MicroCinemaPipeline, VideoPipelineOutput, VideoUNet
from microcinema.core.errors import MicroCinemaError
from microcinema.testing import tiny_clip_text_model, tiny_clip_tokenizer, tiny_unet2d, tiny_vae

PROMPT = "a red circle moving left"
KEY = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8))


def build(**settings) -> MicroCinemaPipeline:
    torch.manual_seed(0)
    video = VideoUNet.from_pretrained_2d(tiny_unet2d(sample_size=8), temporal_attention_head_dim=4)
    interp = VideoUNet.from_pretrained_2d(tiny_unet2d(sample_size=8, seed=1), temporal_attention_head_dim=4)
    with torch.no_grad():  # leave the identity, so frames differ from each other
        for model in (video, interp):
            for name, p in model.named_parameters():
                if not name.startswith("unet."):
                    p.add_(0.05 * torch.randn_like(p))
    pipe = MicroCinemaPipeline(video, tiny_vae(), tiny_clip_text_model(), tiny_clip_tokenizer(), interp_unet=interp,
                               key_frame_unet=tiny_unet2d(sample_size=8, seed=2), **settings)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def pipe() -> MicroCinemaPipeline:
    return build(sampler="ddim", guidance_scale=4.0)


def run(pipe, prompt=PROMPT, **kw):
    kw = {"num_frames": 3, "num_inference_steps": 2, "interpolate": False, "image": KEY,
          "generator": torch.Generator().manual_seed(0), **kw}
    return pipe(prompt, **kw)


def test_output_types_shapes_and_return_dict(pipe):
    latent = run(pipe, output_type="latent").frames
    assert latent.shape == (1, 4, 3, 8, 8)
    pt = run(pipe, output_type="pt")
    assert isinstance(pt, VideoPipelineOutput) and pt.frames.shape == (1, 3, 3, 16, 16) and pt.fps == 2.0
    assert 0 <= pt.frames.min() and pt.frames.max() <= 1
    np_frames = run(pipe, output_type="np").frames
    assert np_frames.shape == (1, 3, 16, 16, 3) and np_frames.dtype == np.float32
    np.testing.assert_allclose(np_frames, pt.frames.permute(0, 1, 3, 4, 2).numpy(), atol=1e-6)
    pil = run(pipe).frames  # diffusers' default "pil": a list of lists of images, one list per video
    assert len(pil) == 1 and len(pil[0]) == 3 and all(isinstance(f, Image.Image) and f.size == (16, 16) for f in pil[0])
    assert np.abs(np.asarray(pil[0][1], dtype=np.float32) / 255 - np_frames[0, 1]).max() <= 0.5 / 255 + 1e-6
    as_tuple = run(pipe, output_type="latent", return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == 1 and torch.equal(as_tuple[0], latent)
    assert pt.key_frames.shape == (1, 3, 16, 16)  # the user's image, resized and centre-cropped


def test_export_to_video_writes_the_frames(pipe, tmp_path):
    from diffusers.utils import export_to_video

    from microcinema.core.video_io import probe_video

    out = run(pipe, interpolate=True)
    for frames, name in ((out.frames[0], "pil.mp4"), (run(pipe, interpolate=True, output_type="np").frames[0], "np.mp4")):
        path = export_to_video(frames, str(tmp_path / name), fps=int(out.fps))
        info = probe_video(path)
        assert info.num_frames == 9 and abs(info.fps - 8.0) < 1e-6


@pytest.mark.parametrize("sampler", ["ddim", "scheduler"])
def test_callback_on_step_end_sees_every_step_and_can_replace_the_latents(sampler):
    pipe = build(sampler=sampler)
    seen = []

    def callback(p, i, t, kwargs):
        seen.append((p.stage, i, float(t), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 2 else {}

    out = run(pipe, num_inference_steps=3, output_type="latent", callback_on_step_end=callback)
    assert [s[:2] for s in seen] == [("base", 0), ("base", 1), ("base", 2)]
    assert seen[0][2] > seen[1][2] > seen[2][2] and seen[0][3] == (1, 4, 3, 8, 8)
    assert torch.equal(out.frames, torch.zeros_like(out.frames))  # the last step's latents were replaced
    stages = []
    run(pipe, image=None, interpolate=True, refine_strength=0.5, num_inference_steps=2, output_type="latent",
        callback_on_step_end=lambda p, i, t, kw: stages.append(p.stage) or {})
    assert stages == ["key_frame"] * 2 + ["base"] * 2 + ["refine"] + ["interpolation"] * 2 + ["interpolation_refine"]


def test_negative_prompt_and_num_videos_per_prompt(pipe):
    plain = run(pipe, output_type="latent").frames
    assert not torch.allclose(plain, run(pipe, negative_prompt="a blue star", output_type="latent").frames)
    torch.testing.assert_close(plain, run(pipe, negative_prompt="", output_type="latent").frames)  # "" = default
    many = run(pipe, [PROMPT, "a green square"], num_videos_per_prompt=2, negative_prompt=["x", "y"],
               output_type="latent", image=[KEY, KEY]).frames
    assert many.shape == (4, 4, 3, 8, 8)
    assert not torch.allclose(many[0], many[1])  # each video its own noise


def test_non_square_sizes_and_chunked_decoding(pipe):
    out = run(pipe, height=12, width=24, output_type="pt", interpolate=True)
    assert out.frames.shape == (1, 9, 3, 12, 24) and out.key_frames.shape == (1, 3, 12, 24)
    one = run(pipe, height=12, width=24, output_type="pt", interpolate=True, decode_chunk_size=1).frames
    torch.testing.assert_close(one, out.frames, atol=1e-5, rtol=0)  # float rounding of batched convolutions
    generated = run(pipe, image=None, height=20, width=8, output_type="np").frames  # stage one at that size too
    assert generated.shape == (1, 3, 20, 8, 3)
    odd = run(pipe, height=10, width=14, output_type="pt")  # a (5, 7) latent: not a multiple of the U-Net's x2
    assert odd.frames.shape == (1, 3, 3, 10, 14)
    with pytest.raises(MicroCinemaError, match=r"height must be a positive multiple of 2 pixels \(the VAE downsamples x2"):
        run(pipe, height=11)


def test_to_dtype_moves_stage_one_too():
    pipe = build(sampler="ddim").to(dtype=torch.bfloat16)
    assert {m.dtype for m in (pipe.unet, pipe.interp_unet, pipe.key_frame_unet, pipe.vae, pipe.text_encoder)} == {torch.bfloat16}
    out = run(pipe, image=None, output_type="latent")
    assert out.frames.dtype == torch.float32 and torch.isfinite(out.frames).all()  # sampling stays float32


def test_a_missing_generator_leaves_torchs_global_rng_alone(pipe):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = run(pipe, generator=None, output_type="latent").frames
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a, run(pipe, generator=None, output_type="latent").frames)  # fresh noise each call


def test_model_cpu_offload_sequence_is_wired():
    """``enable_model_cpu_offload`` needs an accelerator: here the offload sequence is checked against the
    components, and the call is made only where diffusers accepts this machine."""
    pipe = build(sampler="ddim")
    names = pipe.model_cpu_offload_seq.split("->")
    assert set(names) == {k for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}
    try:
        pipe.enable_model_cpu_offload(device="cpu")
    except (RuntimeError, ValueError, AttributeError) as error:  # diffusers refuses CPU-only offload
        pytest.skip(f"model offload not available on this machine: {str(error).splitlines()[0]}")
    assert run(pipe, output_type="latent").frames.shape == (1, 4, 3, 8, 8)


def test_class_defaults_are_the_papers():
    pipe = build()
    assert (pipe.sampler, pipe.guidance_scale, pipe.key_frame_guidance_scale) == ("edm_euler", 7.5, 7.5)
    assert (pipe.noise_prior_lambda, pipe.noise_prior_gamma) == (0.03, 0.02)
    assert pipe.refine_strength == 0.0 and pipe.interp_anchor_means is False
    assert pipe.pin_key_frame is True  # the documented departure
    assert pipe.scheduler.config.prediction_type == "epsilon" and pipe.prediction_type == "epsilon"


def test_text_encoder_without_a_tokenizer_is_a_clear_error():
    with pytest.raises(MicroCinemaError, match="needs its tokenizer"):
        pipe = MicroCinemaPipeline(VideoUNet.from_pretrained_2d(tiny_unet2d(sample_size=8), temporal_attention_head_dim=4),
                                   tiny_vae(), tiny_clip_text_model())
        pipe.encode_prompt(PROMPT)


def test_from_pretrained_explains_what_is_not_a_pipeline_folder(tmp_path):
    old = tmp_path / "old"
    (old / "video").mkdir(parents=True)
    (old / "microcinema.json").write_text("{}")
    with pytest.raises(MicroCinemaError, match="saved by an earlier microcinema"):
        MicroCinemaPipeline.from_pretrained(old)
    with pytest.raises(MicroCinemaError, match="not a MicroCinema pipeline folder"):
        MicroCinemaPipeline.from_pretrained(tmp_path)
    with pytest.raises(MicroCinemaError, match="model path not found"):
        MicroCinemaPipeline.from_pretrained(tmp_path / "nowhere" / "at-all")


def test_a_calls_decode_chunk_size_bounds_every_vae_call(pipe, monkeypatch):
    """Stage one's decoding, the refinement's decoding and re-encoding (base and in-between frames) and the
    output all use the call's ``decode_chunk_size``, not the pipeline's."""
    sizes = []
    for name in ("encode", "decode"):
        original = getattr(pipe.vae, name)
        monkeypatch.setattr(pipe.vae, name, lambda x, *a, _f=original, **kw: sizes.append(len(x)) or _f(x, *a, **kw))
    kwargs = dict(image=None, interpolate=True, refine_strength=0.5, output_type="latent")
    run(pipe, [PROMPT, "a cat"], decode_chunk_size=1, **kwargs)
    assert len(sizes) > 10 and set(sizes) == {1}
    sizes.clear()
    run(pipe, [PROMPT, "a cat"], **kwargs)  # the pipeline's 16: stage one decodes both key frames at once
    assert max(sizes) > 1
