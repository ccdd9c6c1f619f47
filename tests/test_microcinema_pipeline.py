"""MicroCinemaPipeline on tiny random models: stages, interpolation, the user's image, save/load, bad input.

The fixture pipeline uses DDIM and the embedded family's tricks (palette anchoring, refinement 0.3), as the
pipeline's defaults were before they became the paper's (tests of the defaults are in test_video_pipeline_base.py).
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from microcinema.core.errors import MicroCinemaError
from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline
from microcinema.testing import tiny_unet2d, tiny_vae
from microcinema.models.unet3d import VideoUNet


class FixedKeyFrames:
    """A stage-one stand-in: a deterministic key frame per prompt."""

    def __call__(self, prompts, *, num_inference_steps, guidance_scale, generator, size):
        h, w = (size, size) if isinstance(size, int) else size
        return torch.stack([torch.full((3, h, w), 0.1 * (i + 1)) for i in range(len(prompts))])


TRICKS = dict(sampler="ddim", interp_anchor_means=True, refine_strength=0.3)


def video_unet(seed: int) -> VideoUNet:
    torch.manual_seed(seed)
    model = VideoUNet.from_pretrained_2d(tiny_unet2d(cross_attention_dim=384, sample_size=8, seed=seed),
                                         temporal_attention_head_dim=4)
    with torch.no_grad():  # leave the identity: make temporal layers and injections do something
        for name, p in model.named_parameters():
            if not name.startswith("unet."):
                p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def pipeline(minilm_encoder):
    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_unet=video_unet(1),
                               key_frame_model=FixedKeyFrames(), guidance_scale=3.0, **TRICKS)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_base_then_interpolation_gives_33_frames_keeping_base_frames(pipeline):
    run = lambda **kw: pipeline("a red circle moving left", num_inference_steps=2, progress=False,  # noqa: E731
                                generator=torch.Generator().manual_seed(0), **kw)
    base = run(interpolate=False, output_type="latent")
    assert base.frames.shape == (1, 4, 9, 8, 8) and base.fps == 2.0
    full = run(output_type="latent")
    assert full.frames.shape == (1, 4, 33, 8, 8) and full.fps == 8.0
    assert torch.allclose(full.frames[:, :, ::4], base.frames)  # base frames stay, 3 new ones between each pair
    video = run(output_type="np")
    assert video.frames.shape == (1, 33, 16, 16, 3) and video.frames.dtype == np.float32
    again = run(output_type="np")
    assert np.array_equal(video.frames, again.frames)


def test_text_and_noise_prior_change_the_video(pipeline):
    run = lambda prompt, **kw: pipeline(prompt, num_inference_steps=2, progress=False, interpolate=False,  # noqa: E731
                                        generator=torch.Generator().manual_seed(0), output_type="latent", **kw).frames
    left, right = run("a red circle moving left"), run("a red circle moving right")
    assert not torch.allclose(left, right)
    assert not torch.allclose(run("a red circle moving left", noise_prior_lambda=0.0, noise_prior_gamma=0.0), left)


def test_user_image_replaces_stage_one(pipeline, tmp_path):
    path = tmp_path / "key.png"
    Image.fromarray(np.full((30, 40, 4), 200, dtype=np.uint8), "RGBA").save(path)
    out = pipeline("a red circle", image=path, num_inference_steps=1, interpolate=False, progress=False)
    assert out.key_frames.shape == (1, 3, 16, 16)
    assert any("RGBA" in n for n in out.notes) and any("centre-cropped" in n for n in out.notes)


def test_save_and_load_through_diffusers(pipeline, tmp_path):
    from diffusers import DiffusionPipeline

    pipeline.save_pretrained(tmp_path / "mc")
    index = json.loads((tmp_path / "mc" / "model_index.json").read_text())
    assert index["_class_name"] == "MicroCinemaPipeline" and index["unet"][1] == "VideoUNet"
    assert index["refine_strength"] == 0.3 and index["sampler"] == "ddim" and index["key_frame_unet"] == [None, None]
    loaded = DiffusionPipeline.from_pretrained(tmp_path / "mc", key_frame_model=FixedKeyFrames())
    assert type(loaded) is MicroCinemaPipeline
    assert {k: loaded.config[k] for k in TRICKS} == TRICKS and loaded.guidance_scale == 3.0
    assert loaded.refine_strength == 0.3 and loaded.interp_unet is not None
    kwargs = dict(num_inference_steps=2, progress=False, output_type="latent")
    a = pipeline("a star", generator=torch.Generator().manual_seed(4), **kwargs).frames
    b = loaded("a star", generator=torch.Generator().manual_seed(4), **kwargs).frames
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_frames": 8}, "num_frames must be an odd number from 3 to 17"),
    ({"num_frames": 41}, "num_frames must be an odd number"),
    ({"guidance_scale": -1.0}, "guidance_scale must be >= 0"),
    ({"num_inference_steps": 0}, "num_inference_steps must be an integer >= 1"),
    ({"output_type": "gif"}, "unknown output_type"),
    ({"height": 17}, r"height must be a positive multiple of 2 pixels \(the VAE downsamples x2\), got 17"),
    ({"width": 0}, "width must be a positive multiple of 2"),
    ({"num_videos_per_prompt": 0}, "num_videos_per_prompt must be an integer >= 1"),
    ({"decode_chunk_size": 0}, "decode_chunk_size must be an integer >= 1"),
    ({"negative_prompt": ["a", "b"]}, "negative_prompt must be a string or a list of 1 strings"),
    ({"latents": torch.zeros(1, 4, 9, 4, 4)}, r"latents must have shape \(1, 4, 9, 8, 8\)"),
    ({"callback_on_step_end_tensor_inputs": ["prompt_embeds"]}, "callback_on_step_end_tensor_inputs"),
    ({"generator": [torch.Generator()]}, "generator must be one torch.Generator"),
    ({"refine_strength": 1.5}, r"refine_strength must be in \[0, 1\]"),
    ({"refine_strength": -0.1}, r"refine_strength must be in \[0, 1\]"),
    ({"interp_num_inference_steps": 0}, "interp_num_inference_steps must be an integer >= 1, got 0"),
    ({"key_frame_num_inference_steps": 2.5}, "key_frame_num_inference_steps must be an integer >= 1, got 2.5"),
])
def test_bad_arguments(pipeline, kwargs, match):
    with pytest.raises(MicroCinemaError, match=match):
        pipeline("a red circle", progress=False, **kwargs)


def test_each_stage_runs_its_own_steps_and_sampler(minilm_encoder, tmp_path):
    """Issue 19: stage one, the base model and the interpolation take their own step counts (settings saved in
    model_index.json, per-call overrides); the interpolation its own sampler; the base model the call's steps."""
    seen = {}

    class CountingKeyFrames(FixedKeyFrames):
        def __call__(self, prompts, *, num_inference_steps, **kw):
            seen["key_frame"] = num_inference_steps
            return super().__call__(prompts, num_inference_steps=num_inference_steps, **kw)

    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_unet=video_unet(1),
                               key_frame_model=CountingKeyFrames(), sampler="ddim", interp_sampler="dpmpp_2m",
                               num_inference_steps=4, key_frame_num_inference_steps=6, interp_num_inference_steps=3)
    pipe.set_progress_bar_config(disable=True)
    passes = {}

    def count(p, i, t, tensors):
        passes[p.stage] = passes.get(p.stage, 0) + 1
        return {}

    def run(target, **kw):
        seen.clear(), passes.clear()
        frames = target("a red circle", generator=torch.Generator().manual_seed(0), output_type="latent",
                        callback_on_step_end=count, **kw).frames
        return {**passes, **seen}, frames

    assert run(pipe)[0] == {"key_frame": 6, "base": 4, "interpolation": 3}
    assert run(pipe, num_inference_steps=2, interp_num_inference_steps=5, key_frame_num_inference_steps=1)[0] == \
        {"key_frame": 1, "base": 2, "interpolation": 5}
    _, dpm = run(pipe)
    pipe.interp_sampler = None  # the base model's sampler (DDIM): another interpolation
    _, ddim = run(pipe)
    assert torch.equal(dpm[:, :, ::4], ddim[:, :, ::4]) and not torch.allclose(dpm, ddim)
    pipe.interp_sampler = "dpmpp_2m"
    pipe.save_pretrained(tmp_path / "mc")
    index = json.loads((tmp_path / "mc" / "model_index.json").read_text())
    assert (index["num_inference_steps"], index["key_frame_num_inference_steps"], index["interp_num_inference_steps"],
            index["interp_sampler"]) == (4, 6, 3, "dpmpp_2m")
    loaded = MicroCinemaPipeline.from_pretrained(tmp_path / "mc", key_frame_model=CountingKeyFrames())
    loaded.set_progress_bar_config(disable=True)
    counts, frames = run(loaded)
    assert counts == {"key_frame": 6, "base": 4, "interpolation": 3} and torch.allclose(frames, dpm, rtol=1e-4, atol=1e-4)
    with pytest.raises(MicroCinemaError, match="unknown interp_sampler 'fast': allowed are ddim"):
        MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_sampler="fast")
    with pytest.raises(MicroCinemaError, match="interp_num_inference_steps must be an integer >= 1, got 0"):
        MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, interp_num_inference_steps=0)


def test_bad_images_and_prompts(pipeline, tmp_path):
    with pytest.raises(MicroCinemaError, match="empty prompt"):
        pipeline("", progress=False)
    bad = tmp_path / "bad.png"
    bad.write_text("no image here")
    with pytest.raises(MicroCinemaError, match="cannot read image"):
        pipeline("a red circle", image=bad, progress=False)
    with pytest.raises(MicroCinemaError, match="one per prompt"):
        pipeline(["a", "b"], image=[bad], progress=False)


def test_cli_generate_and_animate_with_a_pipeline_folder(pipeline, minilm_encoder, tmp_path, capsys, monkeypatch):
    from microcinema.cli import main
    from microcinema.pipelines.text_to_image import TextToImagePipeline
    from microcinema.core.video_io import probe_video

    folder = pipeline.save_pretrained(tmp_path / "mc")
    TextToImagePipeline(tiny_unet2d(cross_attention_dim=384, sample_size=8), tiny_vae(), minilm_encoder).save_pretrained(folder / "t2i")
    out = tmp_path / "video.mp4"
    assert main(["generate", "a red circle moving left", "--out", str(out), "--model", str(folder), "--steps", "2",
                 "--grid", str(tmp_path / "grid.png"), "--save-key-frame", str(tmp_path / "key.png")]) == 0
    info = probe_video(out)
    assert info.num_frames == 33 and abs(info.fps - 8.0) < 1e-6
    assert (tmp_path / "grid.png").exists() and (tmp_path / "key.png").exists()
    Image.fromarray(np.full((20, 20), 128, dtype=np.uint8), "L").save(tmp_path / "grey.png")
    gif = tmp_path / "video.gif"
    assert main(["animate", str(tmp_path / "grey.png"), "a red circle", "--out", str(gif), "--model", str(folder),
                 "--steps", "1", "--no-interpolate", "--no-pin-key-frame"]) == 0
    assert probe_video(gif).num_frames == 9
    assert "converted L to RGB" in capsys.readouterr().err
    calls, original = [], MicroCinemaPipeline.interpolate
    monkeypatch.setattr(MicroCinemaPipeline, "interpolate",
                        lambda self, *a, **kw: calls.append(kw["anchor_means"]) or original(self, *a, **kw))
    refined, original_refine = [], MicroCinemaPipeline.refine_base
    monkeypatch.setattr(MicroCinemaPipeline, "refine_base",
                        lambda self, *a, **kw: refined.append(kw["strength"]) or original_refine(self, *a, **kw))
    for flags in ([], ["--no-anchor-palette"], ["--refine-strength", "0"], ["--refine-strength", "1"]):
        assert main(["animate", str(tmp_path / "grey.png"), "a red circle", "--out", str(tmp_path / "a.mp4"),
                     "--model", str(folder), "--steps", "1", *flags]) == 0
    assert calls == [None, False, None, None]  # None: the pipeline's setting (on)
    assert refined == [0.3, 0.3, 1.0]  # the pipeline's 0.3 twice, none for 0, then 1
    steps = []
    monkeypatch.setattr(MicroCinemaPipeline, "interpolate",
                        lambda self, *a, **kw: steps.append(kw["steps"]) or original(self, *a, **kw))
    assert main(["animate", str(tmp_path / "grey.png"), "a red circle", "--out", str(tmp_path / "a.mp4"),
                 "--model", str(folder), "--steps", "1", "--interp-steps", "3"]) == 0
    assert main(["animate", str(tmp_path / "grey.png"), "a red circle", "--out", str(tmp_path / "a.mp4"),
                 "--model", str(folder), "--steps", "2"]) == 0
    assert steps == [3, 2]  # its own, then the base model's (this pipeline saves no interpolation steps)
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["animate", str(tmp_path / "grey.png"), "a red circle", "--out", str(tmp_path / "a.mp4"),
              "--model", str(folder), "--refine-strength", "2"])
    assert "--refine-strength must be a number from 0 to 1, got 2" in capsys.readouterr().err
    assert main(["generate", "a red circle", "--out", str(tmp_path / "v.avi"), "--model", str(folder)]) == 2
    assert main(["generate", "a red circle", "--out", str(out), "--model", str(folder), "--frames", "10"]) == 2
    assert "num_frames must be an odd number" in capsys.readouterr().err


def test_output_reports_seconds_per_stage(pipeline):
    out = pipeline("a red circle moving left", num_inference_steps=1, progress=False,
                   generator=torch.Generator().manual_seed(0))
    assert list(out.timings) == ["key_frame", "base", "refine", "interpolation", "decode"]
    assert all(seconds > 0 for seconds in out.timings.values())
    latent = pipeline("a red circle", num_inference_steps=1, progress=False, interpolate=False, output_type="latent",
                      refine_strength=0)
    assert list(latent.timings) == ["key_frame", "base"]


def test_stage_two_evaluation_judges_every_video(pipeline, tmp_path):
    from microcinema.eval.stage_one import domain_prompts
    from microcinema.eval.stage_two import evaluate_mode, psnr, write_report

    specs = domain_prompts(4, seed=5)  # 3 training combinations, 1 held out
    metrics, base, rows = evaluate_mode(pipeline, specs, "animate", steps=1, batch_size=3, seed=0, interpolate=True)
    assert base.shape == (4, 9, 16, 16, 3) and len(rows) == 4 and metrics["frames"] == 33
    assert metrics["against_prompt"]["all"]["n"] == 4 and metrics["against_prompt"]["heldout_combos"]["n"] == 1
    for key in ("motion", "colour_every_frame", "object_every_frame"):
        assert 0.0 <= metrics["against_prompt"]["all"][key] <= 1.0
    assert all(np.isfinite(r["centre_psnr"]) for r in rows)
    write_report(tmp_path, {"command": "--out x", "modes": {"animate": metrics}})
    assert "| all | 4 |" in (tmp_path / "report.md").read_text()
    image = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    assert psnr(image, image) == float("inf") and psnr(image, 255 - image) < 10


def test_bfloat16_pipeline_runs_and_interpolation_keeps_its_own_prior(minilm_encoder):
    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), copy.deepcopy(minilm_encoder), interp_unet=video_unet(1),
                               key_frame_model=FixedKeyFrames(), **TRICKS).to(dtype=torch.bfloat16)
    assert pipe.video_unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    assert pipe.text_encoder.dtype == torch.bfloat16  # diffusers' .to moves every component
    out = pipe("a red circle moving left", num_frames=3, num_inference_steps=1, progress=False,
               generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.frames.shape == (1, 9, 16, 16, 3)
    calls = []
    original = pipe.interpolate
    pipe.interpolate = lambda latents, **kw: calls.append(kw) or original(latents, **kw)
    pipe("a red circle", num_frames=3, num_inference_steps=1, progress=False, noise_prior_lambda=0.0,
         noise_prior_gamma=0.0, output_type="latent")
    assert calls[0]["lam"] == pipe.interp_noise_prior_lambda == 0.03 and calls[0]["gamma"] == 0.02


def test_missing_interpolation_model_is_reported_before_any_work(minilm_encoder):
    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, key_frame_model=FixedKeyFrames())
    assert pipe.interp_unet is None
    with pytest.raises(MicroCinemaError, match="--no-interpolate"):
        pipe("a red circle", num_inference_steps=1, progress=False)


def test_image_condition_is_kept_in_the_unconditional_branch(pipeline):
    """guidance_scale=0 runs only the unconditional branch (the empty prompt): the key frame must still reach
    AppearNet there. Without the noise prior the key frame enters only through AppearNet, so two key frames
    giving two videos means the unconditional branch kept the image condition."""
    red, blue = (Image.fromarray(np.full((16, 16, 3), c, dtype=np.uint8), "RGB")
                 for c in ((220, 30, 30), (30, 30, 220)))

    def run(prompt, image):
        return pipeline(prompt, image=image, guidance_scale=0.0, noise_prior_lambda=0.0, noise_prior_gamma=0.0,
                        num_inference_steps=2, interpolate=False, output_type="latent", progress=False,
                        generator=torch.Generator().manual_seed(0)).frames

    with_red = run("a red circle moving left", red)
    assert (with_red - run("a red circle moving left", blue)).abs().max() > 1e-4
    # ... and at scale 0 the prompt itself does not matter (only the empty prompt is used)
    assert torch.equal(with_red, run("a blue star moving up", red))


def test_missing_image_file_is_a_clear_error(pipeline):
    with pytest.raises(MicroCinemaError, match="image not found: does/not/exist.png"):
        pipeline("a red circle", image="does/not/exist.png", progress=False)


def test_pin_key_frame_keeps_the_key_frame_as_the_centre_frame(pipeline):
    run = lambda **kw: pipeline("a red circle moving left", num_inference_steps=4, progress=False,  # noqa: E731
                                interpolate=False, generator=torch.Generator().manual_seed(0), output_type="latent",
                                **kw)
    z_key = pipeline.encode_images(FixedKeyFrames()(["x"], num_inference_steps=1, guidance_scale=None,
                                                    generator=None, size=pipeline.image_size))[0]
    pinned, free = run().frames[0], run(pin_key_frame=False).frames[0]  # pinned by default
    centre_error = lambda latents: (latents[:, 4] - z_key).abs().max().item()  # noqa: E731
    assert centre_error(pinned) < 0.15  # DDIM ends at t = 0 (sigma ~ 0.03): the key latent up to that noise
    assert centre_error(free) > 3 * centre_error(pinned)
    assert not torch.allclose(pinned[:, 0], free[:, 0])  # the other frames are generated next to it


def test_interp_anchor_means_keeps_in_between_frames_at_their_conditions_palette(pipeline, tmp_path):
    from microcinema.systems.microcinema.interpolation import interpolation_condition

    run = lambda **kw: pipeline("a red circle moving left", num_inference_steps=4, progress=False,  # noqa: E731
                                generator=torch.Generator().manual_seed(0), output_type="latent", **kw).frames
    assert pipeline.interp_anchor_means is True  # on in this fixture (the embedded preset's setting)
    anchored, free = run(), run(interp_anchor_means=False)
    pipeline.interp_anchor_means = False
    try:
        torch.testing.assert_close(run(), free)  # the pipeline's setting is the call's default
        pipeline.save_pretrained(tmp_path / "pipe")
        assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["interp_anchor_means"] is False
    finally:
        pipeline.interp_anchor_means = True
    base = anchored[:, :, ::4]
    torch.testing.assert_close(base, free[:, :, ::4])  # the base frames are not touched
    palette = lambda z: z.mean(dim=(-2, -1))  # noqa: E731
    want = palette(interpolation_condition(base[:, :, 0], base[:, :, 1], 5))[:, :, 1:-1]
    error = lambda z: (palette(z[:, :, 1:4]) - want).abs().max().item()  # noqa: E731
    assert error(anchored) < 0.1 < error(free)


def test_key_frame_refinement_is_a_second_pass_over_the_base_frames(pipeline, tmp_path):
    run = lambda **kw: pipeline("a red circle moving left", num_inference_steps=5, progress=False,  # noqa: E731
                                interpolate=False, generator=torch.Generator().manual_seed(0), output_type="latent",
                                **kw).frames[0]
    assert pipeline.refine_strength == 0.3  # on in this fixture (the embedded preset's setting)
    refined, first_pass = run(), run(refine_strength=0)
    z_key = pipeline.encode_images(FixedKeyFrames()(["x"], num_inference_steps=1, guidance_scale=None,
                                                    generator=None, size=pipeline.image_size))[0]
    assert (refined[:, 4] - z_key).abs().max() < 0.15  # the key frame stays pinned
    assert not torch.allclose(refined[:, 0], first_pass[:, 0])  # the other frames are re-denoised
    z = pipeline.encode_images(FixedKeyFrames()(["x"], num_inference_steps=1, guidance_scale=None, generator=None,
                                                size=pipeline.image_size))
    cond, uncond = pipeline.encode_prompt(["a red circle moving left"])
    again = pipeline.refine_base(cond, uncond, z, first_pass[None], strength=0.4, steps=5, scale=3.0,
                                 generator=torch.Generator().manual_seed(1), lam=pipeline.noise_prior_lambda,
                                 pin_key_frame=True)
    assert again.shape == first_pass[None].shape
    interp = lambda **kw: pipeline.interpolate(first_pass[None], steps=5, generator=torch.Generator().manual_seed(2),  # noqa: E731
                                               lam=0.03, gamma=0.02, **kw)
    plain, both = interp(), interp(refine_strength=0.3)
    assert both.shape == plain.shape == (1, 4, 33, 8, 8)
    torch.testing.assert_close(both[:, :, ::4], first_pass[None])  # base frames kept
    assert not torch.allclose(both[:, :, 1:4], plain[:, :, 1:4])  # in-between frames re-denoised
    pipeline.refine_strength = 0.25
    try:
        pipeline.save_pretrained(tmp_path / "pipe")
        assert json.loads((tmp_path / "pipe" / "model_index.json").read_text())["refine_strength"] == 0.25
        assert MicroCinemaPipeline.from_pretrained(tmp_path / "pipe").refine_strength == 0.25
    finally:
        pipeline.refine_strength = 0.3
    with pytest.raises(MicroCinemaError, match=r"refine_strength must be in \[0, 1\]"):
        MicroCinemaPipeline(video_unet(0), tiny_vae(), pipeline.text_encoder, pipeline.tokenizer, refine_strength=2.0)


def test_refinement_warps_every_frame_it_is_told_to_and_slices_the_clips_in_order(pipeline, monkeypatch):
    """The random tiny models' frames do not match their key frame (score < 0.5, nothing warped), so force every
    warp (min_score -1) and check what reaches the sampler: base frames around key index 4, in-between frames
    around index 16, and each interpolation clip restarting from frames 4k .. 4k + 4 of the joined video."""
    import microcinema.pipelines.base as base
    import microcinema.systems.microcinema.pipeline as mc
    from einops import rearrange

    seen, inits = [], []
    real_refine_init, real_sample = mc.refine_init, base.sample

    def spy_refine_init(latents, decode, encode, key_index, min_score, **kw):
        init, warped = real_refine_init(latents, decode, encode, key_index, -1.0, **kw)
        seen.append(dict(key_index=key_index, init=init, warped=warped, **kw))
        return init, warped

    monkeypatch.setattr(mc, "refine_init", spy_refine_init)
    monkeypatch.setattr(base, "sample", lambda *a, **kw: inits.append(kw.get("init")) or real_sample(*a, **kw))
    pipeline(["a red circle moving left", "a star"], num_inference_steps=4, progress=False, output_type="latent",
             generator=torch.Generator().manual_seed(0))
    base, between = seen
    assert base["key_index"] == 4 and base["key_pixels"] is None  # pinned: the centre frame is the key frame
    assert base["warped"].tolist() == [[i != 4 for i in range(9)]] * 2
    assert between["key_index"] == 16 and between["frames"] == [i for i in range(33) if i % 4]
    assert between["warped"][:, between["frames"]].all()
    assert inits[0] is None and inits[1] is base["init"] and inits[2] is None  # first passes start from noise
    clips = torch.stack([between["init"][:, :, s:s + 5] for s in range(0, 32, 4)], dim=1)
    torch.testing.assert_close(inits[3], rearrange(clips, "b f c m h w -> (b f) c m h w"))
    pipeline("a red circle", num_inference_steps=4, progress=False, interpolate=False, pin_key_frame=False)
    assert seen[-1]["key_pixels"].shape == (1, 3, 16, 16)  # unpinned: the key frame itself is warped


def test_no_stage_one_is_an_error_unless_the_embedded_one_is_asked_for(minilm_encoder, tmp_path):
    from microcinema.cli import main
    from microcinema.pipelines.key_frame import OwnKeyFrameModel

    pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder)  # no key_frame_unet, no key_frame_model
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(MicroCinemaError, match="this pipeline has no stage one: pass image=, or build it with "
                                               "key_frame_unet= / key_frame_model="):
        pipe("a red circle", num_frames=3, num_inference_steps=1, interpolate=False)
    image = Image.fromarray(np.full((16, 16, 3), 200, dtype=np.uint8))
    out = pipe("a red circle", image=image, num_frames=3, num_inference_steps=1, interpolate=False,
               output_type="latent")
    assert out.frames.shape == (1, 4, 3, 8, 8)
    explicit = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, key_frame_model="embedded")
    assert isinstance(explicit.key_frame_model, OwnKeyFrameModel)
    folder = pipe.save_pretrained(tmp_path / "no_stage_one")  # the CLI: generate needs a stage one, animate not
    assert main(["generate", "a red circle", "--out", str(tmp_path / "v.gif"), "--model", str(folder), "--steps", "1",
                 "--frames", "3", "--no-interpolate"]) == 2
    image.save(tmp_path / "key.png")
    assert main(["animate", str(tmp_path / "key.png"), "a red circle", "--out", str(tmp_path / "a.gif"), "--model",
                 str(folder), "--steps", "1", "--frames", "3", "--no-interpolate"]) == 0


def test_an_external_stage_one_gets_the_negative_prompts_when_it_takes_them(minilm_encoder, tiny_sd_path):
    from microcinema.pipelines.key_frame import DiffusersKeyFrameModel

    seen = []

    class WithNegatives(FixedKeyFrames):
        def __call__(self, prompts, *, negative_prompt, **kw):
            seen.append(negative_prompt)
            return super().__call__(prompts, **kw)

    for model in (WithNegatives(), FixedKeyFrames()):  # one taking negative_prompt, one not (still works)
        pipe = MicroCinemaPipeline(video_unet(0), tiny_vae(), minilm_encoder, key_frame_model=model)
        pipe.set_progress_bar_config(disable=True)
        pipe(["a", "b"], negative_prompt="grey", num_videos_per_prompt=2, num_frames=3, num_inference_steps=1,
             interpolate=False, output_type="latent")
    assert seen == [["grey"] * 4]
    sd = DiffusersKeyFrameModel.from_pretrained(str(tiny_sd_path))
    kw = dict(num_inference_steps=2, guidance_scale=5.0, size=16)
    plain = sd(["a cat"], generator=torch.Generator().manual_seed(0), **kw)
    empty = sd(["a cat"], generator=torch.Generator().manual_seed(0), negative_prompt=[""], **kw)
    negative = sd(["a cat"], generator=torch.Generator().manual_seed(0), negative_prompt=["blurry"], **kw)
    assert torch.equal(plain, empty) and (negative - plain).abs().max() > 1e-3
