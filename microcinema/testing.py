"""Tiny random-weight models of the real classes, for tests (the way diffusers tests its pipelines).

Everything here is offline: the CLIP tokenizer is a small BPE shipped in
``microcinema/assets/tiny_clip_tokenizer/`` (made by ``tests/fixtures/make_tiny_clip_tokenizer.py``),
the models are built from configs with a fixed seed. Sizes are chosen so that a full
``StableDiffusionPipeline`` runs 2 steps at 32x32 on one CPU core in well under a second:

- text encoder: ``CLIPTextModel``, 2 layers, width 32, 77 positions;
- U-Net: ``UNet2DConditionModel`` with SD's block layout (cross-attention blocks then a plain one),
  ``block_out_channels=(8, 16)``, 1 layer per block, 4 GroupNorm groups, head width 4;
- VAE: ``AutoencoderKL``, ``block_out_channels=(8, 16)``: 4 latent channels, downsampling x2
  (not SD's x8, so code that hard-codes 8 fails the tests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_CLIP_TOKENIZER_DIR = Path(__file__).resolve().parent / "assets" / "tiny_clip_tokenizer"

#: Stable Diffusion's training schedule (SD's "linear" is diffusers' ``scaled_linear``) and DDIM settings.
SD_SCHEDULER_KWARGS: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


def tiny_clip_tokenizer():
    """A ``CLIPTokenizer`` (918 tokens, ``model_max_length=77``) from the shipped files."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TINY_CLIP_TOKENIZER_DIR), local_files_only=True)


def tiny_clip_text_model(hidden_size: int = 32, num_hidden_layers: int = 2, seed: int = 0):
    """A random ``CLIPTextModel`` matching :func:`tiny_clip_tokenizer` (ids, 77 positions)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    tok = tiny_clip_tokenizer()
    config = CLIPTextConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size + 5,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=4,
        max_position_embeddings=tok.model_max_length,
        layer_norm_eps=1e-5,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config).eval()


def tiny_unet2d_config(
    sd21_layout: bool = True,
    cross_attention_dim: int = 32,
    block_out_channels: tuple[int, ...] = (8, 16),
    sample_size: int = 16,
    **overrides: Any,
) -> dict[str, Any]:
    """Config of a tiny ``UNet2DConditionModel`` with Stable Diffusion's layout.

    Blocks: ``CrossAttnDownBlock2D`` for all but the last (a ``DownBlock2D``), mirrored on the way up, a
    cross-attention mid block. ``sd21_layout=True`` is SD 2.x (``use_linear_projection``, a head count per
    block as diffusers spells it in ``attention_head_dim``, here width-4 heads); ``False`` is SD 1.x
    (conv projections, one scalar ``attention_head_dim``). ``overrides`` replace any key.
    """
    n = len(block_out_channels)
    assert n >= 2, "need at least one cross-attention block and one plain block"
    config: dict[str, Any] = dict(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        block_out_channels=tuple(block_out_channels),
        layers_per_block=1,
        norm_num_groups=4,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=tuple(max(1, c // 4) for c in block_out_channels) if sd21_layout else 2,
        use_linear_projection=sd21_layout,
    )
    config.update(overrides)
    return config


def tiny_unet2d(seed: int = 0, **config_kwargs: Any):
    """A random ``UNet2DConditionModel`` from :func:`tiny_unet2d_config` (same arguments)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**tiny_unet2d_config(**config_kwargs)).eval()


def tiny_vae(block_out_channels: tuple[int, ...] = (8, 16), seed: int = 0):
    """A random ``AutoencoderKL``: 4 latent channels, downsampling 2 ** (len(block_out_channels) - 1)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=4,
            sample_size=32,
            scaling_factor=0.18215,
        ).eval()


def tiny_sd_pipeline(sd21_layout: bool = True, hidden_size: int = 32, seed: int = 0):
    """A ``StableDiffusionPipeline`` of tiny random models (DDIM scheduler, no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=tiny_vae(seed=seed),
        text_encoder=tiny_clip_text_model(hidden_size=hidden_size, seed=seed),
        tokenizer=tiny_clip_tokenizer(),
        unet=tiny_unet2d(seed=seed, sd21_layout=sd21_layout, cross_attention_dim=hidden_size),
        scheduler=DDIMScheduler(**SD_SCHEDULER_KWARGS),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def make_tiny_sd_pipeline(path: str | Path, sd21_layout: bool = True, seed: int = 0) -> Path:
    """Save :func:`tiny_sd_pipeline` as a diffusers folder at ``path`` (safetensors) and return it."""
    path = Path(path)
    tiny_sd_pipeline(sd21_layout=sd21_layout, seed=seed).save_pretrained(path)
    return path


__all__ = [
    "SD_SCHEDULER_KWARGS",
    "TINY_CLIP_TOKENIZER_DIR",
    "make_tiny_clip_model",
    "make_tiny_sd_pipeline",
    "save_random_clip_model",
    "tiny_clip_text_model",
    "tiny_clip_tokenizer",
    "tiny_sd_pipeline",
    "tiny_unet2d",
    "tiny_unet2d_config",
    "tiny_vae",
]


def save_random_clip_model(path: str | Path, *, text: dict, vision: dict, projection_dim: int, seed: int = 0) -> Path:
    """Save a random transformers ``CLIPModel`` folder (model, the test tokenizer, an image processor for
    ``vision["image_size"]``) at ``path``, the layout :class:`~microcinema.eval.metrics.clip_score.ClipScorer`
    loads. ``text`` / ``vision``: the towers' config keys; vocabulary and special tokens come from the tokenizer."""
    from transformers import CLIPConfig, CLIPModel

    from microcinema.eval.metrics.clip_score import clip_image_processor_class

    path = Path(path)
    tok = tiny_clip_tokenizer()
    text = dict(vocab_size=len(tok), max_position_embeddings=tok.model_max_length, bos_token_id=tok.bos_token_id,
                eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **text)
    torch.manual_seed(seed)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection_dim)).save_pretrained(path)
    tok.save_pretrained(path)
    size = vision["image_size"]
    clip_image_processor_class()(size={"shortest_edge": size}, crop_size={"height": size, "width": size}).save_pretrained(path)
    return path


def make_tiny_clip_model(path: str | Path, num_hidden_layers: int = 2, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` folder (32x32 images) at ``path`` (see :func:`save_random_clip_model`)."""
    layers = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=num_hidden_layers, num_attention_heads=4)
    return save_random_clip_model(path, text=layers, vision=dict(image_size=32, patch_size=8, **layers),
                                  projection_dim=16, seed=seed)
