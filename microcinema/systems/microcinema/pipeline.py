"""MicroCinema end to end: text -> key frame -> image&text-to-video -> x4 temporal interpolation.

A diffusers pipeline (:class:`~microcinema.pipelines.base.VideoDiffusionPipeline`):

1. **Stage one** (section 3.1): the key frame from the registered ``key_frame_unet`` (a
   ``UNet2DConditionModel`` sharing the VAE, text encoder and scheduler: at SD scale, SD 2.1's own U-Net), any
   other text-to-image model (``key_frame_model``, :mod:`microcinema.pipelines.key_frame`), or the user's
   ``image``, resized and centre-cropped to (height, width).
2. **Stage two, base model**: a :class:`~microcinema.models.unet3d.VideoUNet` with AppearNet generates
   ``num_frames`` frames at 2 fps around the key frame (its centre frame) from text and image. Sampling
   starts from the Appearance Noise Prior ``N((lambda + gamma) z_c, I)`` (section 3.3, appendix B) with
   classifier-free guidance on the text (the image condition is kept in both branches).
3. **Temporal interpolation** (x4, section 3.1): for each adjacent pair of base frames, the interpolation
   model generates 5 frames at 8 fps conditioned on the latents interpolated between the pair; the three
   middle ones are inserted between the pair: 9 frames -> 33 (:mod:`microcinema.systems.microcinema.interpolation`).

The class defaults are the paper's (EulerEDM sampler, text guidance 7.5, lambda = 0.03, gamma = 0.02, Table 7),
with one documented departure: the key frame is kept exactly as the centre frame during stage two
(``pin_key_frame=True``, the replacement method, :mod:`microcinema.core.replacement`; the paper lets the model
redraw it). Two more tricks beyond the paper are off by default and switched on by the embedded family's preset
(:mod:`microcinema.embedded.presets`): ``interp_anchor_means`` keeps each in-between frame's palette at the
mean of its interpolated condition (:func:`microcinema.core.replacement.mean_anchor_eps_model`), and
``refine_strength > 0`` runs the motion-compensated key-frame refinement of the base, then the in-between frames
(:mod:`microcinema.systems.microcinema.keyframe_refine`): each restarts from the key frame warped to where the
first pass moved it and the last ``refine_strength`` of the schedule is re-run by the same model.

The networks' ``prediction_type`` (epsilon or v) and ``alphas_cumprod`` come from the registered scheduler; the
``sampler`` setting picks a k-diffusion sampler of :mod:`microcinema.core.samplers` or ``"scheduler"``, the
scheduler's own loop (with which the pipeline reproduces ``StableDiffusionPipeline`` frame by frame when the
temporal layers and AppearNet are at their zero initialisation, the prior and the tricks off).

Saving and loading: ``save_pretrained`` writes diffusers' ``model_index.json`` (components and settings);
``DiffusionPipeline.from_pretrained(folder)`` returns a MicroCinemaPipeline once ``microcinema``'s pipeline is
imported (see the end of this module). Folders saved by the earlier, non-diffusers version (``microcinema.json``
+ ``video/``) do not load; re-save them.
"""

from __future__ import annotations

import copy
import functools
import inspect
import os
import time
from collections import deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import diffusers
import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from einops import rearrange

from microcinema.core.errors import MicroCinemaError, check
from microcinema.core.guidance import cfg_eps_model
from microcinema.core.replacement import centre_frame_mask, mean_anchor_eps_model, replacement_eps_model
from microcinema.core.samplers import SAMPLERS, SCHEDULER_LOOP
from microcinema.models.unet3d import VideoUNet
from microcinema.pipelines.base import (VideoDiffusionPipeline, VideoPipelineOutput, check_count, check_negative_prompt,
                                        check_output_type, fresh_generator, load_stable_diffusion,
                                        sd_scheduler)
from microcinema.pipelines.key_frame import KeyFrameModel, load_image, load_key_frame_model
from microcinema.pipelines.text_to_image import check_prompts, check_steps, cond_eps_model, unet_text_cond
from microcinema.systems.microcinema.interpolation import INTERPOLATION_FACTOR, clip_starts, interpolation_condition, join_clips
from microcinema.systems.microcinema.keyframe_refine import DEFAULT_MIN_SCORE, refine_init
from microcinema.systems.microcinema.noise_prior import DEFAULT_GAMMA, DEFAULT_LAMBDA, appearance_init_mean

__all__ = ["INTERPOLATION_FACTOR", "MicroCinemaPipeline", "VideoPipelineOutput"]


def _at_least_one_step(steps: int, strength: float) -> float:
    """``strength`` as a whole number of the ``steps`` steps, at least one (:func:`~microcinema.core.samplers.sample`
    runs ``int(steps * strength)`` of them)."""
    return max(1, int(steps * strength + 1e-9)) / steps


def _first(*values: Any) -> Any:
    """The first of ``values`` that is not None (a call's override, then the pipeline's setting, then a default)."""
    return next(v for v in values if v is not None)


def _refine_steps(steps: int, strength: float) -> int:
    """How many network calls a refinement pass of ``strength`` makes in a ``steps``-step schedule (0: off)."""
    return round(steps * _at_least_one_step(steps, strength)) if strength > 0 else 0


def _check_strength(value: Any) -> float:
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1,
          f"refine_strength must be in [0, 1] (0: off), got {value!r}")
    return float(value)


def _check_sampler(name: str, what: str = "sampler") -> str:
    check(name in SAMPLERS or name == SCHEDULER_LOOP,
          f"unknown {what} {name!r}: allowed are {', '.join([*SAMPLERS, SCHEDULER_LOOP])}")
    return name


def _takes(function: Callable, name: str) -> bool:
    """Whether ``function`` names the keyword argument ``name``."""
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == name for p in parameters)


#: Most bytes of AppearNet features :func:`_reused_appearance_features` keeps (beyond it they are recomputed).
APPEARANCE_REUSE_BYTES = 256 * 2**20


def _same(a: Any, b: Any) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and a.dtype == b.dtype \
            and a.device == b.device and (a is b or torch.equal(a, b))
    return a == b


def _nbytes(output: Any) -> int:
    tensors = [*output.skip_features, output.mid_feature]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@contextmanager
def _reused_appearance_features(unet: Any, keep: int) -> Iterator[None]:
    """Within the block, ``unet``'s AppearNet returns the features it computed for the same inputs (condition,
    timestep, text, mask, class labels: compared exactly) in one of its last ``keep`` calls instead of computing
    them again, so the outputs are identical. The refinement passes re-run the last timesteps of the first pass
    with the same conditions (AppearNet's inputs), so their AppearNet work is all repeated. At most
    :data:`APPEARANCE_REUSE_BYTES` of features are kept. No-op with ``keep < 1``, without AppearNet, or with
    gradients enabled."""
    appearnet = getattr(unet, "appearnet", None)
    if appearnet is None or keep < 1 or torch.is_grad_enabled():
        yield
        return
    compute = appearnet.forward
    memory: deque = deque(maxlen=keep)

    def forward(condition, timestep, encoder_hidden_states, encoder_attention_mask=None, class_labels=None,
                cross_attention_kwargs=None):
        inputs = (condition, timestep, encoder_hidden_states, encoder_attention_mask, class_labels)
        if cross_attention_kwargs is None:
            for saved, features in memory:
                if all(_same(a, b) for a, b in zip(saved, inputs)):
                    return features
        features = compute(condition, timestep, encoder_hidden_states, encoder_attention_mask, class_labels,
                           cross_attention_kwargs)
        if cross_attention_kwargs is None and _nbytes(features) * keep <= APPEARANCE_REUSE_BYTES:
            memory.append((inputs, features))
        return features

    appearnet.forward = forward
    try:
        yield
    finally:
        del appearnet.forward


class MicroCinemaPipeline(VideoDiffusionPipeline):
    """Text (and optionally an image) to video with MicroCinema's two stages and x4 interpolation.

    Components: ``unet`` (the base :class:`~microcinema.models.unet3d.VideoUNet`), ``vae``, ``text_encoder`` +
    ``tokenizer`` (transformers: ``CLIPTextModel``/``CLIPTokenizer`` for SD checkpoints, MiniLM's ``BertModel``
    for the embedded family; a :class:`~microcinema.core.text_encoders.TextEncoder` is also accepted and
    unwrapped), ``scheduler`` (default: SD's DDIM; ``alphas_cumprod`` and ``prediction_type`` are read from it),
    optional ``interp_unet`` (the interpolation VideoUNet) and ``key_frame_unet`` (stage one's
    ``UNet2DConditionModel``). ``key_frame_model`` (not saved): another stage one, a
    :class:`~microcinema.pipelines.key_frame.KeyFrameModel` or a path / hub id (``"embedded"``: the embedded
    procedural-domain text-to-image model); it is not a component, so ``.to()`` does not move it (it runs where
    it was loaded or put). Without either, a folder's ``t2i/`` beside ``model_index.json`` is used, or else
    there is no stage one and a call needs ``image=``.

    Settings (saved in ``model_index.json``): ``sampler`` (a key of :data:`~microcinema.core.samplers.SAMPLERS` or
    ``"scheduler"``), ``guidance_scale``, ``key_frame_sampler`` (None: ``sampler``), ``key_frame_guidance_scale``,
    ``base_fps``, ``noise_prior_lambda``/``gamma`` (base) and ``interp_noise_prior_lambda``/``gamma`` (the
    interpolation model's own, not changed by call overrides), ``min_num_frames``/``max_num_frames``,
    ``pin_key_frame``, ``interp_anchor_means``, ``refine_strength``, ``text_max_length`` (None: CLIP's 77, else
    32), ``decode_chunk_size`` (frames per VAE call), ``num_inference_steps`` (the base model's steps when a
    call does not say), ``key_frame_num_inference_steps`` and ``interp_num_inference_steps`` (stage one's and the
    interpolation's; None: the base model's, as diffusers' two-stage pipelines keep ``prior_num_inference_steps``
    apart from ``num_inference_steps``), ``interp_sampler`` (None: ``sampler``).
    """

    model_cpu_offload_seq = "text_encoder->key_frame_unet->unet->interp_unet->vae"
    _optional_components = ["tokenizer", "scheduler", "interp_unet", "key_frame_unet"]
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: VideoUNet, vae: AutoencoderKL, text_encoder: Any, tokenizer: Any = None,
                 scheduler: Any = None, interp_unet: VideoUNet | None = None,
                 key_frame_unet: UNet2DConditionModel | None = None, key_frame_model: Any = None,
                 sampler: str = "edm_euler", guidance_scale: float = 7.5, key_frame_sampler: str | None = None,
                 key_frame_guidance_scale: float = 7.5, base_fps: float = 2.0,
                 noise_prior_lambda: float = DEFAULT_LAMBDA, noise_prior_gamma: float = DEFAULT_GAMMA,
                 interp_noise_prior_lambda: float = DEFAULT_LAMBDA, interp_noise_prior_gamma: float = DEFAULT_GAMMA,
                 min_num_frames: int = 3, max_num_frames: int = 17, pin_key_frame: bool = True,
                 interp_anchor_means: bool = False, refine_strength: float = 0.0, text_max_length: int | None = None,
                 decode_chunk_size: int = 16, num_inference_steps: int = 25,
                 key_frame_num_inference_steps: int | None = None,
                 interp_sampler: str | None = None, interp_num_inference_steps: int | None = None) -> None:
        super().__init__()
        scheduler = scheduler if scheduler is not None else sd_scheduler()
        text_max_length = self.register_components(
            text_max_length, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
            interp_unet=interp_unet, key_frame_unet=key_frame_unet)
        _check_sampler(sampler)
        if key_frame_sampler is not None:
            _check_sampler(key_frame_sampler, "key_frame_sampler")
        if interp_sampler is not None:
            _check_sampler(interp_sampler, "interp_sampler")
        for name, value in (("num_inference_steps", num_inference_steps),
                            ("key_frame_num_inference_steps", key_frame_num_inference_steps),
                            ("interp_num_inference_steps", interp_num_inference_steps)):
            if value is not None:
                check_steps(value, name)
        for name, value in (("guidance_scale", guidance_scale), ("key_frame_guidance_scale", key_frame_guidance_scale)):
            check(isinstance(value, (int, float)) and value >= 0, f"{name} must be >= 0 (1 = no guidance), got {value!r}")
        check(isinstance(min_num_frames, int) and isinstance(max_num_frames, int) and 1 <= min_num_frames <= max_num_frames,
              f"min_num_frames and max_num_frames must be integers with 1 <= min <= max, got {min_num_frames!r}, "
              f"{max_num_frames!r}")
        check_count("decode_chunk_size", decode_chunk_size)
        settings = dict(sampler=sampler, guidance_scale=guidance_scale, key_frame_sampler=key_frame_sampler,
                        key_frame_guidance_scale=key_frame_guidance_scale, base_fps=base_fps,
                        noise_prior_lambda=noise_prior_lambda, noise_prior_gamma=noise_prior_gamma,
                        interp_noise_prior_lambda=interp_noise_prior_lambda,
                        interp_noise_prior_gamma=interp_noise_prior_gamma, min_num_frames=min_num_frames,
                        max_num_frames=max_num_frames, pin_key_frame=bool(pin_key_frame),
                        interp_anchor_means=bool(interp_anchor_means), refine_strength=_check_strength(refine_strength),
                        text_max_length=text_max_length, decode_chunk_size=int(decode_chunk_size),
                        num_inference_steps=int(num_inference_steps),
                        key_frame_num_inference_steps=key_frame_num_inference_steps, interp_sampler=interp_sampler,
                        interp_num_inference_steps=interp_num_inference_steps)
        self.register_settings(**settings)
        self._key_frame_model = key_frame_model

    # ------------------------------------------------------------------ building
    @classmethod
    def embedded(cls, key_frame_model: KeyFrameModel | str | None = None) -> "MicroCinemaPipeline":
        """The tiny model family shipped in the package (64x64, the procedural domain, MiniLM text), offline,
        with its saved preset (:data:`microcinema.embedded.presets.MICROCINEMA`); stage one is the embedded
        text-to-image model unless ``key_frame_model`` says otherwise."""
        from microcinema.core.text_encoders import load_text_encoder
        from microcinema.embedded import embedded_path
        from microcinema.embedded.presets import MICROCINEMA

        load = lambda name: VideoUNet.from_pretrained(embedded_path(name), torch_dtype=torch.float32)  # noqa: E731
        interp = load("interp") if (embedded_path("video").parent / "interp" / "config.json").is_file() else None
        return cls(load("video"), AutoencoderKL.from_pretrained(embedded_path("vae"), torch_dtype=torch.float32),
                   load_text_encoder("minilm"), scheduler=sd_scheduler(), interp_unet=interp,
                   key_frame_unet=UNet2DConditionModel.from_pretrained(embedded_path("t2i"), torch_dtype=torch.float32),
                   key_frame_model=key_frame_model, **MICROCINEMA)

    @classmethod
    def from_stable_diffusion(cls, pretrained_model_name_or_path: str | os.PathLike, *, unet: VideoUNet | None = None,
                              interp_unet: VideoUNet | None = None, torch_dtype: torch.dtype | None = None,
                              **settings: Any) -> "MicroCinemaPipeline":
        """MicroCinema on a Stable Diffusion checkpoint (a diffusers folder or hub id, e.g. SD 2.1): its VAE, CLIP
        text encoder, tokenizer and scheduler (``prediction_type`` included) are shared by both stages, its U-Net
        is stage one (``key_frame_unet``, section 3.1), and the video U-Net is ``unet`` (e.g. trained with
        ``microcinema train video`` from that checkpoint) or, if None, the checkpoint's U-Net freshly inflated
        (temporal layers and AppearNet injections zero-initialised: frame by frame it is SD, section 3.1).
        ``settings`` are the pipeline's (``sampler``, ``guidance_scale``, ...)."""
        sd = load_stable_diffusion(pretrained_model_name_or_path, torch_dtype)
        if unet is None:  # a separate copy: stage one keeps SD's U-Net as it is
            unet = VideoUNet.from_pretrained_2d(copy.deepcopy(sd.unet))
        return cls(unet, sd.vae, sd.text_encoder, sd.tokenizer, scheduler=sd.scheduler, interp_unet=interp_unet,
                   key_frame_unet=sd.unet, **settings)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "MicroCinemaPipeline":
        """diffusers' ``from_pretrained`` (a folder written by :meth:`save_pretrained`, or a hub id), with one-line
        errors for what is not such a folder. ``key_frame_model=`` (see the class) may be passed too."""
        source = str(pretrained_model_name_or_path)
        path = Path(source).expanduser()
        if path.is_dir():
            check((path / "model_index.json").is_file() or not (path / "microcinema.json").is_file(),
                  f"{path} was saved by an earlier microcinema (microcinema.json + video/), which this version does "
                  f"not load: rebuild the pipeline from its models and save_pretrained it again")
            check((path / "model_index.json").is_file(),
                  f"{path} is not a MicroCinema pipeline folder (expected model_index.json, as save_pretrained writes)")
        else:
            check(not path.exists(), f"{path} is a file; expected a MicroCinema pipeline folder")
            check(source.count("/") == 1 and not source.startswith((".", "/", "~")),
                  f"model path not found: {source} (give a folder written by MicroCinemaPipeline.save_pretrained)")
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except (OSError, ValueError, TypeError, KeyError) as error:
            if isinstance(error, MicroCinemaError):
                raise
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MicroCinemaError(f"cannot load a MicroCinema pipeline from {source!r}: {first}") from None

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> Path:
        """diffusers' ``save_pretrained`` (``model_index.json`` + one folder per component); returns the folder."""
        super().save_pretrained(save_directory, **kwargs)
        return Path(save_directory)

    # ------------------------------------------------------------------ parts
    @property
    def video_unet(self) -> VideoUNet:
        """The base model (the ``unet`` component; the name before the pipeline became a diffusers one)."""
        return self.unet

    @property
    def image_size(self) -> int:
        """The default (square) frame size in pixels."""
        return self.default_height_width[0]

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels (N, 3, H, W) in [-1, 1] -> scaled latents (N, C, h, w)."""
        return self.encode_frames(images)

    @property
    def key_frame_model(self) -> KeyFrameModel | None:
        """The external stage one in use (None when ``key_frame_unet`` runs stage one): the ``key_frame_model``
        given, else a loaded folder's ``t2i/``. Without any stage one this raises: the embedded (procedural
        domain) text-to-image model is used only when asked for, ``key_frame_model="embedded"``."""
        if self._key_frame_model is None and self.key_frame_unet is not None:
            return None
        if self._key_frame_model is None:
            folder = Path(str(self.config.get("_name_or_path", ""))) / "t2i"
            check(str(folder) != "t2i" and folder.is_dir(),
                  "this pipeline has no stage one: pass image=, or build it with key_frame_unet= / key_frame_model= "
                  "(key_frame_model='embedded': the embedded 64x64 procedural-domain text-to-image model)")
            self._key_frame_model = str(folder)
        if isinstance(self._key_frame_model, (str, Path)):
            self._key_frame_model = load_key_frame_model(self._key_frame_model)
        return self._key_frame_model

    def check_num_frames(self, num_frames: int) -> int:
        lo, hi = self.min_num_frames, self.max_num_frames
        check(isinstance(num_frames, (int, np.integer)) and not isinstance(num_frames, bool)
              and lo <= num_frames <= hi and num_frames % 2 == 1,
              f"num_frames must be an odd number from {lo} to {hi} (the key frame is the centre frame; the base "
              f"model was trained on 9), got {num_frames!r}")
        return int(num_frames)

    def _vae_calls(self, decode_chunk_size: int | None) -> tuple[Callable, Callable]:
        """:meth:`decode_latents` and :meth:`encode_frames` with ``decode_chunk_size`` frames per VAE call."""
        return (functools.partial(self.decode_latents, decode_chunk_size=decode_chunk_size),
                functools.partial(self.encode_frames, chunk_size=decode_chunk_size))

    def _eps_model(self, unet: Any) -> Callable:
        return cond_eps_model(unet, self.prediction_type, self.scheduler)

    # ------------------------------------------------------------------ stage one
    @torch.no_grad()
    def generate_key_frames(self, prompts: list[str], negative_prompts: list[str], *, steps: int,
                            generator: torch.Generator, height: int, width: int,
                            decode_chunk_size: int | None = None) -> torch.Tensor:
        """Stage one: key frames (B, 3, height, width) in [-1, 1] from ``key_frame_unet`` (with the pipeline's
        text encoder, scheduler and VAE, ``key_frame_sampler`` and ``key_frame_guidance_scale``;
        ``decode_chunk_size`` frames per VAE call, default the pipeline's) or from the external ``key_frame_model``
        (given the negative prompts when its call takes ``negative_prompt``, as
        :class:`~microcinema.pipelines.key_frame.DiffusersKeyFrameModel` does; it runs on its own device and dtype:
        ``.to()`` of this pipeline does not move it)."""
        external = self.key_frame_model
        if external is not None:
            size = height if height == width else (height, width)
            kwargs = {"negative_prompt": negative_prompts} if _takes(external, "negative_prompt") else {}
            return external(prompts, num_inference_steps=steps, guidance_scale=None, generator=generator, size=size,
                            **kwargs)
        unet, scale = self.key_frame_unet, self.key_frame_guidance_scale
        cond, uncond = self.encode_prompt(prompts, None, 1, True, negative_prompts)
        eps_model = cfg_eps_model(self._eps_model(unet), cond, uncond, scale)
        shape = (len(prompts), unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        noise = self.prepare_latents(shape, generator, device=self._execution_device)
        latents = self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator,
                               sampler=self.key_frame_sampler or self.sampler, stage="key_frame")
        return self.decode_latents(latents.unsqueeze(2), decode_chunk_size)[:, 0].contiguous()

    # ------------------------------------------------------------------ stage two
    def _base_eps_model(self, cond: dict, uncond: dict, z_key: torch.Tensor, num_frames: int, *, scale: float,
                        generator: torch.Generator, lam: float, pin_key_frame: bool) -> tuple[Any, torch.Tensor]:
        """The base model's guided noise prediction for text conditions ``cond``/``uncond`` and key frame
        latents ``z_key`` (B, C, h, w) (centre frame pinned if asked), and the AppearNet condition (B, C, 1, h, w)."""
        condition = z_key.unsqueeze(2)  # AppearNet input [z_c, ..., z_c]: one frame, broadcast over F
        cond, uncond = {**cond, "condition": condition}, {**uncond, "condition": condition}
        eps_model = cfg_eps_model(self._eps_model(self.unet), cond, uncond, scale)
        if pin_key_frame:  # the key frame's noise as in training: n + lambda z_c (section 3.3, eq. 3)
            known = condition.expand(-1, -1, num_frames, -1, -1)
            known_noise = self.prepare_latents(tuple(known.shape), generator, device=z_key.device)
            eps_model = replacement_eps_model(eps_model, known, centre_frame_mask(num_frames, z_key.device),
                                              known_noise + lam * known, self.scheduler)
        return eps_model, condition

    @torch.no_grad()
    def generate_base(self, cond: dict, uncond: dict, z_key: torch.Tensor, num_frames: int, *, steps: int,
                      scale: float, generator: torch.Generator, lam: float, gamma: float, pin_key_frame: bool = False,
                      latents: torch.Tensor | None = None) -> torch.Tensor:
        """Stage two: (B, C, F, h, w) latents around the key frame latent ``z_key`` (B, C, h, w), from ``latents``
        (the user's initial noise) or fresh noise, plus the prior's mean. ``pin_key_frame``: the centre frame
        follows the key frame's forward process (replacement method), so it is ``z_key``."""
        eps_model, _ = self._base_eps_model(cond, uncond, z_key, num_frames, scale=scale, generator=generator,
                                            lam=lam, pin_key_frame=pin_key_frame)
        shape = (len(z_key), z_key.shape[1], num_frames, *z_key.shape[2:])
        noise = self.prepare_latents(shape, generator, latents, device=z_key.device)
        return self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator, sampler=self.sampler,
                            stage="base", init_mean=appearance_init_mean(z_key, num_frames, lam, gamma))

    @torch.no_grad()
    def refine_base(self, cond: dict, uncond: dict, z_key: torch.Tensor, latents: torch.Tensor, *, strength: float,
                    steps: int, scale: float, generator: torch.Generator, lam: float, pin_key_frame: bool = False,
                    min_score: float = DEFAULT_MIN_SCORE, decode_chunk_size: int | None = None) -> torch.Tensor:
        """Motion-compensated key-frame refinement (:mod:`~microcinema.systems.microcinema.keyframe_refine`, beyond
        the paper) of base latents (B, C, F, h, w): each frame restarts from the key frame warped onto it (where a
        similarity transform explains it, score >= ``min_score``) and is re-denoised over the last ``strength`` of
        the ``steps``-step schedule (at least one step) with the same text, guidance and key frame.
        ``decode_chunk_size``: frames per VAE call (default: the pipeline's)."""
        decode, encode = self._vae_calls(decode_chunk_size)
        # unpinned, the centre frame is the model's redraw: warp the key frame itself then
        key_pixels = None if pin_key_frame else decode(z_key.unsqueeze(2))[:, 0]
        init, _ = refine_init(latents, decode, encode, latents.shape[2] // 2, min_score, key_pixels=key_pixels)
        eps_model, condition = self._base_eps_model(cond, uncond, z_key, latents.shape[2], scale=scale,
                                                    generator=generator, lam=lam, pin_key_frame=pin_key_frame)
        noise = self.prepare_latents(tuple(latents.shape), generator, device=latents.device)
        return self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator, sampler=self.sampler,
                            stage="refine", init_mean=lam * condition, init=init,
                            strength=_at_least_one_step(steps, strength))

    @torch.no_grad()
    def interpolate(self, latents: torch.Tensor, *, steps: int, generator: torch.Generator, lam: float, gamma: float,
                    anchor_means: bool | None = None, refine_strength: float = 0.0,
                    min_score: float = DEFAULT_MIN_SCORE, decode_chunk_size: int | None = None) -> torch.Tensor:
        """x4 temporal interpolation of (B, C, F, h, w) latents to (B, C, 4 (F - 1) + 1, h, w); base frames kept.
        ``anchor_means``: keep each in-between frame's palette at its condition's (default: the pipeline's
        ``interp_anchor_means``). ``refine_strength`` > 0: the in-between frames then get the key-frame
        refinement too (the key frame is the centre base frame), re-denoised by the interpolation model over the
        last ``refine_strength`` of the schedule. No text guidance (the empty prompt), as the paper's Table 7.
        ``decode_chunk_size``: frames per VAE call of the refinement (default: the pipeline's)."""
        check(self.interp_unet is not None, "this pipeline has no interpolation model: pass interpolate=False")
        b, c, f, h, w = latents.shape
        first = rearrange(latents[:, :, :-1], "b c f h w -> (b f) c h w")
        last = rearrange(latents[:, :, 1:], "b c f h w -> (b f) c h w")
        n = INTERPOLATION_FACTOR + 1
        condition = interpolation_condition(first, last, n)
        encoder = self.text_embedder
        cond = {**unet_text_cond(encoder.encode([""] * len(first)), mask_padding=encoder.mask_padding),
                "condition": condition}
        noise = self.prepare_latents((len(first), c, n, h, w), generator, device=latents.device)
        eps_model = cfg_eps_model(self._eps_model(self.interp_unet), cond, cond, 1.0)
        if self.interp_anchor_means if anchor_means is None else anchor_means:
            eps_model = mean_anchor_eps_model(eps_model, condition.mean(dim=(-2, -1), keepdim=True), self.scheduler)
        sampler = self.interp_sampler or self.sampler
        # the refinement re-runs the last timesteps with the same condition: AppearNet's features are reused
        with _reused_appearance_features(self.interp_unet, _refine_steps(steps, refine_strength)):
            clips = self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator, sampler=sampler,
                                 stage="interpolation", init_mean=(lam + gamma) * condition)
            if refine_strength > 0:
                full = join_clips(latents, clips)
                between = [i for i in range(full.shape[2]) if i % INTERPOLATION_FACTOR]
                decode, encode = self._vae_calls(decode_chunk_size)
                init, _ = refine_init(full, decode, encode, INTERPOLATION_FACTOR * (f // 2), min_score,
                                      frames=between)
                init = rearrange(torch.stack([init[:, :, s:s + n] for s in clip_starts(full.shape[2])], dim=1),
                                 "b f c m h w -> (b f) c m h w")
                noise = self.prepare_latents(tuple(clips.shape), generator, device=latents.device)
                clips = self.denoise(eps_model, noise, num_inference_steps=steps, generator=generator,
                                     sampler=sampler, stage="interpolation_refine", init_mean=lam * condition,
                                     init=init, strength=_at_least_one_step(steps, refine_strength))
        return join_clips(latents, clips)

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | list[str], image: Any = None, negative_prompt: str | list[str] | None = None,
                 height: int | None = None, width: int | None = None, num_frames: int = 9,
                 num_inference_steps: int | None = None, guidance_scale: float | None = None,
                 num_videos_per_prompt: int = 1,
                 generator: torch.Generator | None = None, latents: torch.Tensor | None = None,
                 decode_chunk_size: int | None = None, output_type: str = "pil", return_dict: bool = True,
                 callback_on_step_end: Callable | None = None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",),
                 interpolate: bool = True, noise_prior_lambda: float | None = None,
                 noise_prior_gamma: float | None = None, pin_key_frame: bool | None = None,
                 interp_anchor_means: bool | None = None, refine_strength: float | None = None,
                 key_frame_num_inference_steps: int | None = None, interp_num_inference_steps: int | None = None,
                 progress: bool | None = None) -> VideoPipelineOutput | tuple:
        """Generate ``num_videos_per_prompt`` videos per prompt.

        ``image`` (path, PIL image, or a list of them, one per prompt) replaces stage one; it is resized and
        centre-cropped to (``height``, ``width``) (default: the U-Net's sample size; any multiple of
        :attr:`size_multiple`). ``negative_prompt``: the unconditional branch of guidance (stage one and the base
        model; default ``""``). ``latents``: the base model's initial noise ``(B * n, C, F, h, w)`` (the prior's
        mean is added to it). ``interpolate``: x4 frame rate with the interpolation model (9 frames at 2 fps ->
        33 at 8). ``noise_prior_lambda``/``gamma``, ``pin_key_frame``, ``interp_anchor_means``,
        ``refine_strength``, ``num_inference_steps`` (the base model's), ``key_frame_num_inference_steps``,
        ``interp_num_inference_steps``: per-call overrides of the pipeline's settings (None: the setting).
        ``callback_on_step_end(pipe, i, t, {"latents": ...})`` runs after every step of every sampling pass
        (``pipe.stage`` names it: key_frame, base, refine, interpolation, interpolation_refine) and may return
        replacement ``latents``.
        ``progress=False`` silences the progress bars for this call (else ``set_progress_bar_config`` rules).
        Returns a :class:`~microcinema.pipelines.base.VideoPipelineOutput`, or ``(frames,)`` when
        ``return_dict=False``.
        """
        prompts = check_prompts(prompt)
        steps = check_steps(_first(num_inference_steps, self.num_inference_steps))
        key_steps = check_steps(_first(key_frame_num_inference_steps, self.key_frame_num_inference_steps, steps),
                                "key_frame_num_inference_steps")
        interp_steps = check_steps(_first(interp_num_inference_steps, self.interp_num_inference_steps, steps),
                                   "interp_num_inference_steps")
        num_frames = self.check_num_frames(num_frames)
        per_prompt = check_count("num_videos_per_prompt", num_videos_per_prompt)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        check(isinstance(scale, (int, float)) and scale >= 0, f"guidance_scale must be >= 0 (1 = no guidance), got {scale!r}")
        check_output_type(output_type)
        _check_sampler(self.sampler)
        check(not interpolate or self.interp_unet is not None,
              "this pipeline has no interpolation model: pass interpolate=False (CLI: --no-interpolate)")
        refine = _check_strength(self.refine_strength if refine_strength is None else refine_strength)
        height, width = self.check_height_width(height, width)
        negatives = check_negative_prompt(negative_prompt, len(prompts))
        chunk = check_count("decode_chunk_size",
                            self.decode_chunk_size if decode_chunk_size is None else decode_chunk_size)
        self.check_callback(callback_on_step_end, callback_on_step_end_tensor_inputs)
        images = None
        if image is None:
            _ = self.key_frame_model  # raises before any work when there is no stage one
        else:
            images = list(image) if isinstance(image, (list, tuple)) else [image] * len(prompts)
            check(len(images) == len(prompts), f"got {len(images)} images for {len(prompts)} prompts: give one per prompt")
        lam = self.noise_prior_lambda if noise_prior_lambda is None else noise_prior_lambda
        gamma = self.noise_prior_gamma if noise_prior_gamma is None else noise_prior_gamma
        pin = self.pin_key_frame if pin_key_frame is None else pin_key_frame
        generator = fresh_generator(generator)
        batch = [p for p in prompts for _ in range(per_prompt)]
        batch_negatives = [n for n in negatives for _ in range(per_prompt)]
        timings, notes, clock = {}, [], time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name], clock = now - clock, now

        with self._call_state(callback_on_step_end, callback_on_step_end_tensor_inputs, progress, scale):
            if images is None:
                key_frames = self.generate_key_frames(batch, batch_negatives, steps=key_steps, generator=generator,
                                                      height=height, width=width, decode_chunk_size=chunk)
            else:
                loaded = [load_image(im, (height, width)) for im in images]
                key_frames = torch.stack([t for t, _ in loaded for _ in range(per_prompt)])
                notes = sorted({n for _, ns in loaded for n in ns})
            lap("key_frame")
            z_key = self.encode_frames(key_frames.to(self._execution_device), chunk)
            cond, uncond = self.encode_prompt(prompts, z_key.device, per_prompt, True, negatives)
            with _reused_appearance_features(self.unet, _refine_steps(steps, refine)):  # as in interpolate()
                video = self.generate_base(cond, uncond, z_key, num_frames, steps=steps, scale=scale,
                                           generator=generator, lam=lam, gamma=gamma, pin_key_frame=pin,
                                           latents=latents)
                fps = self.base_fps
                lap("base")
                if refine > 0:
                    video = self.refine_base(cond, uncond, z_key, video, strength=refine, steps=steps, scale=scale,
                                             generator=generator, lam=lam, pin_key_frame=pin,
                                             decode_chunk_size=chunk)
                    lap("refine")
            if interpolate:
                video = self.interpolate(video, steps=interp_steps, generator=generator,
                                         lam=self.interp_noise_prior_lambda,
                                         gamma=self.interp_noise_prior_gamma, anchor_means=interp_anchor_means,
                                         refine_strength=refine, decode_chunk_size=chunk)
                fps = self.base_fps * INTERPOLATION_FACTOR
                lap("interpolation")
            frames = self.postprocess(video, output_type, chunk)
            if output_type != "latent":
                lap("decode")
        self.maybe_free_model_hooks()
        if not return_dict:
            return (frames,)
        return VideoPipelineOutput(frames=frames, key_frames=key_frames, fps=fps, notes=notes, timings=timings)


# ``DiffusionPipeline.from_pretrained(folder)`` looks the ``_class_name`` of model_index.json up in the diffusers
# module. The alternative, model_index.json's ``["pipeline", "MicroCinemaPipeline"]`` with a ``pipeline.py`` shim in
# the folder, makes diffusers (0.42) refuse to load without ``trust_remote_code=True``, since it would execute code
# from the folder. Registering the class under diffusers' namespace when this module is imported needs no remote
# code and works offline; the VideoUNet components need ``microcinema`` imported anyway (diffusers resolves
# custom component modules from ``sys.modules`` only).
if getattr(diffusers, MicroCinemaPipeline.__name__, None) is None:
    setattr(diffusers, MicroCinemaPipeline.__name__, MicroCinemaPipeline)
