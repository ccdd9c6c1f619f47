"""At Stable Diffusion 2.1 scale the MicroCinema pipeline is exactly SD frame by frame when its additions are off.

A tiny random SD-2.1-layout pipeline (CLIP text encoder, linear-projection U-Net, AutoencoderKL) is inflated to video
(fresh temporal layers and AppearNet, all zero-initialised, DESIGN.md section 3). With the Appearance Noise Prior
off (lambda = gamma = 0), the key frame not pinned, no refinement, SD's scheduler loop (``sampler="scheduler"``) and
SD's initial latent in every frame, every generated frame must equal ``StableDiffusionPipeline``'s image for the
same prompt, negative prompt, seed, scheduler and steps, at a non-square size, for v-prediction (SD 2.1 768) and
epsilon prediction (SD 2.1 base).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from microcinema import MicroCinemaError, MicroCinemaPipeline, VideoUNet
from microcinema.testing import tiny_sd_pipeline, tiny_vae

HEIGHT, WIDTH, FRAMES, STEPS, SCALE = 32, 48, 3, 3, 6.0
PROMPT, NEGATIVE = "a red circle moving left", "blurry, grey"
#: SD 2.1's scheduler config (its scheduler_config.json), v-prediction as the 768 model; epsilon for 2.1 base.
SD21_DDIM = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 steps_offset=1, set_alpha_to_one=False, clip_sample=False)


@pytest.fixture(scope="module", params=["v_prediction", "epsilon"])
def pipes(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(f"sd21_{request.param}") / "sd"
    sd = tiny_sd_pipeline(sd21_layout=True)
    sd.scheduler = DDIMScheduler(**SD21_DDIM, prediction_type=request.param)
    sd.save_pretrained(folder)
    sd = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    torch.manual_seed(0)
    video = VideoUNet.from_pretrained_2d(folder, temporal_attention_head_dim=4)  # fresh temporal layers, AppearNet
    mc = MicroCinemaPipeline(video, sd.vae, sd.text_encoder, sd.tokenizer, scheduler=sd.scheduler, sampler="scheduler",
                             noise_prior_lambda=0.0, noise_prior_gamma=0.0, pin_key_frame=False, refine_strength=0.0)
    mc.set_progress_bar_config(disable=True)
    return sd, mc


def test_every_frame_equals_stable_diffusions_image_at_a_non_square_size(pipes):
    sd, mc = pipes
    assert mc.prediction_type == sd.scheduler.config.prediction_type
    shape = (1, 4, HEIGHT // mc.vae_scale_factor, WIDTH // mc.vae_scale_factor)
    start = randn_tensor(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    want = sd(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
              guidance_scale=SCALE, latents=start, output_type="pt").images  # (1, 3, H, W) in [0, 1]
    key = Image.fromarray(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))  # any key frame
    got = mc(PROMPT, image=key, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES,
             num_inference_steps=STEPS, guidance_scale=SCALE, latents=start.unsqueeze(2).repeat(1, 1, FRAMES, 1, 1),
             interpolate=False, output_type="pt").frames  # (1, F, 3, H, W) in [0, 1]
    assert got.shape == (1, FRAMES, 3, HEIGHT, WIDTH) and want.shape == (1, 3, HEIGHT, WIDTH)
    errors = [(got[0, f] - want[0]).abs().max().item() for f in range(FRAMES)]
    print(f"{mc.prediction_type}: max abs difference per frame {errors}")
    assert max(errors) <= 1e-4
    # the same run with another negative prompt differs: the comparison is not vacuous
    other = mc(PROMPT, image=key, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
               guidance_scale=SCALE, latents=start.unsqueeze(2).repeat(1, 1, FRAMES, 1, 1), interpolate=False,
               output_type="pt").frames
    assert (other - got).abs().max() > 1e-3


def test_clip_prompts_are_encoded_as_stable_diffusion_encodes_them(pipes):
    sd, mc = pipes
    cond, uncond = mc.encode_prompt([PROMPT, "a cat"], "cpu", 2, True, NEGATIVE)
    want, want_negative = sd.encode_prompt([PROMPT, "a cat"], "cpu", 2, True, [NEGATIVE, NEGATIVE])
    assert cond["encoder_attention_mask"] is None and uncond["encoder_attention_mask"] is None  # SD uses no mask
    torch.testing.assert_close(cond["encoder_hidden_states"], want, atol=0, rtol=0)
    torch.testing.assert_close(uncond["encoder_hidden_states"], want_negative, atol=0, rtol=0)


def test_stage_one_key_frame_unet_is_stable_diffusion(pipes):
    """With SD's U-Net as stage one (``key_frame_unet``) and the scheduler loop, the key frame is SD's image."""
    sd, mc = pipes
    stage_one = MicroCinemaPipeline(mc.unet, mc.vae, mc.text_encoder, mc.tokenizer, scheduler=mc.scheduler,
                                    key_frame_unet=sd.unet, key_frame_sampler="scheduler", key_frame_guidance_scale=SCALE,
                                    sampler="scheduler")
    stage_one.set_progress_bar_config(disable=True)
    keys = stage_one.generate_key_frames([PROMPT], [NEGATIVE], steps=STEPS, generator=torch.Generator().manual_seed(0),
                                         height=HEIGHT, width=WIDTH)
    want = sd(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
              guidance_scale=SCALE, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert (keys / 2 + 0.5 - want).abs().max() <= 1e-4


def test_from_stable_diffusion_inflates_the_checkpoint_and_is_sd_frame_by_frame(tmp_path):
    """The README's path: ``MicroCinemaPipeline.from_stable_diffusion(folder)`` (a fresh inflation of SD's U-Net,
    SD's U-Net as stage one) is SD frame by frame with the paper's additions off."""
    sd = tiny_sd_pipeline(sd21_layout=True)
    sd.scheduler = DDIMScheduler(**SD21_DDIM, prediction_type="v_prediction")
    sd.save_pretrained(tmp_path / "sd")
    sd = StableDiffusionPipeline.from_pretrained(tmp_path / "sd", safety_checker=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    mc = MicroCinemaPipeline.from_stable_diffusion(tmp_path / "sd", sampler="scheduler", noise_prior_lambda=0.0,
                                                   noise_prior_gamma=0.0, pin_key_frame=False)
    mc.set_progress_bar_config(disable=True)
    assert mc.key_frame_unet is not mc.unet.unet and mc.prediction_type == "v_prediction"
    start = randn_tensor((1, 4, HEIGHT // mc.vae_scale_factor, WIDTH // mc.vae_scale_factor),
                         generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    want = sd(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_inference_steps=STEPS,
              guidance_scale=SCALE, latents=start, output_type="pt").images
    got = mc(PROMPT, negative_prompt=NEGATIVE, height=HEIGHT, width=WIDTH, num_frames=FRAMES, num_inference_steps=STEPS,
             guidance_scale=SCALE, latents=start.unsqueeze(2).repeat(1, 1, FRAMES, 1, 1), interpolate=False,
             output_type="pt", generator=torch.Generator().manual_seed(0)).frames
    assert (got[0] - want).abs().max().item() <= 1e-4
    with pytest.raises(MicroCinemaError, match="cannot load a Stable Diffusion pipeline"):
        MicroCinemaPipeline.from_stable_diffusion(tmp_path / "missing")


def test_uneven_latent_sizes_are_sd_frame_by_frame_and_run_every_part():
    """Height and width need only be multiples of the VAE's factor: with SD's x8 VAE, 40x56 pixels is a (5, 7)
    latent, which the U-Net's downsampling does not divide. Stage one (SD's U-Net), the video U-Net (inflated,
    AppearNet injections running) and SD's own pipeline all handle it: the key frame and every frame equal SD's
    image; with temporal layers and AppearNet changed from zero, base, refinement and interpolation still run."""
    components = {**tiny_sd_pipeline(sd21_layout=True).components, "vae": tiny_vae(block_out_channels=(8, 8, 8, 8)),
                  "scheduler": DDIMScheduler(**SD21_DDIM, prediction_type="v_prediction")}  # SD's x8 VAE
    sd = StableDiffusionPipeline(**components)
    sd.set_progress_bar_config(disable=True)
    height, width = 40, 56
    torch.manual_seed(0)
    video = VideoUNet.from_pretrained_2d(sd.unet, temporal_attention_head_dim=4)
    mc = MicroCinemaPipeline(video, sd.vae, sd.text_encoder, sd.tokenizer, scheduler=sd.scheduler, sampler="scheduler",
                             key_frame_unet=sd.unet, key_frame_sampler="scheduler", key_frame_guidance_scale=SCALE,
                             noise_prior_lambda=0.0, noise_prior_gamma=0.0, pin_key_frame=False, refine_strength=0.0)
    mc.set_progress_bar_config(disable=True)
    assert mc.vae_scale_factor == sd.vae_scale_factor == 8 and mc.size_multiple == 8
    latent = (height // 8, width // 8)
    assert any(s % 2 ** (len(sd.unet.config.block_out_channels) - 1) for s in latent)  # uneven for the U-Net
    start = randn_tensor((1, 4, *latent), generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    kwargs = dict(negative_prompt=NEGATIVE, height=height, width=width, num_inference_steps=STEPS, guidance_scale=SCALE)
    want = sd(PROMPT, latents=start, output_type="pt", **kwargs).images
    got = mc(PROMPT, num_frames=FRAMES, latents=start.unsqueeze(2).repeat(1, 1, FRAMES, 1, 1), interpolate=False,
             output_type="pt", generator=torch.Generator().manual_seed(0), **kwargs)
    assert got.frames.shape == (1, FRAMES, 3, height, width)
    assert (got.frames[0] - want).abs().max().item() <= 1e-4
    key = sd(PROMPT, generator=torch.Generator().manual_seed(0), output_type="pt", **kwargs).images
    assert (got.key_frames / 2 + 0.5 - key).abs().max().item() <= 1e-4  # stage one: SD's U-Net at (5, 7)
    with torch.no_grad():  # temporal layers and AppearNet injections doing something
        for name, p in video.named_parameters():
            if not name.startswith("unet."):
                p.add_(0.05 * torch.randn_like(p))
    changed = MicroCinemaPipeline(video, sd.vae, sd.text_encoder, sd.tokenizer, scheduler=sd.scheduler,
                                  interp_unet=video, key_frame_unet=sd.unet, sampler="ddim", refine_strength=0.5,
                                  interp_anchor_means=True)
    changed.set_progress_bar_config(disable=True)
    out = changed(PROMPT, height=height, width=width, num_frames=3, num_inference_steps=2, output_type="pt",
                  generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 9, 3, height, width) and torch.isfinite(out.frames).all()
    assert (out.frames[0, 4] - got.frames[0, 1]).abs().max() > 1e-3
    with pytest.raises(MicroCinemaError, match="height must be a positive multiple of 8 pixels"):
        mc(PROMPT, height=44, width=width, interpolate=False)
