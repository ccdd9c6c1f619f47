"""Small building blocks shared by the models: zero initialisation, sinusoidal frame positions, and an
attention processor that spares diffusers' per-call signature inspection."""

from __future__ import annotations

import inspect
import math
from typing import Any

import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.embeddings import get_timestep_embedding
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the last layer of a residual branch) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def gcd_groups(channels: int, groups: int) -> int:
    """The largest GroupNorm group count <= ``groups`` that divides ``channels``' (their gcd)."""
    return math.gcd(channels, groups)


def frame_position_encoding(num_frames: int, channels: int, device: torch.device, dtype: torch.dtype,
                            centred: bool = False) -> torch.Tensor:
    """Sinusoidal encoding ``(F, C)`` of the frame index (the transformer's, as for timesteps); ``centred``:
    of the offset from the centre frame, ``i - (F - 1) / 2`` (0 for the key frame and for images)."""
    positions = torch.arange(num_frames, device=device, dtype=torch.float32)
    if centred:
        positions = positions - (num_frames - 1) / 2
    return get_timestep_embedding(positions, channels, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype)


class SignatureCachedAttnProcessor(AttnProcessor2_0):
    """diffusers' ``AttnProcessor2_0`` (the same computation) whose call signature is computed once.

    diffusers' ``Attention.forward`` reads ``inspect.signature(self.processor.__call__)`` on every call, to filter
    ``cross_attention_kwargs``; for ``AttnProcessor2_0`` that rebuilds the signature from the code object each
    time, which on a CPU costs as much as a small attention layer itself. ``inspect`` returns a function's
    ``__signature__`` when it has one, which this class's ``__call__`` carries.
    """

    def __call__(self, attn: Attention, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)


SignatureCachedAttnProcessor.__call__.__signature__ = inspect.signature(SignatureCachedAttnProcessor.__call__)


def cache_attention_signatures(model: nn.Module) -> int:
    """Give every attention layer of ``model`` that runs diffusers' plain ``AttnProcessor2_0`` the
    :class:`SignatureCachedAttnProcessor` instead (outputs bit-identical; other processors are left alone).
    Returns how many were replaced."""
    replaced = 0
    for module in model.modules():
        if isinstance(module, Attention) and type(module.processor) is AttnProcessor2_0:
            module.set_processor(SignatureCachedAttnProcessor())
            replaced += 1
    return replaced
