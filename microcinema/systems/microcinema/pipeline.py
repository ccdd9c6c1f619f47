"""MicroCinema end to end: text -> key frame -> image&text-to-video -> x4 temporal interpolation.

1. **Stage one** (section 3.1): the key frame from any text-to-image model
   (:mod:`microcinema.pipelines.key_frame`) or the user's image, fitted to the model's size.
2. **Stage two, base model**: a :class:`~microcinema.models.unet3d.VideoUNet` with AppearNet generates
   ``num_frames`` frames at 2 fps around the key frame (its centre frame) from text and image. Sampling
   starts from the Appearance Noise Prior ``N((lambda + gamma) z_c, I)`` (section 3.3, appendix B) with
   classifier-free guidance on the text (the image condition is kept in both branches).
3. **Temporal interpolation** (x4, section 3.1): for each adjacent pair of base frames, the interpolation
   model generates 5 frames at 8 fps conditioned on the latents interpolated between the pair; the three
   middle ones are inserted between the pair: 9 frames -> 33.

By default the key frame is kept exactly as the centre frame during stage two (the replacement method,
:mod:`microcinema.core.replacement`; beyond the paper, which lets the model redraw it: ``pin_key_frame=False``).
By default each in-between frame's palette is also kept at the mean of its interpolated condition
(:func:`microcinema.core.replacement.mean_anchor_eps_model`, also beyond the paper; ``interp_anchor_means=False``
turns it off). By default the base frames, and then the in-between frames, get a short second pass, the
motion-compensated key-frame refinement (:mod:`microcinema.systems.microcinema.keyframe_refine`, beyond the paper): each frame
restarts from the key frame warped to where the first pass moved it and the last 30 % of the schedule is re-run
by the same model (``refine_strength=0`` turns it off).

Latents are decoded by the VAE at the end. All sampling goes through :func:`microcinema.core.samplers.sample`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import AutoencoderKL
from einops import rearrange
from tqdm.auto import tqdm

from microcinema.core.errors import MicroCinemaError, check
from microcinema.core.guidance import cfg_eps_model
from microcinema.systems.microcinema.keyframe_refine import DEFAULT_MIN_SCORE, refine_init
from microcinema.systems.microcinema.noise_prior import DEFAULT_GAMMA, DEFAULT_LAMBDA, appearance_init_mean
from microcinema.core.replacement import centre_frame_mask, mean_anchor_eps_model, replacement_eps_model
from microcinema.core.samplers import SAMPLERS, sample
from microcinema.embedded import embedded_path
from microcinema.systems.microcinema.task import interpolation_condition
from microcinema.core.text_encoders import TextEncoder, load_text_encoder
from microcinema.models.unet3d import VideoUNet
from microcinema.pipelines.key_frame import KeyFrameModel, load_image, load_key_frame_model
from microcinema.pipelines.text_to_image import check_prompts, check_steps, cond_eps_model, prompt_and_empty_conds, to_output, unet_text_cond

PIPELINE_FILE = "microcinema.json"
INTERPOLATION_FACTOR = 4  # 5-frame interpolation clips: 3 new frames between each pair
#: The fraction of the sampling steps the key-frame refinement re-runs (keyframe_refine; chosen on the tuning
#: prompts, see its docs/results entry).
DEFAULT_REFINE_STRENGTH = 0.3


def _at_least_one_step(steps: int, strength: float) -> float:
    """``strength`` as a whole number of the ``steps`` steps, at least one (:func:`~microcinema.core.samplers.sample`
    runs ``int(steps * strength)`` of them)."""
    return max(1, int(steps * strength + 1e-9)) / steps


def _join_clips(latents: torch.Tensor, clips: torch.Tensor) -> torch.Tensor:
    """Base latents (B, C, F, h, w) and the interpolation model's clips ((B (F - 1)), C, 5, h, w) between each
    adjacent pair -> (B, C, 4 (F - 1) + 1, h, w): the base frames, and the clips' three middle frames between."""
    middle = rearrange(clips[:, :, 1:-1], "(b f) c m h w -> b c f m h w", b=latents.shape[0])
    pieces = []
    for k in range(latents.shape[2] - 1):
        pieces += [latents[:, :, k:k + 1], middle[:, :, k]]
    pieces.append(latents[:, :, -1:])
    return torch.cat(pieces, dim=2)


@dataclass
class VideoPipelineOutput:
    """``frames``: (B, T, H, W, 3) uint8 for ``"np"``, (B, T, 3, H, W) in [-1, 1] for ``"pt"``, or latents
    (B, C, T, h, w) for ``"latent"``; ``key_frames`` (B, 3, H, W) in [-1, 1]; ``fps`` of the frames;
    ``notes``: what was done to a user's image; ``timings``: seconds per stage (key_frame, base,
    interpolation, decode)."""

    frames: Any
    key_frames: torch.Tensor
    fps: float
    notes: list[str]
    timings: dict[str, float] = field(default_factory=dict)


class MicroCinemaPipeline:
    """Text (and optionally an image) to video with MicroCinema's two stages and interpolation."""

    def __init__(self, video_unet: VideoUNet, vae: AutoencoderKL, text_encoder: TextEncoder, *,
                 interp_unet: VideoUNet | None = None, key_frame_model: KeyFrameModel | str | None = None,
                 text_encoder_name: str = "minilm", base_fps: float = 2.0, sampler: str = "ddim",
                 guidance_scale: float = 5.0, noise_prior_lambda: float = DEFAULT_LAMBDA,
                 noise_prior_gamma: float = DEFAULT_GAMMA, interp_noise_prior_lambda: float = DEFAULT_LAMBDA,
                 interp_noise_prior_gamma: float = DEFAULT_GAMMA, num_frames_range: tuple[int, int] = (3, 17),
                 pin_key_frame: bool = True, interp_anchor_means: bool = True,
                 refine_strength: float = DEFAULT_REFINE_STRENGTH) -> None:
        self.video_unet, self.vae, self.text_encoder = video_unet.eval(), vae.eval(), text_encoder
        self.interp_unet = interp_unet.eval() if interp_unet is not None else None
        self._key_frame_model = key_frame_model
        self.text_encoder_name, self.base_fps, self.sampler = text_encoder_name, base_fps, sampler
        self.guidance_scale = guidance_scale
        self.noise_prior_lambda, self.noise_prior_gamma = noise_prior_lambda, noise_prior_gamma
        # the interpolation model's own prior (the lambda it was trained with): not changed by call overrides
        self.interp_noise_prior_lambda, self.interp_noise_prior_gamma = interp_noise_prior_lambda, interp_noise_prior_gamma
        self.num_frames_range = tuple(num_frames_range)
        self.pin_key_frame = pin_key_frame  # replacement method on the centre frame (microcinema.core.replacement)
        # keep each in-between frame's palette at its condition's (replacement.mean_anchor_eps_model)
        self.interp_anchor_means = interp_anchor_means
        # motion-compensated key-frame refinement of base and in-between frames (keyframe_refine; 0: off)
        check(isinstance(refine_strength, (int, float)) and 0 <= refine_strength <= 1,
              f"refine_strength must be in [0, 1] (0: off), got {refine_strength!r}")
        self.refine_strength = float(refine_strength)

    # ------------------------------------------------------------------ loading and saving
    def _settings(self) -> dict[str, Any]:
        return {"text_encoder": self.text_encoder_name, "base_fps": self.base_fps, "sampler": self.sampler,
                "guidance_scale": self.guidance_scale, "noise_prior_lambda": self.noise_prior_lambda,
                "noise_prior_gamma": self.noise_prior_gamma, "interp_noise_prior_lambda": self.interp_noise_prior_lambda,
                "interp_noise_prior_gamma": self.interp_noise_prior_gamma, "num_frames_range": list(self.num_frames_range),
                "pin_key_frame": self.pin_key_frame, "interp_anchor_means": self.interp_anchor_means,
                "refine_strength": self.refine_strength}

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, torch_dtype: torch.dtype = torch.float32,
                        key_frame_model: KeyFrameModel | str | None = None) -> "MicroCinemaPipeline":
        """A folder with ``video/`` (VideoUNet), optional ``interp/``, ``vae/`` and ``microcinema.json``;
        the key frame model defaults to the folder's ``t2i/`` pipeline if present, else the embedded one."""
        path = Path(path)
        if not (path / PIPELINE_FILE).is_file() or not (path / "video" / "config.json").is_file():
            raise MicroCinemaError(f"{path} is not a MicroCinema pipeline folder (expected {PIPELINE_FILE} and video/)")
        settings = json.loads((path / PIPELINE_FILE).read_text())
        load = lambda sub: VideoUNet.from_pretrained(path / sub, torch_dtype=torch_dtype)  # noqa: E731
        interp = load("interp") if (path / "interp" / "config.json").is_file() else None
        vae = AutoencoderKL.from_pretrained(path / "vae", torch_dtype=torch_dtype)
        if key_frame_model is None and (path / "t2i").is_dir():
            key_frame_model = str(path / "t2i")
        name = settings.pop("text_encoder", "minilm")
        settings.setdefault("refine_strength", 0.0)  # folders saved before the refinement existed: kept off
        settings["num_frames_range"] = tuple(settings.get("num_frames_range", (3, 17)))
        return cls(load("video"), vae, load_text_encoder(name), interp_unet=interp, key_frame_model=key_frame_model,
                   text_encoder_name=name, **settings)

    @classmethod
    def embedded(cls, key_frame_model: KeyFrameModel | str | None = None) -> "MicroCinemaPipeline":
        """The tiny model family shipped in the package (64x64, the procedural domain), offline; stage one is
        the embedded text-to-image model unless ``key_frame_model`` says otherwise."""
        load = lambda name: VideoUNet.from_pretrained(embedded_path(name), torch_dtype=torch.float32)  # noqa: E731
        vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32)
        interp = load("interp") if (embedded_path("video").parent / "interp" / "config.json").is_file() else None
        return cls(load("video"), vae, load_text_encoder("minilm"), interp_unet=interp, key_frame_model=key_frame_model)

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.video_unet.save_pretrained(path / "video")
        if self.interp_unet is not None:
            self.interp_unet.save_pretrained(path / "interp")
        self.vae.save_pretrained(path / "vae")
        (path / PIPELINE_FILE).write_text(json.dumps(self._settings(), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------ parts
    @property
    def key_frame_model(self) -> KeyFrameModel:
        if self._key_frame_model is None or isinstance(self._key_frame_model, (str, Path)):
            self._key_frame_model = load_key_frame_model(self._key_frame_model)
        return self._key_frame_model

    @property
    def device(self) -> torch.device:
        return self.video_unet.device

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "MicroCinemaPipeline":
        """Move (and cast) the U-Nets and the VAE, as diffusers' ``pipe.to("cuda", torch.float16)``. The text
        encoder's outputs and the key frames (from whatever device stage one runs on) are moved where used."""
        for module in (self.video_unet, self.interp_unet, self.vae):
            if module is not None:
                module.to(device=device, dtype=dtype)
        return self

    @property
    def image_size(self) -> int:
        return self.video_unet.unet.config.sample_size * 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist.mode().float()
        return latents * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """(B, C, T, h, w) latents -> (B, T, 3, H, W) pixels in [-1, 1]."""
        flat = rearrange(latents, "b c t h w -> (b t) c h w") / self.vae.config.scaling_factor
        pixels = torch.cat([self.vae.decode(chunk.to(self.vae.device, self.vae.dtype)).sample.float()
                            for chunk in flat.split(batch_size)])
        return rearrange(pixels.clamp(-1, 1), "(b t) c h w -> b t c h w", b=latents.shape[0])

    def _generator(self, generator: torch.Generator | None) -> torch.Generator:
        return generator if generator is not None else torch.Generator().manual_seed(int(torch.seed() % 2**63))

    def _base_eps_model(self, prompts: list[str], z_key: torch.Tensor, num_frames: int, *, scale: float,
                        generator: torch.Generator, lam: float, pin_key_frame: bool) -> tuple[Any, torch.Tensor]:
        """The base model's guided noise prediction for ``prompts`` and key frame latents ``z_key`` (B, C, h, w)
        (centre frame pinned if asked), and the AppearNet condition (B, C, 1, h, w)."""
        cond, uncond = prompt_and_empty_conds(self.text_encoder, prompts)
        condition = z_key.unsqueeze(2)  # AppearNet input [z_c, ..., z_c]: one frame, broadcast over F
        cond, uncond = {**cond, "condition": condition}, {**uncond, "condition": condition}
        eps_model = cfg_eps_model(cond_eps_model(self.video_unet), cond, uncond, scale)
        if pin_key_frame:  # the key frame's noise as in training: n + lambda z_c (section 3.3, eq. 3)
            known = condition.expand(-1, -1, num_frames, -1, -1)
            known_noise = torch.randn(known.shape, generator=generator, device=generator.device).to(z_key.device)
            eps_model = replacement_eps_model(eps_model, known, centre_frame_mask(num_frames, z_key.device),
                                              known_noise + lam * known)
        return eps_model, condition

    @torch.no_grad()
    def generate_base(self, prompts: list[str], z_key: torch.Tensor, num_frames: int, *, steps: int, scale: float,
                      generator: torch.Generator, lam: float, gamma: float, progress: bool,
                      pin_key_frame: bool = False) -> torch.Tensor:
        """Stage two: (B, C, F, h, w) latents around the key frame latent ``z_key`` (B, C, h, w). ``pin_key_frame``:
        the centre frame follows the key frame's forward process (replacement method), so it is ``z_key``."""
        eps_model, _ = self._base_eps_model(prompts, z_key, num_frames, scale=scale, generator=generator, lam=lam,
                                            pin_key_frame=pin_key_frame)
        noise = torch.randn((len(prompts), z_key.shape[1], num_frames, *z_key.shape[2:]), generator=generator,
                            device=generator.device).to(z_key.device)
        return sample(eps_model, noise,
                      sampler=self.sampler, num_inference_steps=steps, generator=generator,
                      init_mean=appearance_init_mean(z_key, num_frames, lam, gamma), progress=progress)

    @torch.no_grad()
    def refine_base(self, prompts: list[str], z_key: torch.Tensor, latents: torch.Tensor, *, strength: float,
                    steps: int, scale: float, generator: torch.Generator, lam: float, progress: bool,
                    pin_key_frame: bool = False, min_score: float = DEFAULT_MIN_SCORE) -> torch.Tensor:
        """Motion-compensated key-frame refinement (:mod:`microcinema.systems.microcinema.keyframe_refine`, beyond the paper) of base
        latents (B, C, F, h, w): each frame restarts from the key frame warped onto it (where a similarity
        transform explains it, score >= ``min_score``) and is re-denoised over the last ``strength`` of the
        ``steps``-step schedule (at least one step) with the same text, guidance and key frame."""
        # unpinned, the centre frame is the model's redraw: warp the key frame itself then
        key_pixels = None if pin_key_frame else self.decode_latents(z_key.unsqueeze(2))[:, 0]
        init, _ = refine_init(latents, self.decode_latents, self.encode_images, latents.shape[2] // 2, min_score,
                              key_pixels=key_pixels)
        eps_model, condition = self._base_eps_model(prompts, z_key, latents.shape[2], scale=scale, generator=generator,
                                                    lam=lam, pin_key_frame=pin_key_frame)
        noise = torch.randn(latents.shape, generator=generator, device=generator.device).to(latents.device)
        return sample(eps_model, noise, sampler=self.sampler, num_inference_steps=steps, generator=generator,
                      init_mean=lam * condition, init=init, strength=_at_least_one_step(steps, strength),
                      progress=progress)

    @torch.no_grad()
    def interpolate(self, latents: torch.Tensor, *, steps: int, generator: torch.Generator, lam: float, gamma: float,
                    progress: bool, anchor_means: bool | None = None, refine_strength: float = 0.0,
                    min_score: float = DEFAULT_MIN_SCORE) -> torch.Tensor:
        """x4 temporal interpolation of (B, C, F, h, w) latents to (B, C, 4 (F - 1) + 1, h, w); base frames kept.
        ``anchor_means``: keep each in-between frame's palette at its condition's (default: the pipeline's
        ``interp_anchor_means``). ``refine_strength`` > 0: the in-between frames then get the key-frame
        refinement too (:mod:`microcinema.systems.microcinema.keyframe_refine`; the key frame is the centre base frame), re-denoised
        by the interpolation model over the last ``refine_strength`` of the schedule."""
        check(self.interp_unet is not None, "this pipeline has no interpolation model: pass interpolate=False")
        b, c, f, h, w = latents.shape
        first = rearrange(latents[:, :, :-1], "b c f h w -> (b f) c h w")
        last = rearrange(latents[:, :, 1:], "b c f h w -> (b f) c h w")
        n = INTERPOLATION_FACTOR + 1
        condition = interpolation_condition(first, last, n)
        cond = {**unet_text_cond(self.text_encoder.encode([""] * len(first))), "condition": condition}
        noise = torch.randn((len(first), c, n, h, w), generator=generator, device=generator.device).to(latents.device)
        eps_model = cfg_eps_model(cond_eps_model(self.interp_unet), cond, cond, 1.0)
        if self.interp_anchor_means if anchor_means is None else anchor_means:
            eps_model = mean_anchor_eps_model(eps_model, condition.mean(dim=(-2, -1), keepdim=True))
        clips = sample(eps_model, noise, sampler=self.sampler, num_inference_steps=steps, generator=generator,
                       progress=progress, init_mean=(lam + gamma) * condition)
        if refine_strength > 0:
            full = _join_clips(latents, clips)
            between = [i for i in range(full.shape[2]) if i % INTERPOLATION_FACTOR]
            init, _ = refine_init(full, self.decode_latents, self.encode_images, INTERPOLATION_FACTOR * (f // 2),
                                  min_score, frames=between)
            starts = range(0, full.shape[2] - 1, INTERPOLATION_FACTOR)
            init = rearrange(torch.stack([init[:, :, s:s + n] for s in starts], dim=1), "b f c m h w -> (b f) c m h w")
            noise = torch.randn(clips.shape, generator=generator, device=generator.device).to(latents.device)
            clips = sample(eps_model, noise, sampler=self.sampler, num_inference_steps=steps, generator=generator,
                           progress=progress, init_mean=lam * condition, init=init,
                           strength=_at_least_one_step(steps, refine_strength))
        return _join_clips(latents, clips)

    # ------------------------------------------------------------------ the call
    def check_num_frames(self, num_frames: int) -> int:
        lo, hi = self.num_frames_range
        check(isinstance(num_frames, (int, np.integer)) and lo <= num_frames <= hi and num_frames % 2 == 1,
              f"num_frames must be an odd number from {lo} to {hi} (the key frame is the centre frame; the base "
              f"model was trained on 9), got {num_frames!r}")
        return int(num_frames)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], image: Any = None, *, num_frames: int = 9,
                 num_inference_steps: int = 25, guidance_scale: float | None = None,
                 generator: torch.Generator | None = None, interpolate: bool = True, output_type: str = "np",
                 noise_prior_lambda: float | None = None, noise_prior_gamma: float | None = None,
                 pin_key_frame: bool | None = None, interp_anchor_means: bool | None = None,
                 refine_strength: float | None = None, progress: bool = True) -> VideoPipelineOutput:
        """Generate videos for ``prompt``; ``image`` (path, PIL image, or a list of them, one per prompt) replaces
        stage one. ``interpolate``: x4 frame rate with the interpolation model (9 frames at 2 fps -> 33 at 8).
        ``pin_key_frame``: keep the key frame as the centre frame exactly (replacement method; default: the
        pipeline's setting). ``interp_anchor_means``: keep each interpolated frame's palette at its
        condition's (default: the pipeline's setting). ``refine_strength``: the fraction of the steps re-run by
        the motion-compensated key-frame refinement of the base and in-between frames, 0 = off (default: the
        pipeline's)."""
        prompts = check_prompts(prompt)
        steps = check_steps(num_inference_steps)
        num_frames = self.check_num_frames(num_frames)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check(scale >= 0, f"guidance_scale must be >= 0 (1 = no guidance), got {scale}")
        check(output_type in ("np", "pt", "latent"), f"unknown output_type {output_type!r}: allowed are np, pt, latent")
        check(self.sampler in SAMPLERS, f"unknown sampler {self.sampler!r}: allowed are {', '.join(SAMPLERS)}")
        check(not interpolate or self.interp_unet is not None,
              "this pipeline has no interpolation model: pass interpolate=False (CLI: --no-interpolate)")
        refine = self.refine_strength if refine_strength is None else refine_strength
        check(isinstance(refine, (int, float)) and 0 <= refine <= 1, f"refine_strength must be in [0, 1] (0: off), "
              f"got {refine!r}")
        lam = self.noise_prior_lambda if noise_prior_lambda is None else noise_prior_lambda
        gamma = self.noise_prior_gamma if noise_prior_gamma is None else noise_prior_gamma
        generator = self._generator(generator)
        size, notes = self.image_size, []
        stages = tqdm(total=3 if interpolate else 2, desc="MicroCinema", unit="stage", disable=not progress)
        timings, clock = {}, time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name], clock = now - clock, now

        stages.set_postfix_str("key frame")
        if image is None:
            key_frames = self.key_frame_model(prompts, num_inference_steps=steps, guidance_scale=None,
                                              generator=generator, size=size)
        else:
            images = image if isinstance(image, (list, tuple)) else [image] * len(prompts)
            check(len(images) == len(prompts), f"got {len(images)} images for {len(prompts)} prompts: give one per prompt")
            loaded = [load_image(im, size) for im in images]
            key_frames = torch.stack([t for t, _ in loaded])
            notes = sorted({n for _, ns in loaded for n in ns})
        lap("key_frame")
        stages.update()

        stages.set_postfix_str("image&text-to-video")
        z_key = self.encode_images(key_frames)
        pin = self.pin_key_frame if pin_key_frame is None else pin_key_frame
        latents = self.generate_base(prompts, z_key, num_frames, steps=steps, scale=scale, generator=generator,
                                     lam=lam, gamma=gamma, progress=False, pin_key_frame=pin)
        fps = self.base_fps
        lap("base")
        if refine > 0:
            stages.set_postfix_str("key-frame refinement")
            latents = self.refine_base(prompts, z_key, latents, strength=refine, steps=steps, scale=scale,
                                       generator=generator, lam=lam, progress=False, pin_key_frame=pin)
            lap("refine")
        stages.update()
        if interpolate:
            stages.set_postfix_str("interpolation x4")
            latents = self.interpolate(latents, steps=steps, generator=generator, lam=self.interp_noise_prior_lambda,
                                       gamma=self.interp_noise_prior_gamma, progress=False,
                                       anchor_means=interp_anchor_means,
                                       refine_strength=refine)
            fps = self.base_fps * INTERPOLATION_FACTOR
            lap("interpolation")
            stages.update()
        stages.close()
        if output_type == "latent":
            return VideoPipelineOutput(latents, key_frames, fps, notes, timings)
        pixels = self.decode_latents(latents)
        frames = pixels if output_type == "pt" else np.stack([to_output(v, "np") for v in pixels])
        lap("decode")
        return VideoPipelineOutput(frames, key_frames, fps, notes, timings)
