"""Does a text-to-image model read *which digit* from the text? A denoising-loss probe (issue 3's diagnosis).

Renders --num key frames of the domain that show a handwritten digit, encodes them with the embedded VAE, noises
them at a few timesteps (one fixed noise draw per timestep) and prints the U-Net's epsilon loss with four captions:

* ``right``: "a green digit 3" for a frame showing a 3;
* ``wrong``: the same caption with another digit ("a green digit 6", the digit + 3 mod 10);
* ``circle``: "a green circle" (a shape instead of a digit);
* ``empty``: the empty prompt.

A model that draws the digit the caption names has ``wrong`` clearly above ``right`` at the noise levels where
the glyph is formed; a model that draws a generic digit has ``wrong == right`` and only ``circle`` above.

    python scripts/digit_text_probe.py                        # the shipped text-to-image U-Net
    python scripts/digit_text_probe.py --model runs/t2i/final
"""

from __future__ import annotations

import argparse

import torch
from diffusers import UNet2DConditionModel
from einops import rearrange

from microcinema.data.synthetic import render_frame, sample_clip
from microcinema.core.diffusion import add_noise, make_training_scheduler
from microcinema.embedded import embedded_path
from microcinema.training.tasks.t2i import load_vae
from microcinema.core.text_encoders import load_text_encoder


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a UNet2DConditionModel folder (default: the shipped t2i)")
    parser.add_argument("--num", type=int, default=40, help="digit key frames (default 40)")
    parser.add_argument("--timesteps", default="200,400,600,800,900", help="comma-separated (default 200,...,900)")
    parser.add_argument("--seed", type=int, default=5, help="clip seed (default 5)")
    args = parser.parse_args()

    unet = UNet2DConditionModel.from_pretrained(args.model or embedded_path("t2i")).float().eval()
    vae, encoder, scheduler = load_vae("embedded"), load_text_encoder("minilm"), make_training_scheduler()
    specs = [s for s in (sample_clip(i, seed=args.seed, num_frames=9, fps=2.0, size=64) for i in range(60 * args.num))
             if s.object.startswith("digit")][: args.num]
    pixels = torch.stack([torch.from_numpy(render_frame(s, s.num_frames // 2)) for s in specs]).float() / 127.5 - 1
    z0 = vae.encode(rearrange(pixels, "b h w c -> b c h w")).latent_dist.mean * vae.config.scaling_factor
    digit = [int(s.object[5:]) for s in specs]
    captions = {"right": [f"a {s.colour} digit {d}" for s, d in zip(specs, digit)],
                "wrong": [f"a {s.colour} digit {(d + 3) % 10}" for s, d in zip(specs, digit)],
                "circle": [f"a {s.colour} circle" for s in specs],
                "empty": [""] * len(specs)}
    texts = {k: encoder.encode(v) for k, v in captions.items()}
    generator = torch.Generator().manual_seed(0)
    print(f"epsilon loss on {len(specs)} digit key frames (in brackets: relative to the right caption)")
    for t in (int(v) for v in args.timesteps.split(",")):
        noise = torch.randn(z0.shape, generator=generator)
        steps = torch.full((len(specs),), t)
        z_t = add_noise(z0, noise, steps, scheduler)
        loss = {name: float((unet(z_t, steps, encoder_hidden_states=text.hidden_states,
                                  encoder_attention_mask=text.attention_mask).sample - noise).square().mean())
                for name, text in texts.items()}
        print(f"t={t:4d}  " + "  ".join(f"{k} {v:.4f} ({100 * (v / loss['right'] - 1):+.1f} %)" for k, v in loss.items()),
              flush=True)


if __name__ == "__main__":
    main()
