"""The shipped tiny models work offline: the VAE reconstructs, the text-to-image model follows the prompt."""

from __future__ import annotations

import json

import numpy as np
import torch

from microcinema.eval.judge import default_object_classifier, judge_frames
from microcinema.pipelines.text_to_image import TextToImagePipeline
from microcinema.embedded import embedded_path
from microcinema.training.tasks.vae import heldout_psnr


def test_shipped_vae_reconstructs_held_out_frames_above_30_db():
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32).eval()
    assert heldout_psnr(vae, num=32) > 30.0
    record = json.loads((embedded_path("vae") / "training.json").read_text())
    assert record["command"].startswith("microcinema train vae") and record["evaluation"]["heldout_psnr_db_fp16_export"] > 30


def test_shipped_text_to_image_model_follows_colour_and_shape():
    pipe = TextToImagePipeline.embedded()
    prompts = ["a red circle moving left", "a blue square staying still", "a yellow triangle moving up"]
    images = pipe(prompts, num_inference_steps=25, generator=torch.Generator().manual_seed(0), output_type="np").images
    judged = judge_frames(np.asarray(images), default_object_classifier())
    assert [(j.colour, j.object) for j in judged] == [("red", "circle"), ("blue", "square"), ("yellow", "triangle")]


def _still_key_frame(colour: str, obj: str):
    """A ground-truth key frame of the domain: ``obj`` in ``colour``, centred, mid-size, black background."""
    from microcinema.data.synthetic import sample_clip, render_frame

    for index in range(2000):
        spec = sample_clip(index, seed=3, split="train", num_frames=9, fps=2.0)
        if (spec.colour, spec.object, spec.motion, spec.background) == (colour, obj, "still", "black"):
            return render_frame(spec, 4)
    raise AssertionError("no such clip in the first 2000")


def test_shipped_video_model_moves_a_key_frame_the_way_the_text_says_keeping_its_colour_and_object():
    """Issue 4: from one centred key frame, the shipped base model moves the object left, right, up and down as
    the prompts say (judged from the pixels), keeping its colour and shape in every base frame."""
    from PIL import Image

    from microcinema.eval.judge import judge_video
    from microcinema.systems.microcinema.pipeline import MicroCinemaPipeline

    pipe = MicroCinemaPipeline.embedded()
    key = Image.fromarray(_still_key_frame("red", "circle"))
    directions = ["left", "right", "up", "down"]
    out = pipe([f"a red circle moving {d}" for d in directions], image=[key] * 4, num_inference_steps=25,
               interpolate=False, progress=False, generator=torch.Generator().manual_seed(0))
    judged = [judge_video(video, fps=2.0, classifier=default_object_classifier()) for video in out.frames]
    assert all(j.colour_fraction("red") == 1.0 and j.object_fraction("circle") == 1.0 for j in judged)
    assert [j.motion for j in judged] == directions


def test_generate_cli_writes_33_frames_at_8_fps(tmp_path):
    from microcinema.cli import main
    from microcinema.core.video_io import probe_video

    assert main(["generate", "a blue square moving right", "--out", str(tmp_path / "v.mp4"), "--steps", "4"]) == 0
    info = probe_video(tmp_path / "v.mp4")
    assert info.num_frames == 33 and abs(info.fps - 8.0) < 1e-6


def test_embedded_pipeline_has_its_preset_and_reproduces_the_pipeline_before_diffusers():
    """Issue 15: the diffusers MicroCinemaPipeline.embedded() gives the same latents as the pipeline before it (commit
    e3d1d8c: its ``MicroCinemaPipeline.embedded()`` run on the cases below, 3 DDIM steps, generator seed 0, one torch
    thread, output_type "latent", saved to fixtures/embedded_old_pipeline.npz) in both
    modes, with and without interpolation and refinement. Without refinement the match is exact; the refinement's
    registration and re-encoding made the old pipeline itself differ from run to run by up to ~1e-5 (MKL), so
    refined cases are held to 1e-4. Issue 16 shipped new text-to-image weights: with the previous weights the two
    generate cases still gave the recorded latents exactly (max difference 0.0), and were then re-recorded with the
    new weights by the same pipeline."""
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from microcinema import MicroCinemaPipeline
    from microcinema.embedded.presets import MICROCINEMA

    pipe = MicroCinemaPipeline.embedded()
    pipe.set_progress_bar_config(disable=True)
    assert {k: pipe.config[k] for k in MICROCINEMA} == dict(MICROCINEMA)
    assert pipe.refine_strength == 0.3 and pipe.interp_anchor_means is True and pipe.sampler == "dpmpp_2m"
    assert type(pipe.key_frame_unet).__name__ == "UNet2DConditionModel" and pipe.key_frame_model is None
    # the reference was made with DDIM and one step count for every stage (the preset before issue 19)
    pipe.sampler, pipe.interp_sampler = "ddim", None
    pipe.key_frame_num_inference_steps = pipe.interp_num_inference_steps = None
    golden = np.load(Path(__file__).parent / "fixtures" / "embedded_old_pipeline.npz")
    key = np.full((64, 64, 3), 30, np.uint8)
    key[22:42, 22:42] = (40, 200, 60)
    cases = {"generate_full": ("a red circle moving left", False, dict(num_frames=3)),
             "animate_full": ("a green star growing", True, dict(num_frames=3)),
             "animate_plain": ("a blue square moving up", True, dict(num_frames=5, interpolate=False, refine_strength=0)),
             "generate_base_refined": ("a yellow 7 moving right", False, dict(num_frames=3, interpolate=False))}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the reference was made: MKL may change its split of sums under load otherwise
    try:
        for name, (prompt, with_image, kw) in cases.items():
            out = pipe(prompt, image=Image.fromarray(key) if with_image else None, num_inference_steps=3,
                       generator=torch.Generator().manual_seed(0), output_type="latent", **kw).frames
            error = float(np.abs(out.numpy() - golden[name]).max())
            assert error <= (1e-6 if kw.get("refine_strength") == 0 else 1e-4), (name, error)
    finally:
        torch.set_num_threads(threads)


def test_shipped_artv_model_turns_with_each_prompt_keeping_colour_and_object():
    """Issue 17: from a ground-truth first frame, the shipped ART-V model (its default settings) moves the object
    as each of two prompts says, turning at the prompt change, and keeps its colour and object in every frame
    (judged from the pixels)."""
    from microcinema.eval.drift import domain_drift
    from microcinema.eval.longvideo import artv_video_fn, sample_sequence
    from microcinema.systems.artv.pipeline import ARTVPipeline

    pipe = ARTVPipeline.embedded()
    pipe.set_progress_bar_config(disable=True)
    make_video = artv_video_fn(pipe)
    shapes = [i for i in range(40) if not sample_sequence(i, seed=7, num_segments=1)[0].object.startswith("digit")]
    for index, motions in zip(shapes, (("left", "up"), ("down", "right"))):  # digits: the benchmark's rates
        segments = sample_sequence(index, seed=7, motions=motions, frames_per_segment=12, num_segments=2)
        summary = domain_drift(make_video(segments, 0), segments)
        judged = [s["motion"] for s in summary["segments"]]
        assert judged == list(motions), (segments[0].caption, judged)
        assert summary["summary"]["colour_kept_every_frame"] and summary["summary"]["object_kept_every_frame"]
