"""Does a stage-two model read the *direction* of a motion from the text? A denoising-loss probe.

For each kind of directed motion (left/right, up/down, grow/shrink) renders --num domain clips (9 frames at
2 fps), encodes them with the embedded VAE, noises them at a few timesteps (Appearance Noise Prior, key frame = centre frame, one fixed
noise draw per timestep) and prints the model's epsilon loss on the non-key frames with four captions:

* ``right``: "a red circle moving left" for a clip moving left;
* ``reversed``: the opposite direction ("moving right", "shrinking" for a growing clip);
* ``other axis``: a direction on the other axis ("moving up");
* ``empty``: the empty prompt.

A model that reads the direction has ``reversed`` clearly above ``right`` at high noise (where the frames
alone do not show the motion); a model that only reads the axis has ``reversed == right`` and
``other axis`` above both. The kinds are reported apart: a model can read one and not another.

    python scripts/motion_text_probe.py                       # the shipped base model
    python scripts/motion_text_probe.py --model runs/video_ftm/final
    python scripts/motion_text_probe.py --hide-motion-from 900   # inputs as configs/video_text_shift.yaml trains

``--hide-motion-from T``: from timestep T up the noisy input carries the key frame instead of the clip and the
target is the noise that takes it to the clip (noise_priors.hide_motion_at_high_noise): the motion cannot be
read off the input there, as at the start of sampling, so only the caption can tell it.
"""

from __future__ import annotations

import argparse

import torch
from einops import rearrange

from microcinema.data.synthetic import render_clip, sample_clip
from microcinema.core.diffusion import make_training_scheduler
from microcinema.systems.microcinema.noise_prior import appearance_noise, hide_motion_at_high_noise
from microcinema.embedded import embedded_path
from microcinema.training.tasks.t2i import load_vae
from microcinema.systems.microcinema.task import key_frame_condition
from microcinema.core.text_encoders import load_text_encoder
from microcinema.models.unet3d import VideoUNet

REVERSED = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow"}
OTHER_AXIS = {"left": "up", "right": "down", "up": "left", "down": "right", "grow": "left", "shrink": "right"}
PHRASE = {"left": "moving left", "right": "moving right", "up": "moving up", "down": "moving down",
          "grow": "growing", "shrink": "shrinking"}


def caption(spec, motion: str) -> str:
    obj = spec.object.replace("digit", "digit ")
    return f"a {spec.colour} {obj} {PHRASE[motion]}"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a VideoUNet folder (default: the shipped base model)")
    parser.add_argument("--num", type=int, default=16, help="clips per kind of motion (default 16)")
    parser.add_argument("--timesteps", default="600,900,970,995", help="comma-separated (default 600,900,970,995)")
    parser.add_argument("--seed", type=int, default=77, help="clip seed (default 77)")
    parser.add_argument("--lam", type=float, default=0.03, help="Appearance Noise Prior lambda (default 0.03)")
    parser.add_argument("--hide-motion-from", type=int, default=None,
                        help="from this timestep up, the input holds the key frame, not the clip (default: never)")
    args = parser.parse_args()

    model = VideoUNet.from_pretrained(args.model or embedded_path("video")).float().eval()
    vae, encoder, scheduler = load_vae("embedded"), load_text_encoder("minilm"), make_training_scheduler()
    timesteps = [int(v) for v in args.timesteps.split(",")]
    print(f"epsilon loss on the non-key frames, {args.num} clips per kind (in brackets: relative to the right caption)")
    for kind in (("left", "right"), ("up", "down"), ("grow", "shrink")):
        specs = [s for s in (sample_clip(i, seed=args.seed, num_frames=9, fps=2.0, size=64)
                             for i in range(40 * args.num)) if s.motion in kind][: args.num]
        pixels = torch.stack([torch.from_numpy(render_clip(s)) for s in specs]).float() / 127.5 - 1  # B F H W 3
        flat = vae.encode(rearrange(pixels, "b f h w c -> (b f) c h w")).latent_dist.mean * vae.config.scaling_factor
        z0 = rearrange(flat, "(b f) c h w -> b c f h w", b=len(specs))
        condition = key_frame_condition(z0)
        captions = {"right": [caption(s, s.motion) for s in specs],
                    "reversed": [caption(s, REVERSED[s.motion]) for s in specs],
                    "other axis": [caption(s, OTHER_AXIS[s.motion]) for s in specs],
                    "empty": [""] * len(specs)}
        texts = {k: encoder.encode(v) for k, v in captions.items()}
        not_key = torch.ones(z0.shape[2], dtype=torch.bool)
        not_key[z0.shape[2] // 2] = False
        generator = torch.Generator().manual_seed(1)
        for t in timesteps:
            eps = appearance_noise(condition, torch.randn(z0.shape, generator=generator), args.lam)
            steps = torch.full((len(specs),), t)
            z_t, target = hide_motion_at_high_noise(z0, condition, eps, steps, args.hide_motion_from, scheduler)
            loss = {}
            for name, text in texts.items():
                pred = model(z_t, steps, encoder_hidden_states=text.hidden_states,
                             encoder_attention_mask=text.attention_mask, condition=condition).sample
                loss[name] = float((pred - target)[:, :, not_key].square().mean())
            cells = "  ".join(f"{k} {v:.5f} ({100 * (v / loss['right'] - 1):+.1f} %)" for k, v in loss.items())
            print(f"{'/'.join(kind):12s} t={t:4d}  {cells}", flush=True)


if __name__ == "__main__":
    main()
