"""The shipped tiny models work offline: the VAE reconstructs, the text-to-image model follows the prompt."""

from __future__ import annotations

import json

import numpy as np
import torch

from microcinema.eval.judge import default_object_classifier, judge_frames
from microcinema.pipelines.text_to_image import TextToImagePipeline
from microcinema.tasks.common import embedded_path
from microcinema.tasks.vae import heldout_psnr


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
