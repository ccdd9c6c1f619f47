"""ART-V inference (issue 17 items 6-8): one frame at a time, any length, any number of prompts, frames
streamed as they are made.

:class:`ARTVPipeline` is a diffusers pipeline (:class:`~microcinema.pipelines.base.VideoDiffusionPipeline`) with
components ``unet`` (an :class:`~microcinema.systems.artv.model.ARTVModel`), ``vae``, ``text_encoder`` +
``tokenizer`` and ``scheduler`` (its ``alphas_cumprod`` is the schedule the model was trained on).

**One frame** ``i`` (paper section 3, appendix A): fresh noise, sampled by DPM++ 2S ancestral (the paper's
sampler, 50 steps) with the compositional guidance of eq. 8 (``e(all) + w_ref (e(all) - e(no ref)) +
w_anc (e(all) - e(no anchor)) + w_txt (e(all) - e(no text))``, 0.25 / 0.25 / 6.5, the branches in one batched
forward: :func:`~microcinema.systems.artv.conditioning.guided_eps_model`), conditioned on the previous two latents
``y(i-1), y(i-2)`` (frame 1 sees frame 0 twice, as in training) and the anchor latent, both noise-augmented at
the fixed level 200 (section 3.3; one draw per frame, shared by every step and branch).

**The first frame.** Image mode: the user's ``image`` (resized and centre-cropped to the size; the output's
``notes`` say so) or a text-to-image model's (``key_frame_model``: a
:class:`~microcinema.pipelines.key_frame.KeyFrameModel`, a diffusers folder / hub id, or ``"embedded"``) is
encoded and *is* frame 0. Text-only mode (no image, no key-frame model): frame 0 comes from the ART-V model
itself with the references and the anchor left blank (section 4.1, "Text-to-Video Generation"), guided by
the text alone.

**Long videos** (:mod:`~microcinema.systems.artv.segments`): ``prompt`` may be a list of prompts, of ``(prompt,
frames)`` pairs or a ``{frame: prompt}`` map; each segment continues from the last two frames of the one before,
in latent space (nothing is decoded and re-encoded at a join, which would shift colours). The anchor of later
segments: ``anchor="segment"`` (default: the paper's multi-prompt setting, appendix D, the previous segment's
last frame) or ``"first"`` (frame 0 throughout). ``keyframes={frame: image}`` pins frames (their latent is the
keyframe's; the frames leading to one are anchored on it); ``loop=True`` pins the last frame to the first.

**Memory flat in length.** :meth:`ARTVPipeline.stream` is a generator: between frames it holds the last two
latents, the anchor latents still to be used (frame 0, the current segment's anchor, given keyframes), the
current segment's text encoding and the empty prompt's, and yields each frame decoded on its own (or in chunks
of ``decode_chunk_size``) as ``"pil"``, ``"np"`` (float [0, 1]), ``"uint8"``, ``"pt"`` or ``"latent"``; nothing
grows with the number of frames but a per-frame integer plan. ``__call__`` is the stream gathered into one
:class:`~microcinema.pipelines.base.VideoPipelineOutput` (the same frames for the same generator).

Progress: one bar over frames, its description the segment (``set_progress_bar_config(disable=True)`` or
``progress=False`` silences it); ``callback_on_step_end(pipe, step, t, {"latents": ...})`` after every sampling
step of every frame (``pipe.frame_index`` and ``pipe.segment_index`` say which), returning replacement latents
as in diffusers.

Loading: ``save_pretrained`` / ``ARTVPipeline.from_pretrained(folder)`` and ``DiffusionPipeline.from_pretrained
(folder)`` (the class is registered in diffusers' namespace when this module is imported);
:meth:`ARTVPipeline.embedded` (the shipped tiny model, once trained: ``microcinema/embedded/weights/artv``);
:meth:`ARTVPipeline.from_stable_diffusion` (an untrained ART-V on an SD folder, to train or to measure cost).
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterator

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from microcinema.core.errors import MicroCinemaError, check, first_line
from microcinema.core.samplers import SAMPLERS, sample
from microcinema.pipelines.base import (VideoDiffusionPipeline, VideoPipelineOutput, check_count, check_output_type,
                                        fresh_generator, load_stable_diffusion, sd_scheduler)
from microcinema.pipelines.key_frame import KeyFrameModel, load_image, load_key_frame_model
from microcinema.pipelines.text_to_image import check_steps
from microcinema.systems.artv.conditioning import GUIDANCE_WEIGHTS, check_weight, guided_eps_model, make_conditions
from microcinema.systems.artv.model import ARTVModel, ARTVOutput
from microcinema.systems.artv.noise_augmentation import INFERENCE_LEVEL
from microcinema.systems.artv.segments import (ANCHOR_MODES, DEFAULT_FRAMES_PER_PROMPT, Schedule, make_schedule,
                                               parse_segments, resolve_keyframe_indices)

__all__ = ["ARTVPipeline", "STREAM_OUTPUT_TYPES", "EMBEDDED_SETTINGS", "check_weight"]

#: What :meth:`ARTVPipeline.stream` may yield per frame.
STREAM_OUTPUT_TYPES: tuple[str, ...] = ("pil", "np", "uint8", "pt", "latent")

#: Settings of the embedded family (64x64, MiniLM text, procedural domain): the text length it is trained with,
#: and the sampling chosen by measurement on a tuning set of prompt sequences (issue 17 item 6;
#: experiments/artv/choose_default.py): DDIM at 8 steps, text guidance 2.5, anchor guidance 4 and references at
#: noise level 0. The paper's DPM++ 2S ancestral / text 6.5 / level 200 overshoots the domain's sub-pixel motion
#: per frame (the object jumps) and drifts the colours; a stronger anchor term of eq. 8 than the paper's 0.25
#: keeps the object's shape (references keep 0.25).
EMBEDDED_SETTINGS: dict[str, Any] = {"text_max_length": 32, "decode_chunk_size": 16, "sampler": "ddim",
                                     "num_inference_steps": 8, "guidance_scale": 2.5, "anchor_guidance_scale": 4.0,
                                     "ref_noise_level": 0}


def _check_level(value: Any, num_train_timesteps: int) -> int:
    check(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and 0 <= value < num_train_timesteps,
          f"ref_noise_level must be an integer in [0, {num_train_timesteps}) (the paper's 200), got {value!r}")
    return int(value)


def _check_sampler(name: Any) -> str:
    check(name in SAMPLERS, f"unknown sampler {name!r}: allowed are {', '.join(SAMPLERS)}")
    return name


def _check_anchor(mode: Any) -> str:
    check(mode in ANCHOR_MODES, f"anchor must be one of {', '.join(ANCHOR_MODES)}, got {mode!r}")
    return mode


class _Caster:
    """The ART-V model called in its own dtype and device, its noise prediction returned in float32."""

    def __init__(self, model: ARTVModel) -> None:
        self.model = model
        p = next(model.parameters())  # diffusers' ModelMixin.device walks every module: once per frame, not per call
        self.device, self.dtype = p.device, p.dtype

    def __call__(self, y_t: torch.Tensor, t: torch.Tensor, **cond: Any) -> ARTVOutput:
        device, dtype = self.device, self.dtype
        cast = {k: (v.to(device, dtype) if v.is_floating_point() and k != "alphas_cumprod" else v.to(device))
                if torch.is_tensor(v) else v for k, v in cond.items()}
        out = self.model(y_t.to(device, dtype), t.to(device), **cast)
        return ARTVOutput(sample=out.sample.float().to(y_t.device), eps_dynamic=None,
                          mask=None if out.mask is None else out.mask.float().to(y_t.device))


class ARTVPipeline(VideoDiffusionPipeline):
    """Auto-regressive text(-and-image)-to-video with ART-V (see the module docstring).

    Settings (saved in ``model_index.json``; class defaults are the paper's): ``sampler`` (a key of
    :data:`~microcinema.core.samplers.SAMPLERS`, default ``"dpmpp_2s_ancestral"``), ``guidance_scale`` (text,
    6.5), ``ref_guidance_scale`` (0.25), ``anchor_guidance_scale`` (0.25), ``ref_noise_level`` (200),
    ``anchor`` (``"segment"``: appendix D; or ``"first"``), ``frames_per_prompt`` (16, appendix D), ``fps`` (8,
    the training rate), ``num_inference_steps`` (sampler steps per frame, 50: appendix A), ``text_max_length``
    (None: CLIP's 77, else 32), ``decode_chunk_size``.
    ``key_frame_model`` (not saved, not a component): the first frame's text-to-image source when no ``image``
    is given (None: the ART-V model itself, text-only mode).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    _optional_components = ["tokenizer", "scheduler"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: ARTVModel, vae: AutoencoderKL, text_encoder: Any, tokenizer: Any = None,
                 scheduler: Any = None, key_frame_model: Any = None, sampler: str = "dpmpp_2s_ancestral",
                 guidance_scale: float = GUIDANCE_WEIGHTS["text"], ref_guidance_scale: float = GUIDANCE_WEIGHTS["ref"],
                 anchor_guidance_scale: float = GUIDANCE_WEIGHTS["anchor"], ref_noise_level: int = INFERENCE_LEVEL,
                 anchor: str = "segment", frames_per_prompt: int = DEFAULT_FRAMES_PER_PROMPT, fps: float = 8.0,
                 num_inference_steps: int = 50, text_max_length: int | None = None,
                 decode_chunk_size: int = 16) -> None:
        super().__init__()
        check(isinstance(unet, ARTVModel), f"unet must be an ARTVModel (ARTVModel.from_unet(image_unet)), got "
              f"{type(unet).__name__}")
        text_max_length = self.register_components(
            text_max_length, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=scheduler if scheduler is not None else sd_scheduler())
        settings = dict(sampler=_check_sampler(sampler), guidance_scale=check_weight("guidance_scale", guidance_scale),
                        ref_guidance_scale=check_weight("ref_guidance_scale", ref_guidance_scale),
                        anchor_guidance_scale=check_weight("anchor_guidance_scale", anchor_guidance_scale),
                        ref_noise_level=_check_level(ref_noise_level, self._num_train_timesteps),
                        anchor=_check_anchor(anchor), frames_per_prompt=check_count("frames_per_prompt", frames_per_prompt),
                        fps=check_weight("fps", fps), num_inference_steps=check_steps(num_inference_steps),
                        text_max_length=text_max_length,
                        decode_chunk_size=check_count("decode_chunk_size", decode_chunk_size))
        check(settings["fps"] > 0, f"fps must be > 0, got {fps!r}")
        self.register_settings(**settings)
        self._key_frame_model = key_frame_model
        self.frame_index: int | None = None
        self.segment_index: int | None = None

    @property
    def _num_train_timesteps(self) -> int:
        return int(self.scheduler.config.get("num_train_timesteps", 1000)) if self.scheduler is not None else 1000

    # ------------------------------------------------------------------ building
    @classmethod
    def embedded(cls, key_frame_model: KeyFrameModel | str | None = None, **settings: Any) -> "ARTVPipeline":
        """The tiny ART-V of the embedded family (64x64, procedural domain, MiniLM text) shipped in
        ``microcinema/embedded/weights/artv`` (with the embedded VAE and :data:`EMBEDDED_SETTINGS`); a one-line
        error while it is not trained yet."""
        from microcinema.core.text_encoders import load_text_encoder
        from microcinema.embedded import WEIGHTS_DIR, embedded_path

        folder = WEIGHTS_DIR / "artv"
        check((folder / "config.json").is_file(),
              f"the embedded ART-V model is not trained yet ({folder} is missing): train it with `microcinema train "
              f"artv --config artv --output-dir runs/artv --export {folder}`, or pass --model FOLDER")
        unet = ARTVModel.from_pretrained(folder, torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32)
        return cls(unet, vae, load_text_encoder("minilm"), scheduler=sd_scheduler(), key_frame_model=key_frame_model,
                   **{**EMBEDDED_SETTINGS, **settings})

    @classmethod
    def from_stable_diffusion(cls, pretrained_model_name_or_path: str | os.PathLike, *, unet: ARTVModel | None = None,
                              torch_dtype: torch.dtype | None = None, model_options: dict[str, Any] | None = None,
                              **settings: Any) -> "ARTVPipeline":
        """ART-V on a Stable Diffusion checkpoint (a diffusers folder or hub id, e.g. SD 2.1): its VAE, CLIP text
        encoder, tokenizer and scheduler, and ``unet`` (a trained :class:`ARTVModel`) or, if None, the
        checkpoint's U-Net converted (:meth:`ARTVModel.from_unet` with ``model_options``: untrained new parts, at
        zero where the model docstring says). ``settings`` are the pipeline's."""
        sd = load_stable_diffusion(pretrained_model_name_or_path, torch_dtype)
        if unet is None:
            unet = ARTVModel.from_unet(sd.unet, **(model_options or {}))
        return cls(unet, sd.vae, sd.text_encoder, sd.tokenizer, scheduler=sd.scheduler, **settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "ARTVPipeline":
        """diffusers' ``from_pretrained`` (a folder written by :meth:`save_pretrained`, or a hub id), with one-line
        errors for what is not such a folder. ``key_frame_model=`` may be passed too."""
        source = str(pretrained_model_name_or_path)
        path = Path(source).expanduser()
        if path.is_dir():
            check((path / "model_index.json").is_file(),
                  f"{path} is not an ART-V pipeline folder (expected model_index.json, as save_pretrained writes)")
        else:
            check(not path.exists(), f"{path} is a file; expected an ART-V pipeline folder")
            check(source.count("/") == 1 and not source.startswith((".", "/", "~")),
                  f"model path not found: {source} (give a folder written by ARTVPipeline.save_pretrained)")
        try:
            pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError, TypeError, KeyError) as error:
            if isinstance(error, MicroCinemaError):
                raise
            first = first_line(error)
            raise MicroCinemaError(f"cannot load an ART-V pipeline from {source!r}: {first}") from None
        check(isinstance(pipe, cls), f"{source} holds a {type(pipe).__name__}, not an ART-V pipeline")
        return pipe

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """diffusers' ``save_pretrained`` (``model_index.json`` + one folder per component); returns the folder."""
        super().save_pretrained(save_directory, **kwargs)
        return Path(save_directory)

    # ------------------------------------------------------------------ parts
    @property
    def key_frame_model(self) -> KeyFrameModel | None:
        """The first frame's text-to-image source (None: text-only mode, the ART-V model itself)."""
        if isinstance(self._key_frame_model, (str, Path)):
            self._key_frame_model = load_key_frame_model(self._key_frame_model)
        return self._key_frame_model

    @key_frame_model.setter
    def key_frame_model(self, value: Any) -> None:
        self._key_frame_model = value

    def _image_tensor(self, image: Any, size: tuple[int, int], what: str) -> tuple[torch.Tensor, list[str]]:
        """A path, PIL image, uint8 array ``(H, W, 3)`` or tensor ``(3, H, W)`` in [-1, 1] as ``(3, H, W)`` in
        [-1, 1] at ``size`` (resized and centre-cropped), with notes of what was done."""
        if torch.is_tensor(image):
            t = image[0] if image.ndim == 4 and image.shape[0] == 1 else image
            check(t.ndim == 3 and t.shape[0] == 3 and t.is_floating_point(),
                  f"{what}: a tensor image must be (3, H, W) in [-1, 1], got shape {tuple(image.shape)}")
            if tuple(t.shape[1:]) == size:
                return t.float().cpu(), []
            image = Image.fromarray(((t.float().clamp(-1, 1).permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round()
                                    .astype(np.uint8))
        elif isinstance(image, np.ndarray):
            check(image.ndim == 3 and image.shape[2] in (3, 4) and image.dtype == np.uint8,
                  f"{what}: an array image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
            image = Image.fromarray(image)
        elif not isinstance(image, (str, os.PathLike, Image.Image)):
            raise MicroCinemaError(f"{what}: expected an image path, a PIL image, a uint8 array or a tensor, got "
                                   f"{type(image).__name__}")
        try:
            tensor, notes = load_image(image, size)
        except MicroCinemaError as error:
            raise MicroCinemaError(f"{what}: {error}") from None
        return tensor, [f"{what} was {n}" for n in notes]

    def _encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """(3, H, W) in [-1, 1] -> scaled latent (1, C, h, w), float32, on the execution device."""
        return self.encode_frames(pixels[None].to(self._execution_device), 1).to(self._execution_device)

    def _text(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        from microcinema.pipelines.text_to_image import unet_text_cond

        encoder = self.text_embedder  # the empty prompt too (encode_prompt refuses it)
        cond = unet_text_cond(encoder.encode([prompt]), mask_padding=encoder.mask_padding)
        device = self._execution_device
        mask = cond["encoder_attention_mask"]
        return cond["encoder_hidden_states"].float().to(device), None if mask is None else mask.to(device)

    # ------------------------------------------------------------------ one frame
    @torch.no_grad()
    def sample_frame(self, text: tuple[torch.Tensor, torch.Tensor | None],
                     null_text: tuple[torch.Tensor, torch.Tensor | None], refs: torch.Tensor | None,
                     anchor: torch.Tensor | None, *, shape: tuple[int, ...], num_inference_steps: int,
                     generator: torch.Generator, weights: tuple[float, float, float], ref_level: int,
                     sampler: str, noise: torch.Tensor | None = None,
                     mask_callback: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
        """One frame's latent ``(1, C, h, w)``: references ``(1, R, C, h, w)`` (newest first) or None, anchor
        ``(1, C, h, w)`` or None, text and empty-prompt encodings ``(states, mask)``, guidance ``weights``
        ``(ref, anchor, text)``. Draws from ``generator``: the initial noise (unless ``noise`` is given), the
        references' and anchor's augmentation noise, then the sampler's."""
        device = self._execution_device
        x_T = (self.prepare_latents(shape, generator, device=device) if noise is None
               else noise.to(device=device, dtype=torch.float32))
        states, mask = text
        cond = make_conditions(states, refs, anchor, text_mask=mask, ref_level=ref_level, generator=generator)
        w_ref, w_anchor, w_text = weights
        eps_model = guided_eps_model(_Caster(self.unet), cond, null_text, w_ref=w_ref, w_anchor=w_anchor,
                                     w_text=w_text, alphas_cumprod=self.scheduler.alphas_cumprod.to(device),
                                     mask_callback=mask_callback)
        callback = getattr(self, "_callback_on_step_end", None)
        names = getattr(self, "_callback_inputs", ["latents"])

        def on_step(i: int, t: torch.Tensor, latents: torch.Tensor) -> torch.Tensor | None:
            if callback is None:
                return None
            outputs = callback(self, i, t, {k: latents for k in names if k == "latents"}) or {}
            return outputs.pop("latents", None)

        self._num_timesteps = num_inference_steps
        return sample(eps_model, x_T, sampler=sampler, num_inference_steps=num_inference_steps, scheduler=self.scheduler,
                      generator=generator, progress=False, step_callback=on_step)

    # ------------------------------------------------------------------ the video
    def plan(self, prompt: Any, num_frames: int | None = None, *, frames_per_prompt: int | None = None,
             keyframes: dict | None = None, loop: bool = False, anchor: str | None = None,
             first_frame_given: bool = False) -> tuple[Schedule, dict[int, Any]]:
        """The video's per-frame plan (:func:`~microcinema.systems.artv.segments.make_schedule`) and its keyframes
        by frame index; all checks, no model work. ``first_frame_given``: frame 0 comes from an image."""
        segments = parse_segments(prompt, num_frames, self.frames_per_prompt if frames_per_prompt is None
                                  else frames_per_prompt)
        total = sum(s.num_frames for s in segments)
        keyed = resolve_keyframe_indices(keyframes, total)
        check(not (first_frame_given and 0 in keyed),
              "frame 0 is given twice: by image= and by keyframes[0]; give one of them")
        check(isinstance(loop, bool), f"loop must be True or False, got {loop!r}")
        pinned = set(keyed) | ({0} if first_frame_given else set())
        schedule = make_schedule(segments, sorted(pinned), anchor=_check_anchor(self.anchor if anchor is None else anchor),
                                 loop=loop)
        return schedule, keyed

    @torch.no_grad()
    def stream(self, prompt: str | list | dict, num_frames: int | None = None, image: Any = None, *,
               keyframes: dict | None = None, loop: bool = False, anchor: str | None = None,
               frames_per_prompt: int | None = None, negative_prompt: str | None = None,
               height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
               guidance_scale: float | None = None, ref_guidance_scale: float | None = None,
               anchor_guidance_scale: float | None = None, ref_noise_level: int | None = None,
               generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
               output_type: str = "pil", decode_chunk_size: int = 1, callback_on_step_end: Callable | None = None,
               callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
               mask_callback: Callable | None = None, progress: bool | None = None,
               notes: list[str] | None = None) -> Iterator[Any]:
        """Yield the video's frames in order as they are made (see the module docstring); every input is checked
        before the first frame is sampled. Per frame: ``"pil"`` a PIL image, ``"np"`` float ``(H, W, 3)`` in
        [0, 1] (diffusers' convention), ``"uint8"`` ``(H, W, 3)`` (this project's rounding), ``"pt"`` ``(3, H, W)``
        in [0, 1], ``"latent"`` ``(C, h, w)``. ``decode_chunk_size`` frames are decoded per VAE call (default 1:
        each frame as soon as it exists). ``notes`` (a list) receives what was done to the user's images and where
        frame 0 came from. ``mask_callback(t, m)``: masked diffusion's mask per evaluation (Fig. 4).
        Other arguments as :meth:`__call__`."""
        stream_type = output_type
        check(stream_type in STREAM_OUTPUT_TYPES,
              f"unknown output_type {output_type!r} for stream: allowed are {', '.join(STREAM_OUTPUT_TYPES)}")
        chunk = check_count("decode_chunk_size", decode_chunk_size)
        run = self._prepare(prompt, num_frames, image, keyframes=keyframes, loop=loop, anchor=anchor,
                            frames_per_prompt=frames_per_prompt, negative_prompt=negative_prompt, height=height,
                            width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                            ref_guidance_scale=ref_guidance_scale, anchor_guidance_scale=anchor_guidance_scale,
                            ref_noise_level=ref_noise_level, generator=generator, latents=latents,
                            callback_on_step_end=callback_on_step_end,
                            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, notes=notes)
        return self._stream(run, stream_type, chunk, callback_on_step_end, callback_on_step_end_tensor_inputs,
                            mask_callback, progress)

    def _prepare(self, prompt: Any, num_frames: int | None, image: Any, *, keyframes: dict | None, loop: bool,
                 anchor: str | None, frames_per_prompt: int | None, negative_prompt: str | None, height: int | None,
                 width: int | None, num_inference_steps: int, guidance_scale: float | None,
                 ref_guidance_scale: float | None, anchor_guidance_scale: float | None, ref_noise_level: int | None,
                 generator: torch.Generator | None, latents: torch.Tensor | None, callback_on_step_end: Callable | None,
                 callback_on_step_end_tensor_inputs: Any, notes: list[str] | None) -> dict[str, Any]:
        """Every check and the up-front work (keyframe images loaded and encoded, frame 0 from a key-frame
        model): a bad input fails here, before any frame."""
        steps = check_steps(self.num_inference_steps if num_inference_steps is None else num_inference_steps)
        weights = (check_weight("ref_guidance_scale", self.ref_guidance_scale if ref_guidance_scale is None
                                else ref_guidance_scale),
                   check_weight("anchor_guidance_scale", self.anchor_guidance_scale if anchor_guidance_scale is None
                                else anchor_guidance_scale),
                   check_weight("guidance_scale", self.guidance_scale if guidance_scale is None else guidance_scale))
        level = _check_level(self.ref_noise_level if ref_noise_level is None else ref_noise_level,
                             self._num_train_timesteps)
        check(negative_prompt is None or isinstance(negative_prompt, str),
              f"negative_prompt must be one string (the empty-text branch of guidance), got {negative_prompt!r}")
        check(not isinstance(image, (list, tuple)), "image must be one image (ART-V makes one video per call)")
        height, width = self.check_height_width(height, width)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        _check_sampler(self.sampler)
        schedule, keyed = self.plan(prompt, num_frames, frames_per_prompt=frames_per_prompt, keyframes=keyframes,
                                    loop=loop, anchor=anchor, first_frame_given=image is not None)
        key_model = self.key_frame_model if image is None and 0 not in keyed else None
        if key_model is not None:  # frame 0 will be given: pinned, and its own anchor
            schedule.pinned.add(0)
            schedule.anchor_of[0] = 0
        n = schedule.num_frames
        h, w = height // self.vae_scale_factor, width // self.vae_scale_factor
        c = self.unet.latent_channels
        if latents is not None:
            check(torch.is_tensor(latents) and tuple(latents.shape) == (1, c, n, h, w),
                  f"latents must be the initial noise of every frame, shape {(1, c, n, h, w)}, got "
                  f"{tuple(latents.shape) if torch.is_tensor(latents) else type(latents).__name__}")
        generator = fresh_generator(generator)
        notes = notes if notes is not None else []
        pinned: dict[int, torch.Tensor] = {}
        first_pixels = None
        for index in sorted(keyed):
            pixels, said = self._image_tensor(keyed[index], (height, width), f"keyframe at frame {index}")
            notes.extend(said)
            pinned[index] = self._encode_image(pixels)
            first_pixels = pixels[None] if index == 0 else first_pixels
        if image is not None:
            pixels, said = self._image_tensor(image, (height, width), "your image")
            notes.extend(said)
            notes.append("frame 0 is your image")
            pinned[0], first_pixels = self._encode_image(pixels), pixels[None]
        elif key_model is not None:
            size = height if height == width else (height, width)
            pixels = key_model([schedule.segments[0].prompt], num_inference_steps=steps, guidance_scale=None,
                               generator=generator, size=size)[0].float().cpu()
            notes.append(f"frame 0 from the key-frame model {type(key_model).__name__}")
            pinned[0], first_pixels = self._encode_image(pixels), pixels[None]
        elif 0 not in pinned:
            notes.append("frame 0 from the ART-V model itself (text-only mode: blank references, no anchor)")
        null = negative_prompt or ""
        return dict(schedule=schedule, pinned=pinned, steps=steps, weights=weights, level=level, shape=(1, c, h, w),
                    generator=generator, latents=latents, null=null, first_pixels=first_pixels, notes=notes,
                    size=(height, width))

    def _latents(self, run: dict[str, Any], mask_callback: Callable | None, bar: Any) -> Iterator[torch.Tensor]:
        """Frame latents ``(1, C, h, w)`` in order; only the last two, the anchors still to come and the current
        segment's text are held between frames."""
        schedule: Schedule = run["schedule"]
        pinned: dict[int, torch.Tensor] = run["pinned"]
        n = schedule.num_frames
        r = self.unet.config.num_references
        # the last frame at which each anchor source is needed: a kept latent is dropped after it
        last_use: dict[int, int] = {}
        for i, a in enumerate(schedule.anchor_of):
            if a is not None and i not in schedule.pinned:
                last_use[a] = i
        if schedule.loop_frame is not None:
            last_use[0] = max(last_use.get(0, 0), schedule.loop_frame)
        kept: dict[int, torch.Tensor] = {}
        recent: deque[torch.Tensor] = deque(maxlen=r)
        null_text = self._text(run["null"])
        text, text_segment = None, None
        self._state = {"recent": recent, "kept": kept, "pinned": pinned}  # read by tests (what is held)
        for i in range(n):
            s = schedule.segment_of[i]
            self.frame_index, self.segment_index = i, s
            if bar is not None and (i == 0 or s != schedule.segment_of[i - 1]):
                bar.set_description(f"segment {s + 1}/{len(schedule.segments)}")
            if i == schedule.loop_frame:
                latent = kept[0]
            elif i in pinned:
                latent = pinned.pop(i)
            else:
                if text_segment != s:  # the current segment's encoding only
                    text, text_segment = self._text(schedule.segments[s].prompt), s
                refs = None
                if recent:
                    refs = torch.stack([recent[-1 - k] if k < len(recent) else recent[0] for k in range(r)], dim=1)
                a = schedule.anchor_of[i]
                anchor_latent = None if a is None else (kept[a] if a in kept else pinned[a])
                noise = None if run["latents"] is None else run["latents"][:, :, i]
                latent = self.sample_frame(text, null_text, refs, anchor_latent, shape=run["shape"],
                                           num_inference_steps=run["steps"], generator=run["generator"],
                                           weights=run["weights"], ref_level=run["level"], sampler=self.sampler,
                                           noise=noise, mask_callback=mask_callback)
            recent.append(latent)
            if last_use.get(i, -1) > i:  # a later frame's anchor
                kept[i] = latent
            for f in [f for f in kept if last_use[f] <= i]:  # no later frame needs it
                del kept[f]
            if bar is not None:
                bar.update()
            yield latent
        self.frame_index = self.segment_index = None

    def _frames_of(self, latents: torch.Tensor, output_type: str) -> list[Any]:
        """``(N, C, h, w)`` latents as ``N`` frames of ``output_type`` (see :meth:`stream`)."""
        if output_type == "latent":
            return list(latents)
        pixels = self.decode_latents(latents.transpose(0, 1)[None], latents.shape[0])[0]  # (N, 3, H, W) in [-1, 1]
        if output_type == "uint8":
            return list(((pixels.permute(0, 2, 3, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8))
        unit = (pixels / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            return list(unit)
        array = unit.permute(0, 2, 3, 1).cpu().float().numpy()
        if output_type == "np":
            return list(array)
        return [Image.fromarray(a) for a in (array * 255).round().astype(np.uint8)]

    def _stream(self, run: dict[str, Any], output_type: str, chunk: int, callback: Callable | None,
                tensor_inputs: Any, mask_callback: Callable | None, progress: bool | None) -> Iterator[Any]:
        # a generator runs outside the caller's no_grad: it sets its own
        with torch.no_grad(), self._call_state(callback, tensor_inputs, progress, run["weights"][2]):
            with self.progress_bar(total=run["schedule"].num_frames) as bar:
                pending: list[torch.Tensor] = []
                for latent in self._latents(run, mask_callback, bar):
                    pending.append(latent)
                    if len(pending) == chunk:
                        yield from self._frames_of(torch.cat(pending), output_type)
                        pending = []
                if pending:
                    yield from self._frames_of(torch.cat(pending), output_type)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | list | dict, num_frames: int | None = None, image: Any = None, *,
                 keyframes: dict | None = None, loop: bool = False, anchor: str | None = None,
                 frames_per_prompt: int | None = None, negative_prompt: str | None = None,
                 height: int | None = None, width: int | None = None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, ref_guidance_scale: float | None = None,
                 anchor_guidance_scale: float | None = None, ref_noise_level: int | None = None,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, decode_chunk_size: int | None = None,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
                 mask_callback: Callable | None = None, progress: bool | None = None) -> VideoPipelineOutput | tuple:
        """Generate one video (all frames gathered; :meth:`stream` yields them one by one instead).

        Args:
            prompt: a prompt, a list of prompts, a list of ``(prompt, frames)`` pairs, or a ``{frame: prompt}``
                map (:mod:`~microcinema.systems.artv.segments`).
            num_frames: the video's length (default: ``frames_per_prompt`` per prompt; with a list of prompts,
                spread evenly over them).
            image: frame 0 (path, PIL image, uint8 array or (3, H, W) tensor in [-1, 1]), resized and
                centre-cropped to the size; None: the ``key_frame_model``'s image, or the ART-V model's own
                (text-only mode).
            keyframes: ``{frame: image}`` pinned frames (negative frames count from the end); ``loop``: the last
                frame returns to the first; ``anchor``: ``"segment"`` or ``"first"`` (default the pipeline's).
            negative_prompt: the "no text" branch of guidance (default the empty prompt).
            num_inference_steps: sampler steps per frame (default the pipeline's; the paper: 50); guidance
                weights and ``ref_noise_level``: per-call overrides of the settings.
            generator: one ``torch.Generator`` (the same seed gives the same video); ``latents``: the initial
                noise of every frame ``(1, C, F, h, w)``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"`` (see
                :class:`~microcinema.pipelines.base.VideoPipelineOutput`); ``decode_chunk_size``: frames per VAE
                call (default the pipeline's).

        Returns a :class:`~microcinema.pipelines.base.VideoPipelineOutput` (``frames``, ``key_frames``: frame 0
        ``(1, 3, H, W)`` in [-1, 1], ``fps``, ``notes``, ``timings``) or ``(frames,)``.
        """
        check_output_type(output_type)
        chunk = check_count("decode_chunk_size", self.decode_chunk_size if decode_chunk_size is None else decode_chunk_size)
        clock = time.perf_counter()
        notes: list[str] = []
        run = self._prepare(prompt, num_frames, image, keyframes=keyframes, loop=loop, anchor=anchor,
                            frames_per_prompt=frames_per_prompt, negative_prompt=negative_prompt, height=height,
                            width=width, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                            ref_guidance_scale=ref_guidance_scale, anchor_guidance_scale=anchor_guidance_scale,
                            ref_noise_level=ref_noise_level, generator=generator, latents=latents,
                            callback_on_step_end=callback_on_step_end,
                            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs, notes=notes)
        video = torch.stack(list(self._stream(run, "latent", 1, callback_on_step_end,
                                              callback_on_step_end_tensor_inputs, mask_callback, progress)), dim=1)[None]
        timings = {"frames": time.perf_counter() - clock}
        clock = time.perf_counter()
        frames = self.postprocess(video, output_type, chunk)
        key_frames = run["first_pixels"]
        if key_frames is None:
            key_frames = self.decode_latents(video[:, :, :1], 1)[:, 0]
        timings["decode"] = time.perf_counter() - clock
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return VideoPipelineOutput(frames=frames, key_frames=key_frames, fps=self.fps, notes=notes, timings=timings)

    # ------------------------------------------------------------------ the long-video benchmark
    def make_video_fn(self, *, num_inference_steps: int | None = None, **kwargs: Any) -> Callable[[Any, int], np.ndarray]:
        """``make_video(segments, seed) -> uint8 (F, H, W, 3)`` for :func:`microcinema.eval.longvideo.run_longvideo`:
        the segments' captions and frame counts as the prompt list, ``torch.Generator().manual_seed(seed)``, frames
        at the segments' ``size`` unless ``height``/``width`` are given."""

        def make_video(segments: Any, seed: int) -> np.ndarray:
            prompts = [(s.caption, s.num_frames) for s in segments]
            size = {"height": segments[0].size, "width": segments[0].size}
            frames = self.stream(prompts, num_inference_steps=num_inference_steps, output_type="uint8",
                                 generator=torch.Generator().manual_seed(int(seed)), progress=False,
                                 **{**size, **kwargs})
            return np.stack(list(frames))

        return make_video


# Registered under diffusers' namespace so ``DiffusionPipeline.from_pretrained(folder)`` finds the class (see
# microcinema/systems/microcinema/pipeline.py for why this is preferred to a remote-code shim).
if getattr(diffusers, ARTVPipeline.__name__, None) is None:
    setattr(diffusers, ARTVPipeline.__name__, ARTVPipeline)
