"""The base of every system's video pipeline: a diffusers ``DiffusionPipeline`` for latent video diffusion.

What MicroCinema, ART-V and the few-shot system share lives here (DESIGN.md section 6, ``pipelines/base``):

* prompt encoding with ``negative_prompt``, ``num_videos_per_prompt`` and classifier-free guidance
  (:meth:`VideoDiffusionPipeline.encode_prompt`): the registered ``text_encoder`` + ``tokenizer``
  (transformers models) are wrapped by :mod:`microcinema.core.text_encoders`, so CLIP prompts are encoded as
  ``StableDiffusionPipeline`` encodes them (77 tokens, no padding mask) and MiniLM ones with their mask;
* input checks that raise one-line :class:`~microcinema.core.errors.MicroCinemaError` messages;
* :meth:`~VideoDiffusionPipeline.prepare_latents` (diffusers' ``randn_tensor``, or the user's ``latents``);
* VAE encoding and decoding of ``(B, C, F, h, w)`` videos in chunks of ``decode_chunk_size`` frames;
* output conversion (diffusers' ``VideoProcessor``): ``"pil"`` (a list of lists of PIL images, one list per
  video), ``"np"`` (float in [0, 1], ``(B, F, H, W, 3)``), ``"pt"`` (``(B, F, 3, H, W)`` in [0, 1]),
  ``"latent"``; :class:`VideoPipelineOutput`;
* the denoising loop with diffusers' ``callback_on_step_end`` semantics and ``self.progress_bar``
  (:meth:`~VideoDiffusionPipeline.denoise`), over either the k-diffusion samplers of
  :mod:`microcinema.core.samplers` or the registered diffusers ``scheduler``'s own loop (``sampler="scheduler"``).

``model_cpu_offload_seq`` is set by each subclass (its component names), so diffusers'
``enable_model_cpu_offload`` works.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from einops import rearrange

from microcinema.core.errors import MicroCinemaError, check, first_line
from microcinema.core.samplers import SAMPLERS, SCHEDULER_LOOP, StepCallback, check_prediction_type, sample
from microcinema.core.text_encoders import TextEncoder, wrap_text_encoder
from microcinema.pipelines.text_to_image import check_prompts, unet_text_cond
from microcinema.models.layers import cache_attention_signatures

#: What ``output_type`` may be.
OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "pt", "latent")

#: Stable Diffusion's scheduler (its training schedule, SD's "linear" being diffusers' ``scaled_linear``, and
#: its DDIM settings): the default when a pipeline is built without one (DESIGN.md section 3).
SD_SCHEDULER_CONFIG: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def sd_scheduler():
    """A ``DDIMScheduler`` with :data:`SD_SCHEDULER_CONFIG`."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_SCHEDULER_CONFIG)


@dataclass
class VideoPipelineOutput(BaseOutput):
    """A video pipeline's result.

    ``frames``: per ``output_type``: ``"pil"`` a list (one per video) of lists of PIL images; ``"np"`` float
    ``(B, F, H, W, 3)`` in [0, 1]; ``"pt"`` ``(B, F, 3, H, W)`` in [0, 1]; ``"latent"`` ``(B, C, F, h, w)``.
    ``diffusers.utils.export_to_video(out.frames[0], path, fps=out.fps)`` writes a video (pil or np).
    ``key_frames``: the conditioning frames ``(B, 3, H, W)`` in [-1, 1] (MicroCinema: stage one's or the user's);
    ``fps``: frame rate of ``frames``; ``notes``: what was done to a user's image; ``timings``: seconds per stage.
    """

    frames: Any
    key_frames: torch.Tensor | None = None
    fps: float | None = None
    notes: list[str] | None = None
    timings: dict[str, float] | None = None


def fresh_generator(generator: torch.Generator | list | None) -> torch.Generator:
    """``generator`` itself, or a new CPU generator seeded from the OS: torch's global RNG is neither used
    nor reseeded. A list (diffusers' per-sample generators) is not supported: one generator drives a video's
    several passes (stage one, base, refinement, interpolation) in order."""
    check(not isinstance(generator, (list, tuple)),
          "generator must be one torch.Generator (a list of generators is not supported)")
    if generator is not None:
        return generator
    fresh = torch.Generator()
    fresh.seed()
    return fresh


def load_stable_diffusion(pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None
                          ) -> DiffusionPipeline:
    """A Stable Diffusion (text-to-image) diffusers pipeline (a folder or hub id, e.g. SD 2.1) without its safety
    checker, for the systems built on its ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``;
    one-line errors for what cannot be loaded or lacks one of them."""
    try:
        sd = DiffusionPipeline.from_pretrained(pretrained_model_name_or_path, torch_dtype=torch_dtype,
                                               safety_checker=None, requires_safety_checker=False)
    except Exception as error:  # diffusers raises many kinds: missing files, bad configs, no network
        first = first_line(error)
        raise MicroCinemaError(f"cannot load a Stable Diffusion pipeline from {str(pretrained_model_name_or_path)!r}:"
                               f" {first}") from None
    missing = [n for n in ("unet", "vae", "text_encoder", "tokenizer", "scheduler") if getattr(sd, n, None) is None]
    check(not missing, f"{pretrained_model_name_or_path} has no {', '.join(missing)}: give a Stable Diffusion "
                       "(text-to-image) pipeline folder or hub id")
    return sd


def unet2d_config(unet: Any) -> Any:
    """The config of the 2D U-Net inside ``unet`` (a :class:`~microcinema.models.unet3d.VideoUNet` wraps one)."""
    return getattr(unet, "unet", unet).config


class VideoDiffusionPipeline(DiffusionPipeline):
    """A diffusers ``DiffusionPipeline`` for latent video diffusion; subclasses register ``unet``, ``vae``,
    ``text_encoder``, ``tokenizer`` and ``scheduler`` (at least) and implement ``__call__``."""

    _callback_tensor_inputs = ["latents"]
    _text_wrapper: TextEncoder | None = None

    # ------------------------------------------------------------------ building
    def register_components(self, text_max_length: int | None = None, **components: Any) -> int | None:
        """diffusers' ``register_modules`` for a subclass's ``__init__``, with the torch modules put in eval mode.
        ``components["text_encoder"]`` may be a wrapped :class:`~microcinema.core.text_encoders.TextEncoder`: its
        transformers model and tokenizer (unless ``components["tokenizer"]`` is given) are registered and it is
        kept for encoding. Returns ``text_max_length``, for a wrapped non-CLIP encoder (default) its
        ``max_length`` (CLIP keeps None: Stable Diffusion's 77 positions)."""
        wrapper = components.get("text_encoder")
        if isinstance(wrapper, TextEncoder):  # a wrapped encoder: register its transformers parts
            components["tokenizer"] = components.get("tokenizer") or wrapper.tokenizer
            components["text_encoder"] = wrapper.model
            if not type(wrapper.model).__name__.startswith("CLIPTextModel"):
                text_max_length = text_max_length or wrapper.max_length
        else:
            wrapper = None
        self.register_modules(**components)
        for module in components.values():
            if isinstance(module, torch.nn.Module):
                module.eval()
                cache_attention_signatures(module)  # same outputs, less Python per attention call
        self._text_wrapper = wrapper
        return text_max_length

    def register_settings(self, **settings: Any) -> None:
        """Save ``settings`` in the pipeline's config (``model_index.json``) and set them as attributes too;
        assigning one later updates the config."""
        self.register_to_config(**settings)
        for name, value in settings.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ sizes
    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent pixel: ``2 ** (len(vae.block_out_channels) - 1)`` (8 for SD's VAE)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def size_multiple(self) -> int:
        """Height and width must be multiples of this: the VAE's factor, as ``StableDiffusionPipeline`` (which asks
        for multiples of 8 with SD's x8 VAE). The latent need not divide by the U-Net's downsampling: diffusers'
        ``UNet2DConditionModel`` and the :class:`~microcinema.models.unet3d.VideoUNet` (AppearNet injections
        included) upsample to the skip connections' sizes (``forward_upsample_size``)."""
        return self.vae_scale_factor

    @property
    def default_height_width(self) -> tuple[int, int]:
        """The U-Net's ``sample_size`` in pixels (SD 2.1 base: 512x512; the embedded family: 64x64)."""
        size = unet2d_config(self.unet).sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def check_height_width(self, height: int | None, width: int | None) -> tuple[int, int]:
        """``height``/``width`` (None: the default) checked against what the VAE and the U-Net allow."""
        default_h, default_w = self.default_height_width
        height, width = default_h if height is None else height, default_w if width is None else width
        m = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0 and value % m == 0,
                  f"{name} must be a positive multiple of {m} pixels (the VAE downsamples x{m}), got {value!r}")
        return int(height), int(width)

    @property
    def video_processor(self) -> VideoProcessor:
        """diffusers' ``VideoProcessor`` for this VAE (postprocessing only: the pipelines resize a user's image
        themselves, keeping its aspect by a centre crop, which ``VaeImageProcessor`` does not)."""
        processor = getattr(self, "_video_processor", None)
        if processor is None or processor.config.vae_scale_factor != self.vae_scale_factor:
            self._video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)
        return self._video_processor

    # ------------------------------------------------------------------ text
    @property
    def text_embedder(self) -> TextEncoder:
        """The registered ``text_encoder`` + ``tokenizer`` wrapped for encoding (CLIP as Stable Diffusion,
        others with their padding mask; :func:`~microcinema.core.text_encoders.wrap_text_encoder`)."""
        wrapper = self._text_wrapper
        if wrapper is None or wrapper.model is not self.text_encoder or wrapper.tokenizer is not self.tokenizer:
            max_length = self.config.get("text_max_length")
            wrapper = wrap_text_encoder(self.text_encoder, self.tokenizer, max_length)
            self._text_wrapper = wrapper
        return wrapper

    def encode_prompt(self, prompt: str | list[str], device: torch.device | str | None = None,
                      num_videos_per_prompt: int = 1, do_classifier_free_guidance: bool = True,
                      negative_prompt: str | list[str] | None = None) -> tuple[dict, dict | None]:
        """The U-Net's text keyword arguments (``encoder_hidden_states`` ``(B * n, L, D)`` and
        ``encoder_attention_mask``, None for CLIP) for the prompts, each repeated ``num_videos_per_prompt``
        times, and for the negative prompts (default ``""``, as diffusers) when guiding, else None."""
        prompts = check_prompts(prompt)
        n = check_count("num_videos_per_prompt", num_videos_per_prompt)
        encoder = self.text_embedder
        repeat = lambda texts: [t for t in texts for _ in range(n)]  # noqa: E731
        to = lambda cond: {k: v.to(device) if torch.is_tensor(v) and device is not None else v  # noqa: E731
                           for k, v in cond.items()}
        cond = to(unet_text_cond(encoder.encode(repeat(prompts)), mask_padding=encoder.mask_padding))
        if not do_classifier_free_guidance:
            return cond, None
        negatives = check_negative_prompt(negative_prompt, len(prompts))
        return cond, to(unet_text_cond(encoder.encode(repeat(negatives)), mask_padding=encoder.mask_padding))

    # ------------------------------------------------------------------ latents
    def prepare_latents(self, shape: tuple[int, ...], generator: torch.Generator | None,
                        latents: torch.Tensor | None = None, device: torch.device | str | None = None,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Unit Gaussian noise of ``shape`` drawn by ``generator`` (diffusers' ``randn_tensor``: on the
        generator's device, then moved), or the user's ``latents`` checked against ``shape``. Sampling runs in
        float32 whatever the models' dtype (they get their own dtype at each call)."""
        device = device or self._execution_device
        if latents is None:
            return randn_tensor(tuple(shape), generator=generator, device=torch.device(device), dtype=dtype)
        check(torch.is_tensor(latents) and tuple(latents.shape) == tuple(shape),
              f"latents must have shape {tuple(shape)} (batch x num_videos_per_prompt, channels, frames, height / "
              f"{self.vae_scale_factor}, width / {self.vae_scale_factor}), got "
              f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
        return latents.to(device=device, dtype=dtype)

    # ------------------------------------------------------------------ VAE
    def _chunk(self, frames: int | None) -> int:
        return self.config.get("decode_chunk_size", 16) if frames is None else frames

    @torch.no_grad()
    def encode_frames(self, images: torch.Tensor, chunk_size: int | None = None) -> torch.Tensor:
        """Pixels ``(N, 3, H, W)`` in [-1, 1] -> scaled latents ``(N, C, h, w)`` (float32; the posterior's mode),
        ``chunk_size`` frames per VAE call (default: the pipeline's ``decode_chunk_size``)."""
        chunk = check_count("decode_chunk_size", self._chunk(chunk_size))
        vae = self.vae
        latents = [vae.encode(part.to(vae.device, vae.dtype)).latent_dist.mode().float() for part in images.split(chunk)]
        return torch.cat(latents) * vae.config.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Scaled latents ``(B, C, F, h, w)`` -> pixels ``(B, F, 3, H, W)`` in [-1, 1] (float32),
        ``decode_chunk_size`` frames per VAE call (default: the pipeline's)."""
        chunk = check_count("decode_chunk_size", self._chunk(decode_chunk_size))
        vae = self.vae
        flat = rearrange(latents, "b c t h w -> (b t) c h w") / vae.config.scaling_factor
        pixels = torch.cat([vae.decode(part.to(vae.device, vae.dtype)).sample.float() for part in flat.split(chunk)])
        return rearrange(pixels.clamp(-1, 1), "(b t) c h w -> b t c h w", b=latents.shape[0])

    def decode_to_uint8(self, latents: torch.Tensor, decode_chunk_size: int | None = None) -> np.ndarray:
        """Latents ``(B, C, F, h, w)`` -> uint8 frames ``(B, F, H, W, 3)`` rounded as ``round((x + 1) * 127.5)`` from
        [-1, 1] (the rounding of this project's video files; ``output_type="np"`` gives diffusers' floats)."""
        pixels = self.decode_latents(latents, decode_chunk_size)
        return ((pixels.permute(0, 1, 3, 4, 2).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)

    def postprocess(self, latents: torch.Tensor, output_type: str, decode_chunk_size: int | None = None) -> Any:
        """Latents ``(B, C, F, h, w)`` as ``output_type`` (see :class:`VideoPipelineOutput`)."""
        check_output_type(output_type)
        if output_type == "latent":
            return latents
        pixels = self.decode_latents(latents, decode_chunk_size)
        return self.video_processor.postprocess_video(rearrange(pixels, "b t c h w -> b c t h w"), output_type)

    # ------------------------------------------------------------------ denoising
    @property
    def num_timesteps(self) -> int | None:
        return getattr(self, "_num_timesteps", None)

    def check_callback(self, callback_on_step_end: Callable | None, tensor_inputs: list[str] | tuple[str, ...]) -> None:
        check(callback_on_step_end is None or callable(callback_on_step_end),
              f"callback_on_step_end must be callable, got {type(callback_on_step_end).__name__}")
        unknown = [k for k in tensor_inputs if k not in self._callback_tensor_inputs]
        check(not unknown, f"callback_on_step_end_tensor_inputs {unknown} are not allowed; allowed: "
                           f"{', '.join(self._callback_tensor_inputs)}")

    @contextmanager
    def _call_state(self, callback_on_step_end: Callable | None, tensor_inputs: list[str] | tuple[str, ...],
                    progress: bool | None, guidance_scale: float | None) -> Iterator[None]:
        """Per-call state read by :meth:`denoise` (diffusers keeps it on the pipeline too)."""
        saved = dict(getattr(self, "_progress_bar_config", {}))
        if progress is not None:
            self.set_progress_bar_config(**{**saved, "disable": not progress})
        self._callback_on_step_end, self._callback_inputs = callback_on_step_end, list(tensor_inputs)
        self._guidance_scale, self.stage = guidance_scale, None
        try:
            yield
        finally:
            self._progress_bar_config = saved
            self._callback_on_step_end = None

    def denoise(self, eps_model: Callable, noise: torch.Tensor, *, num_inference_steps: int,
                generator: torch.Generator | None, sampler: str, stage: str, init_mean: Any = None,
                init: torch.Tensor | None = None, strength: float = 1.0) -> torch.Tensor:
        """One sampling pass (:func:`microcinema.core.samplers.sample`) with this pipeline's scheduler
        (``alphas_cumprod``; its own loop when ``sampler="scheduler"``), a progress bar, and the call's
        ``callback_on_step_end(pipe, step_index, timestep, {"latents": ...})`` after every step, whose returned
        ``"latents"`` replace the current ones (diffusers' semantics). ``stage`` names the pass
        (``self.stage`` while it runs) for callbacks of pipelines with several passes."""
        check(sampler in SAMPLERS or sampler == SCHEDULER_LOOP,
              f"unknown sampler {sampler!r}; allowed: {', '.join([*SAMPLERS, SCHEDULER_LOOP])}")
        total = num_inference_steps if init is None else max(1, int(num_inference_steps * strength + 1e-9))
        self._num_timesteps, self.stage = total, stage
        callback = getattr(self, "_callback_on_step_end", None)
        names = getattr(self, "_callback_inputs", ["latents"])
        with self.progress_bar(total=total) as bar:
            def on_step(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
                bar.update()
                if callback is None:
                    return None
                outputs = callback(self, i, t, {k: latents for k in names if k == "latents"}) or {}
                return outputs.pop("latents", None)

            step_callback: StepCallback = on_step
            return sample(eps_model, noise, sampler=sampler, num_inference_steps=num_inference_steps,
                          scheduler=self.scheduler, generator=generator, init_mean=init_mean, progress=False,
                          init=init, strength=strength, step_callback=step_callback)

    @property
    def prediction_type(self) -> str:
        """The networks' parameterisation, from the scheduler's config (``epsilon`` or ``v_prediction``)."""
        return check_prediction_type(self.scheduler.config.get("prediction_type", "epsilon"))


def check_count(name: str, value: Any) -> int:
    check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
          f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def check_output_type(output_type: str) -> str:
    check(output_type in OUTPUT_TYPES, f"unknown output_type {output_type!r}: allowed are {', '.join(OUTPUT_TYPES)}")
    return output_type


def check_negative_prompt(negative_prompt: str | list[str] | None, batch: int) -> list[str]:
    """``None`` -> ``""`` per prompt; a string -> itself per prompt; a list -> one per prompt."""
    if negative_prompt is None:
        return [""] * batch
    if isinstance(negative_prompt, str):
        return [negative_prompt] * batch
    negatives = list(negative_prompt)
    check(len(negatives) == batch and all(isinstance(n, str) for n in negatives),
          f"negative_prompt must be a string or a list of {batch} strings (one per prompt), got {negative_prompt!r}")
    return negatives


__all__ = ["OUTPUT_TYPES", "SD_SCHEDULER_CONFIG", "VideoDiffusionPipeline", "VideoPipelineOutput", "check_count",
           "check_negative_prompt", "check_output_type", "fresh_generator", "load_stable_diffusion", "sd_scheduler",
           "unet2d_config"]
