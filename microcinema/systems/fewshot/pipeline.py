"""Generate with a few-shot adapter: text -> video with the inflated base model (recurrent few-shot paper, section 3).

:class:`FewShotPipeline` is a diffusers pipeline on :class:`~microcinema.pipelines.base.VideoDiffusionPipeline`
(diffusers' argument names: ``prompt``, ``negative_prompt``, ``height``, ``width``, ``num_frames``,
``num_inference_steps``, ``guidance_scale``, ``generator``, ``latents``, ``output_type``,
``callback_on_step_end``). Components: ``unet`` (a :class:`~microcinema.systems.fewshot.inflation.
FewShotVideoUNet`), ``vae``, ``text_encoder`` + ``tokenizer``, ``scheduler``.

* :meth:`FewShotPipeline.from_adapter` loads an adapter file onto its base model (the base named in the adapter,
  or the one given; an adapter made for another base, or used at another size, is a one-line error);
* :meth:`FewShotPipeline.from_base` is the **untuned base**: the base inflated with fresh adapter parameters
  (sparse-causal or recurrent attention at their initialisation, temporal attention zero-initialised), i.e.
  Tune-A-Video's starting point. For one frame it is the image model; for more frames it is not (every frame
  attends to frame 1 and the previous frame, or the memory, instead of itself) but nothing about motion has
  been learnt. :meth:`FewShotPipeline.untuned` switches a tuned pipeline to it for a side-by-side with the same
  seed (the CLI's ``--compare``).

Sampling: the initial latents are the adapter's structured noise prior (section 3.3:
:func:`~microcinema.systems.fewshot.structured_noise.structured_noise`, unit variance per frame), then the
shared k-diffusion loop with classifier-free guidance. Defaults are the paper's (section 4.1, Tune-A-Video's
settings): DDIM, 50 steps, guidance 12.5.
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from diffusers import AutoencoderKL

from microcinema.core.errors import check
from microcinema.core.guidance import cfg_eps_model
from microcinema.core.samplers import SAMPLERS, SCHEDULER_LOOP
from microcinema.pipelines.base import (SD_SCHEDULER_CONFIG, VideoDiffusionPipeline, VideoPipelineOutput,
                                        check_count, check_negative_prompt, check_output_type, fresh_generator)
from microcinema.pipelines.text_to_image import check_prompts, check_steps, cond_eps_model
from microcinema.systems.fewshot.adapter import AdapterMetadata, check_adapter_fits, load_adapter
from microcinema.systems.fewshot.inflation import FewShotVideoUNet, inflate_unet
from microcinema.systems.fewshot.structured_noise import DEFAULT_ALPHA, NOISE_KINDS, structured_noise

__all__ = ["FewShotPipeline", "VideoPipelineOutput"]


def _ddim(scheduler_config: dict[str, Any]) -> Any:
    from diffusers import DDIMScheduler

    keep = {k: v for k, v in scheduler_config.items() if k in DDIMScheduler.__init__.__code__.co_varnames}
    return DDIMScheduler(**{**SD_SCHEDULER_CONFIG, **keep, "clip_sample": False, "set_alpha_to_one": False,
                            "steps_offset": 1})


class FewShotPipeline(VideoDiffusionPipeline):
    """Text to video with an inflated text-to-image model and a few-shot adapter (see the module docstring).

    Settings (saved in the config): ``sampler`` (default ``"ddim"``), ``guidance_scale`` (12.5), ``num_frames`` and
    ``fps`` (the adapter's), ``noise`` / ``noise_alpha`` (the adapter's structured prior), ``text_max_length``,
    ``decode_chunk_size``, ``base`` / ``base_fingerprint`` (which base this is).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["tokenizer", "scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: FewShotVideoUNet, vae: AutoencoderKL, text_encoder: Any, tokenizer: Any = None,
                 scheduler: Any = None, sampler: str = "ddim", guidance_scale: float = 12.5, num_frames: int = 8,
                 fps: float = 2.0, noise: str = "independent", noise_alpha: float = DEFAULT_ALPHA,
                 text_max_length: int | None = None, decode_chunk_size: int = 16, base: str = "",
                 base_fingerprint: str = "") -> None:
        super().__init__()
        check(isinstance(unet, FewShotVideoUNet),
              f"unet must be an inflated FewShotVideoUNet (inflate_unet), got {type(unet).__name__}")
        check(sampler in SAMPLERS or sampler == SCHEDULER_LOOP,
              f"unknown sampler {sampler!r}; allowed: {', '.join([*SAMPLERS, SCHEDULER_LOOP])}")
        check(isinstance(guidance_scale, (int, float)) and guidance_scale >= 0,
              f"guidance_scale must be >= 0 (1 = no guidance), got {guidance_scale!r}")
        check(noise in NOISE_KINDS, f"unknown noise prior {noise!r}; allowed: {', '.join(NOISE_KINDS)}")
        text_max_length = self.register_components(
            text_max_length, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=scheduler if scheduler is not None else _ddim({}))
        settings = dict(sampler=sampler, guidance_scale=guidance_scale, num_frames=check_count("num_frames", num_frames),
                        fps=float(fps), noise=noise, noise_alpha=float(noise_alpha), text_max_length=text_max_length,
                        decode_chunk_size=check_count("decode_chunk_size", decode_chunk_size), base=base,
                        base_fingerprint=base_fingerprint)
        self.register_settings(**settings)
        self.adapter_metadata: AdapterMetadata | None = None
        self._fresh_state = {k: v.clone() for k, v in unet.trainable_state_dict().items()}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_base(cls, base: Any = "embedded", attention: str = "recurrent", *, memory_nonlinearity: str = "tanh",
                  **settings: Any) -> "FewShotPipeline":
        """The untuned base (see the module docstring): ``base`` is ``"embedded"``, a base folder, or a loaded
        :class:`~microcinema.systems.fewshot.base.FewShotBase`. ``settings``: the pipeline's."""
        from microcinema.systems.fewshot.base import FewShotBase, load_base

        loaded = base if isinstance(base, FewShotBase) else load_base(base)
        unet = inflate_unet(loaded.unet, attention, memory_nonlinearity=memory_nonlinearity)
        return cls(unet, loaded.vae, loaded.text_encoder, scheduler=_ddim(loaded.scheduler_config),
                   base=loaded.name, base_fingerprint=loaded.fingerprint, **settings)

    @classmethod
    def from_adapter(cls, adapter: str | os.PathLike, base: Any = None, **settings: Any) -> "FewShotPipeline":
        """The adapter file ``adapter`` on its base: the one its metadata names (``"embedded"`` or a folder), or
        ``base`` (a name, folder or loaded base), refused with a one-line error if it is not the one the adapter
        was tuned on. Frames, fps and noise prior default to the adapter's; ``settings`` override them."""
        from microcinema.systems.fewshot.adapter import read_adapter_metadata

        metadata = read_adapter_metadata(adapter)
        defaults = dict(num_frames=metadata.num_frames, fps=metadata.fps, noise=metadata.noise,
                        noise_alpha=metadata.noise_alpha)
        pipe = cls.from_base(metadata.base if base is None else base, metadata.attention,
                             memory_nonlinearity=metadata.memory_nonlinearity, **{**defaults, **settings})
        pipe.load_adapter(adapter)
        return pipe

    def load_adapter(self, adapter: str | os.PathLike) -> AdapterMetadata:
        """Load an adapter file's parameters into this pipeline's U-Net (checked: same base, same attention)."""
        state, metadata = load_adapter(adapter)
        check_adapter_fits(metadata, self.base_fingerprint, self.base, source=f"adapter {adapter}")
        check(metadata.attention == self.unet.attention,
              f"adapter {adapter} was tuned with {metadata.attention} attention, this pipeline's U-Net has "
              f"{self.unet.attention} attention; build it with FewShotPipeline.from_adapter")
        self.unet.load_trainable_state_dict(state)
        self.adapter_metadata = metadata
        return metadata

    @contextmanager
    def adapter_state(self, state: dict[str, torch.Tensor]) -> Iterator["FewShotPipeline"]:
        """Within the block the U-Net has the adapter parameters ``state`` (e.g. a tuning run's current weights);
        its own come back after."""
        own = {k: v.clone() for k, v in self.unet.trainable_state_dict().items()}
        self.unet.load_trainable_state_dict(state)
        try:
            yield self
        finally:
            self.unet.load_trainable_state_dict(own)

    def untuned(self) -> AbstractContextManager["FewShotPipeline"]:
        """Within the block the U-Net has its fresh (untuned) adapter parameters; the adapter's come back after."""
        return self.adapter_state(self._fresh_state)

    # ------------------------------------------------------------------ the call
    @property
    def tuned_size(self) -> tuple[int, int] | None:
        """(height, width) the loaded adapter was tuned at (None without an adapter)."""
        m = self.adapter_metadata
        return None if m is None else (m.height, m.width)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int | None = None,
                 num_inference_steps: int = 50, guidance_scale: float | None = None, num_videos_per_prompt: int = 1,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
                 decode_chunk_size: int | None = None, progress: bool | None = None
                 ) -> VideoPipelineOutput | tuple:
        """Generate ``num_videos_per_prompt`` videos of ``num_frames`` frames (default the adapter's) per prompt.

        ``height``/``width``: default the adapter's size (another size than the adapter was tuned at is an error),
        else the base's. ``latents``: the initial noise ``(B * n, C, F, h, w)`` (default the structured prior's,
        drawn by ``generator``). Returns a :class:`~microcinema.pipelines.base.VideoPipelineOutput` (``fps``: the
        adapter's), or ``(frames,)`` when ``return_dict=False``.
        """
        prompts = check_prompts(prompt)
        steps = check_steps(num_inference_steps)
        frames = check_count("num_frames", self.num_frames if num_frames is None else num_frames)
        per_prompt = check_count("num_videos_per_prompt", num_videos_per_prompt)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check(isinstance(scale, (int, float)) and scale >= 0, f"guidance_scale must be >= 0 (1 = no guidance), got {scale!r}")
        check_output_type(output_type)
        tuned = self.tuned_size
        if tuned is not None:
            height, width = tuned[0] if height is None else height, tuned[1] if width is None else width
            check_adapter_fits(self.adapter_metadata, self.base_fingerprint, self.base, height=height, width=width)
        height, width = self.check_height_width(height, width)
        negatives = check_negative_prompt(negative_prompt, len(prompts))
        chunk = check_count("decode_chunk_size", self.decode_chunk_size if decode_chunk_size is None
                            else decode_chunk_size)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        generator = fresh_generator(generator)
        device = self._execution_device
        with self._call_state(callback_on_step_end, callback_on_step_end_tensor_inputs, progress, scale):
            cond, uncond = self.encode_prompt(prompts, device, per_prompt, True, negatives)
            shape = (len(prompts) * per_prompt, self.unet.unet.config.in_channels, frames,
                     height // self.vae_scale_factor, width // self.vae_scale_factor)
            if latents is None:
                noise = structured_noise(self.noise, shape, generator, alpha=self.noise_alpha, device=device)
            else:
                noise = self.prepare_latents(shape, generator, latents, device=device)
            eps_model = cfg_eps_model(cond_eps_model(self.unet, self.prediction_type, self.scheduler), cond, uncond,
                                      scale)
            video = self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator,
                                 sampler=self.sampler, stage="video")
            out = self.postprocess(video, output_type, chunk)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (out,)
        return VideoPipelineOutput(frames=out, fps=self.fps)


def load_fewshot_pipeline(adapter: str | os.PathLike | None = None, base: Any = None,
                          attention: str = "recurrent", **settings: Any) -> FewShotPipeline:
    """An adapter on its base, or (``adapter=None``) the untuned ``base`` with ``attention``."""
    if adapter is not None:
        return FewShotPipeline.from_adapter(Path(adapter), base=base, **settings)
    return FewShotPipeline.from_base("embedded" if base is None else base, attention, **settings)
