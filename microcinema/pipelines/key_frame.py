"""Stage one of MicroCinema, pluggable (section 3.1): where the key frame comes from.

* the project's own text-to-image model: the embedded tiny one (default) or any folder written by
  :class:`~microcinema.pipelines.text_to_image.TextToImagePipeline`;
* any diffusers text-to-image pipeline (Stable Diffusion 2.1, SDXL, ...) by local folder or hub id;
* the user's own image (:func:`load_image`), resized and centre-cropped to the video model's size.

Every source returns key frames as a float tensor (B, 3, H, W) in [-1, 1]; ``size`` is an int (square) or
``(height, width)``.
"""

from __future__ import annotations

import inspect
import os
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from microcinema.core.errors import MicroCinemaError, check, first_line
from microcinema.pipelines.text_to_image import PIPELINE_FILE, TextToImagePipeline, check_prompts, check_steps, is_text_to_image_folder


Size = "int | tuple[int, int]"


class KeyFrameModel(Protocol):
    """A stage one: prompts -> key frames (B, 3, H, W) in [-1, 1]. One whose call also names a
    ``negative_prompt`` keyword (a list, one per prompt) gets the pipeline's negative prompts."""

    def __call__(self, prompts: list[str], *, num_inference_steps: int, guidance_scale: float | None,
                 generator: torch.Generator | None, size: int | tuple[int, int]) -> torch.Tensor: ...


def height_width(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` (an int: square) as ``(height, width)``."""
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))


def fit_to_size(image: Image.Image, size: int | tuple[int, int]) -> tuple[Image.Image, str | None]:
    """Resize so the image covers ``size`` (an int: square, or ``(height, width)``) and centre-crop; also say
    what was done (None if nothing)."""
    height, width = height_width(size)
    w, h = image.size
    if (w, h) == (width, height):
        return image, None
    scale = max(width / w, height / h)
    resized = image.resize((max(width, round(w * scale)), max(height, round(h * scale))), Image.BICUBIC)
    left, top = (resized.width - width) // 2, (resized.height - height) // 2
    note = f"resized {w}x{h} to {resized.width}x{resized.height} and centre-cropped to {width}x{height}"
    return resized.crop((left, top, left + width, top + height)), note



def image_to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


def load_image(path: str | os.PathLike | Image.Image, size: int | tuple[int, int]) -> tuple[torch.Tensor, list[str]]:
    """The user's key frame: any image PIL reads (grey, RGBA, palette are converted to RGB), resized and
    centre-cropped to ``size`` (int or (height, width)). Returns ``(tensor (3, H, W) in [-1, 1], notes of what
    was changed)``."""
    notes: list[str] = []
    if isinstance(path, Image.Image):
        image = path
    else:
        path = Path(path)
        if not path.is_file():
            raise MicroCinemaError(f"image not found: {path}")
        try:
            image = Image.open(path)
            image.load()
        except (UnidentifiedImageError, OSError) as error:
            raise MicroCinemaError(f"cannot read image {path}: {error}; give a PNG, JPEG or another format PIL reads") from None
    if image.mode != "RGB":
        notes.append(f"converted {image.mode} to RGB")
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            background = Image.new("RGB", image.size, (0, 0, 0))
            background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
            image = background
        image = image.convert("RGB")
    image, note = fit_to_size(image, size)
    if note:
        notes.append(note)
    return image_to_tensor(image), notes


class DiffusersKeyFrameModel:
    """Any diffusers text-to-image pipeline, its images fitted to the video model's size. ``negative_prompt``
    (one per prompt) goes to the pipeline when its call takes one and any is non-empty (all empty: the
    pipeline's own default, e.g. SDXL's zeroed negative embeddings). The pipeline stays on the device and dtype
    it was loaded with (``.pipeline.to(...)`` moves it)."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline

    @classmethod
    def from_pretrained(cls, path_or_id: str, **kwargs) -> "DiffusersKeyFrameModel":
        from diffusers import DiffusionPipeline

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pipeline = DiffusionPipeline.from_pretrained(path_or_id, **kwargs)
        except Exception as error:  # diffusers raises many kinds: missing files, bad configs, no network
            first = first_line(error)
            raise MicroCinemaError(f"cannot load a diffusers text-to-image pipeline from {path_or_id!r}: {first}") from None
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=True)
        return cls(pipeline)

    @torch.no_grad()
    def __call__(self, prompts: list[str], *, num_inference_steps: int, guidance_scale: float | None,
                 generator: torch.Generator | None, size: int | tuple[int, int],
                 negative_prompt: list[str] | None = None) -> torch.Tensor:
        kwargs = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
        if negative_prompt is not None and any(negative_prompt):
            check(len(negative_prompt) == len(prompts),
                  f"got {len(negative_prompt)} negative prompts for {len(prompts)} prompts: give one per prompt")
            check("negative_prompt" in inspect.signature(self.pipeline.__call__).parameters,
                  f"{type(self.pipeline).__name__} takes no negative_prompt: leave it empty for this stage one")
            kwargs["negative_prompt"] = list(negative_prompt)
        images = self.pipeline(prompts, num_inference_steps=num_inference_steps, generator=generator,
                               output_type="pil", **kwargs).images
        return torch.stack([image_to_tensor(fit_to_size(im.convert("RGB"), size)[0]) for im in images])


class OwnKeyFrameModel:
    """Adapter of :class:`TextToImagePipeline` to the :class:`KeyFrameModel` call."""

    def __init__(self, pipeline: TextToImagePipeline) -> None:
        self.pipeline = pipeline

    def __call__(self, prompts: list[str], *, num_inference_steps: int, guidance_scale: float | None,
                 generator: torch.Generator | None, size: int | tuple[int, int]) -> torch.Tensor:
        images = self.pipeline(prompts, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                               generator=generator, output_type="pt").images
        if tuple(images.shape[-2:]) != height_width(size):
            images = torch.nn.functional.interpolate(images, size=height_width(size), mode="bicubic", antialias=True)
        return images


def load_key_frame_model(model: str | os.PathLike | None = None) -> KeyFrameModel:
    """``None``/``"embedded"``: the shipped tiny model; a MicroCinema folder; else a diffusers pipeline
    (local folder with ``model_index.json``, or a hub id; nothing is downloaded when offline)."""
    if model is None or str(model) == "embedded":
        return OwnKeyFrameModel(TextToImagePipeline.embedded())
    path = Path(model)
    if is_text_to_image_folder(path) and not (path / "model_index.json").is_file():
        return OwnKeyFrameModel(TextToImagePipeline.from_pretrained(path))
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise MicroCinemaError(f"{path} holds neither a diffusers pipeline (model_index.json) nor a MicroCinema "
                                   f"text-to-image model ({PIPELINE_FILE}); give one of those, a hub id, or 'embedded'")
        return DiffusersKeyFrameModel.from_pretrained(str(path))
    if str(model).count("/") != 1 or str(model).startswith((".", "/", "~")):
        raise MicroCinemaError(f"model path not found: {model} (give an existing folder, a hub id like "
                               "'stabilityai/stable-diffusion-2-1', or 'embedded')")
    return DiffusersKeyFrameModel.from_pretrained(str(model))


def generate_key_frames(prompt: str | list[str], *, model: KeyFrameModel | str | None = None, size: int = 64,
                        num_inference_steps: int = 25, guidance_scale: float | None = None,
                        seed: int | None = 0) -> torch.Tensor:
    """Stage one as one call: key frames (B, 3, size, size) in [-1, 1] for the prompts."""
    prompts = check_prompts(prompt)
    steps = check_steps(num_inference_steps)
    check(guidance_scale is None or guidance_scale >= 0, f"guidance_scale must be >= 0, got {guidance_scale}")
    runner = model if callable(model) else load_key_frame_model(model)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return runner(prompts, num_inference_steps=steps, guidance_scale=guidance_scale, generator=generator, size=size)
