"""Appearance attention: every frame attends to the key frame's AppearNet feature (an extension beyond the
paper, opt-in: ``VideoUNet(appearance_attention=True)``; the embedded base model uses it)."""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from einops import rearrange, repeat
from torch import nn

from microcinema.core.errors import check
from microcinema.models.layers import zero_module


def spatial_position_encoding(height: int, width: int, channels: int, device: torch.device,
                               dtype: torch.dtype) -> torch.Tensor:
    """2D sinusoidal encoding ``(H * W, C)`` of the pixel position: ``C // 2`` channels encode the row, the
    rest the column (the transformer's encoding, as for timesteps)."""
    half = channels // 2
    rows = get_timestep_embedding(torch.arange(height, device=device, dtype=torch.float32), half,
                                  flip_sin_to_cos=True, downscale_freq_shift=0)
    cols = get_timestep_embedding(torch.arange(width, device=device, dtype=torch.float32), channels - half,
                                  flip_sin_to_cos=True, downscale_freq_shift=0)
    grid = torch.cat([repeat(rows, "h c -> h w c", w=width), repeat(cols, "w c -> h w c", h=height)], dim=-1)
    return rearrange(grid, "h w c -> (h w) c").to(dtype)


class AppearanceAttention(nn.Module):
    """Every frame attends to the key frame's AppearNet feature at the same resolution (an extension, not in
    the paper; ``VideoUNet(appearance_attention=True)``), applied after every temporal attention:

        ``h_f <- h_f + W_o Attn(q = LN(h_f) + PE, kv = LN(a) + PE)``

    with ``a`` the AppearNet feature of the key frame (``H * W`` tokens, shared by all frames) and ``PE`` a 2D
    sinusoidal position encoding, so attention can prefer nearby places. ``W_o`` is zero-initialised: the
    layer is the identity at initialisation. Meant for the base model, whose condition is one key frame (for a
    condition of several frames the centre one is used, :meth:`AppearNetOutput.key_frame`).

    Why: the paper's injections (Table 2) add AppearNet's feature at the *same* pixel, so where the object
    has moved away from its place in the key frame the main branch must carry its details there through
    convolutions, and fine shapes lose their form with the distance from the key frame. Attention lets a frame fetch the key frame's appearance from wherever it is, the way reference attention does in
    image animation (Animate Anyone's ReferenceNet, which concatenates reference tokens to self-attention).
    """

    def __init__(self, channels: int, feature_channels: int, head_dim: int = 64):
        super().__init__()
        heads = max(1, channels // head_dim)
        check(channels % heads == 0, f"appearance attention: {channels} channels do not split into {heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.norm_feature = nn.LayerNorm(feature_channels)
        self.attn = Attention(query_dim=channels, cross_attention_dim=feature_channels, heads=heads,
                              dim_head=channels // heads, bias=False)
        zero_module(self.attn.to_out[0])  # zero-initialised output projection: the branch starts at 0

    def forward(self, x: torch.Tensor, key_feature: torch.Tensor, num_frames: int) -> torch.Tensor:
        """``x`` ``(B * F, C, H, W)``; ``key_feature`` ``(B, C_a, H, W)``, the key frame's AppearNet feature."""
        height, width = x.shape[-2:]
        pe = lambda c: spatial_position_encoding(height, width, c, x.device, x.dtype)  # noqa: E731
        queries = self.norm(rearrange(x, "(b f) c h w -> b f (h w) c", f=num_frames)) + pe(x.shape[1])
        keys = self.norm_feature(rearrange(key_feature, "b c h w -> b (h w) c")) + pe(key_feature.shape[1])
        # all frames of a sample query the same keys: one batch row per sample, keys projected once
        out = self.attn(rearrange(queries, "b f n c -> b (f n) c"), encoder_hidden_states=keys)
        return x + rearrange(out, "b (f h w) c -> (b f) c h w", f=num_frames, h=height, w=width)
