"""MicroCinema's 3D U-Net (paper section 3.1) with AppearNet appearance injection (section 3.2, Table 2).

:class:`VideoUNet` wraps a diffusers ``UNet2DConditionModel`` (``self.unet``: the 2D weights keep their
names under ``unet.``, so Stable Diffusion 2.1 weights load unchanged) and walks its blocks itself,
inserting, as residual branches that are zero at initialisation (section 3.1, "we zero-initialize all the
convolution and attention temporal layers and add a skip connection"):

* a temporal convolution, kernel ``(3, 1, 1)``, after every ResNet (:class:`TemporalConv`);
* a temporal attention over frames, with sinusoidal frame positions, after every spatial transformer
  (:class:`TemporalAttention`);
* the appearance injections chosen by ``injection`` (the four rows of the paper's Table 2):

  ============================  ======================================================================
  ``concat``                    no AppearNet: the condition latent is concatenated to the noisy input on
                                channels (``conv_in`` widened with zero-initialised input channels)
  ``add_dec``                   AppearNet features added through zero 1x1 convs to the decoder only
                                (the skip connections and the mid block output, as ControlNet)
  ``add_encdec``                ... and to the encoder, after every ResNet of the main branch
  ``add_encdec_spade``          ... plus SPADE de-normalisation (eq. 1-2) at the same points (default)
  ============================  ======================================================================

At initialisation every mode is exactly the 2D model applied frame by frame (tested), so training starts
from the text-to-image model; ``F = 1`` (images) passes through too, so images and videos train together.

Tensors are ``(B, C, F, H, W)`` outside; inside, spatial layers see ``(B * F, C, H, W)`` in ``(b f)``
order and temporal layers rearrange to what they need.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from diffusers.utils import BaseOutput
from einops import rearrange, repeat
from torch import nn

from microcinema.models.appearnet import AppearNet, AppearNetOutput, embed_time, mask_to_bias, per_frame
from microcinema.core.errors import MicroCinemaError, check

#: The appearance injections of the paper's Table 2, in its order.
INJECTION_MODES: tuple[str, ...] = ("concat", "add_dec", "add_encdec", "add_encdec_spade")


def zero_module(module: nn.Module) -> nn.Module:
    """Set every parameter of ``module`` to zero (the last layer of a residual branch) and return it."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


def _groups(channels: int, groups: int) -> int:
    return math.gcd(channels, groups)


# ----------------------------------------------------------------------------------------------------------
# temporal layers (section 3.1)
# ----------------------------------------------------------------------------------------------------------


class TemporalConv(nn.Module):
    """A 1D temporal convolution (kernel ``(3, 1, 1)``: over frames, per pixel) as a residual branch.

    ``x + conv2(SiLU(GN(conv1(SiLU(GN(x))))))`` on ``(b, c, f, h, w)``. ``conv2`` is zero-initialised, so
    the branch outputs 0 and the layer is the identity at initialisation (section 3.1).
    """

    def __init__(self, channels: int, num_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        groups = _groups(channels, num_groups)
        self.norm1 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.conv1 = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))
        self.norm2 = nn.GroupNorm(groups, channels, eps=1e-6)
        self.dropout = nn.Dropout(dropout)
        # zero-initialised last layer: the residual branch starts at exactly 0
        self.conv2 = zero_module(nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0)))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        h = rearrange(x, "(b f) c h w -> b c f h w", f=num_frames)
        h = self.conv1(F.silu(self.norm1(h)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return x + rearrange(h, "b c f h w -> (b f) c h w")


def frame_position_encoding(num_frames: int, channels: int, device: torch.device, dtype: torch.dtype,
                            centred: bool = False) -> torch.Tensor:
    """Sinusoidal encoding ``(F, C)`` of the frame index (the transformer's, as for timesteps); ``centred``:
    of the offset from the centre frame, ``i - (F - 1) / 2`` (0 for the key frame and for images)."""
    positions = torch.arange(num_frames, device=device, dtype=torch.float32)
    if centred:
        positions = positions - (num_frames - 1) / 2
    return get_timestep_embedding(positions, channels, flip_sin_to_cos=True, downscale_freq_shift=0).to(dtype)


class _PromptTimesOffset(nn.Module):
    """``(A t) * (B PE(f - (F - 1) / 2))``: the prompt times the frame's offset from the key frame, ``(B, F, hidden)``.

    ``t`` is the pooled prompt and ``PE`` the sinusoidal offset encoding; ``A`` and ``B`` keep their default
    (random) init. Shared by the two text x time layers below, which differ only in what the product drives.
    """

    def __init__(self, text_dim: int, hidden: int = 64, offset_channels: int = 32):
        super().__init__()
        self.offset_channels = offset_channels
        self.text_in = nn.Linear(text_dim, hidden)  # A
        self.offset_in = nn.Linear(offset_channels, hidden)  # B

    def product(self, pooled_text: torch.Tensor, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        offsets = frame_position_encoding(num_frames, self.offset_channels, like.device, like.dtype, centred=True)
        return self.text_in(pooled_text)[:, None] * self.offset_in(offsets)[None]


class FrameTextModulation(_PromptTimesOffset):
    """Per-frame FiLM of the features by the prompt and the frame's offset from the key frame (an extension,
    not in the paper; ``VideoUNet(frame_text_modulation=True)``), applied after every temporal convolution:

        ``h_f <- h_f * (1 + gamma_f) + beta_f``,  ``(gamma_f, beta_f) = W ((A t) * (B PE(f - (F - 1) / 2)))``

    with ``t`` the pooled prompt, ``PE`` the sinusoidal offset encoding, ``A``, ``B`` random (default init) and
    ``W`` zero-initialised, so the layer is the identity at initialisation.

    Why: the direction of a motion is a product of three things: a word ("growing"), the frame's place in
    time (before or after the key frame) and where the object is in the features. The paper's layers only add
    text (cross-attention) or mix frames (temporal layers), so that product has to be composed through several
    layers, and for a prompt and its opposite the first-order gradients of an additive path cancel over the
    two. Here the text x time product is explicit and scales the features, so its gradient,
    ``sum_pixels dL/dh * h``, does not cancel when the change correlates with the features, as growing or
    shrinking does. Measured on the embedded model (with the high-noise loss weighting of
    ``configs/video_text_modulation.yaml``; without it, nothing in 500 steps): grow/shrink went from a coin
    flip (14 of 26) to 25 of 26 right in the 100-prompt stage-two evaluation; left/right and up/down did not
    move. A translation is antisymmetric about the object, so a per-channel scale barely correlates with it;
    :class:`FrameTextShift` is the spatial counterpart.
    """

    def __init__(self, channels: int, text_dim: int, hidden: int = 64, offset_channels: int = 32):
        super().__init__(text_dim, hidden, offset_channels)
        self.out = zero_module(nn.Linear(hidden, 2 * channels))  # W: zero-initialised, the layer starts as identity

    def forward(self, x: torch.Tensor, pooled_text: torch.Tensor, num_frames: int) -> torch.Tensor:
        hidden = self.product(pooled_text, num_frames, x)  # (B, F, hidden)
        gamma, beta = rearrange(self.out(hidden), "b f (two c) -> two (b f) c 1 1", two=2)
        return x + gamma * x + beta


def shift_features(x: torch.Tensor, velocity: torch.Tensor) -> torch.Tensor:
    """Translate every channel map of ``x`` ``(N, C, H, W)`` by its own ``velocity`` ``(N, C, 2)`` = (dx, dy)
    in pixels (bilinear, border values repeated): ``out(p) = x(p - v)``, so ``dx > 0`` moves content right and
    ``dy > 0`` moves it down. ``velocity = 0`` returns ``x`` up to float rounding."""
    n, c, h, w = x.shape
    ys = (2 * torch.arange(h, device=x.device, dtype=x.dtype) + 1) / h - 1  # pixel centres (align_corners=False)
    xs = (2 * torch.arange(w, device=x.device, dtype=x.dtype) + 1) / w - 1
    base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)  # (H, W, 2) as (x, y)
    step = velocity * torch.tensor([2 / w, 2 / h], device=x.device, dtype=x.dtype)  # pixels -> grid units
    grid = base[None] - rearrange(step, "n c two -> (n c) 1 1 two")
    out = F.grid_sample(rearrange(x, "n c h w -> (n c) 1 h w"), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return rearrange(out, "(n c) 1 h w -> n c h w", n=n)


class FrameTextShift(_PromptTimesOffset):
    """Per-frame translation of the features by a velocity from the prompt and the frame's offset from the key
    frame (an extension, not in the paper; ``VideoUNet(frame_text_shift=True)``), applied after every temporal
    convolution (after :class:`FrameTextModulation` where both are on):

        ``h_f,c <- shift(h_f,c, v_f,c)``,  ``v_f = s * W rms_normalise((A t) * (B PE(f - (F - 1) / 2)))``

    in pixels of that layer, one velocity per channel (so the layer can move the channels that carry the key
    frame's appearance and leave those that carry the input noise). ``W`` is zero-initialised, so the layer is
    the identity at initialisation (bilinear sampling at the pixel centres, exact).

    Why: a translation is antisymmetric about the object (it adds on one side and removes on the other), so the
    FiLM's gradient ``sum_pixels dL/dh * h`` nearly cancels over it. The gradient of a shift at ``v = 0`` is
    ``-sum_pixels dL/dh * grad h``, which is what a translation looks like to first order: it points along
    the motion, with its sign. It acts on the decoder's features after the AppearNet injections, so it can
    move the key frame's appearance.

    Scale: the raw product has an RMS of ~0.05 (and a prompt and its opposite differ by a third of that), so
    ``W`` would need entries of ~10 for a shift of a pixel, thousands of Adam steps away; measured: after 500
    steps the velocities were ~0.01 px. So the product is RMS-normalised and multiplied by ``s``
    (``velocity_scale``, 4 px).

    Measured (shipped base model, phase 5, ``configs/video_text_shift.yaml``, trained together with
    :func:`~microcinema.systems.microcinema.noise_prior.hide_motion_at_high_noise`): the learned velocities stay small (RMS at most
    0.17 px per layer, largest in the middle and the first decoder level), and zeroing every ``W`` of the trained
    model costs 2 of 30 motions on the tuning set (30/30 -> 28/30). Most of phase 5's gain comes from hiding the
    motion at high noise; this layer adds a little. It costs ~45 % more time per training step on a CPU
    (``grid_sample``'s backward). Neither this layer without the hidden motion nor the hidden motion without
    this layer was trained (no CPU time); those are the ablations to run.
    """

    def __init__(self, channels: int, text_dim: int, hidden: int = 64, offset_channels: int = 32,
                 velocity_scale: float = 4.0):
        super().__init__(text_dim, hidden, offset_channels)
        self.velocity_scale = velocity_scale
        self.out = zero_module(nn.Linear(hidden, 2 * channels))  # W: zero-initialised, no shift at first

    def velocity(self, pooled_text: torch.Tensor, num_frames: int, like: torch.Tensor) -> torch.Tensor:
        """``(B, F, C, 2)``: each frame's per-channel velocity (dx, dy) in pixels."""
        hidden = self.product(pooled_text, num_frames, like)
        hidden = hidden * torch.rsqrt(hidden.square().mean(-1, keepdim=True) + 1e-8)
        return rearrange(self.velocity_scale * self.out(hidden), "b f (c two) -> b f c two", two=2)

    def forward(self, x: torch.Tensor, pooled_text: torch.Tensor, num_frames: int) -> torch.Tensor:
        return shift_features(x, rearrange(self.velocity(pooled_text, num_frames, x), "b f c two -> (b f) c two"))


class TemporalAttention(nn.Module):
    """Self-attention over frames at every spatial position, as a pre-norm residual branch (section 3.1).

    ``x + Attn(LN(x) + PE(frame))``: tokens are the ``F`` frames of one pixel, ``PE`` is a sinusoidal frame
    position encoding. The output projection is zero-initialised, so the layer is the identity at init.

    ``text_dim`` (an extension, not in the paper; ``VideoUNet(temporal_text=True)``): the pooled prompt
    embedding, through a zero-initialised linear map, is added to every frame's token,
    ``Attn(LN(x) + PE(frame) + W t)``, so which frames attend to which can depend on the words (the direction
    of a motion) directly, not only through what the spatial cross-attention wrote into ``x``.
    """

    def __init__(self, channels: int, head_dim: int = 64, text_dim: int | None = None):
        super().__init__()
        heads = max(1, channels // head_dim)
        check(channels % heads == 0, f"temporal attention: {channels} channels do not split into {heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False)
        zero_module(self.attn.to_out[0])  # zero-initialised output projection: the branch starts at 0
        # zero-initialised: a model inflated (or continued) with it starts exactly as one without
        self.text_proj = zero_module(nn.Linear(text_dim, channels)) if text_dim else None

    def forward(self, x: torch.Tensor, num_frames: int, pooled_text: torch.Tensor | None = None) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = rearrange(x, "(b f) c h w -> (b h w) f c", f=num_frames)
        tokens = self.norm(tokens) + frame_position_encoding(num_frames, x.shape[1], x.device, x.dtype)
        if self.text_proj is not None and pooled_text is not None:
            tokens = tokens + repeat(self.text_proj(pooled_text), "b c -> (b n) 1 c", n=height * width)
        out = self.attn(tokens)
        return x + rearrange(out, "(b h w) f c -> (b f) c h w", h=height, w=width)


# ----------------------------------------------------------------------------------------------------------
# appearance injection (section 3.2)
# ----------------------------------------------------------------------------------------------------------


def group_norm_3d_stats(x: torch.Tensor, num_groups: int, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of 3D GroupNorm (eq. 1) of ``x`` ``(B, C, F, H, W)``.

    Statistics are per sample and per channel group over ``C/G x F x H x W`` (frames included, not per
    frame); both are returned broadcastable to ``x``, ``(B, C, 1, 1, 1)``.
    """
    grouped = rearrange(x, "b (g c) f h w -> b g (c f h w)", g=num_groups).float()  # fp32 statistics
    mean = grouped.mean(dim=-1)
    std = (grouped.var(dim=-1, unbiased=False) + eps).sqrt()
    per_channel = x.shape[1] // num_groups
    return tuple(repeat(s, "b g -> b (g c) 1 1 1", c=per_channel).to(x.dtype) for s in (mean, std))


def group_norm_3d(x: torch.Tensor, num_groups: int, eps: float = 1e-6) -> torch.Tensor:
    """3D GroupNorm without affine parameters (eq. 1): ``(x - mu) / sigma`` over groups x F x H x W."""
    mean, std = group_norm_3d_stats(x, num_groups, eps)
    return (x - mean) / std


class SpadeModulation(nn.Module):
    """SPADE de-normalisation of a main-branch activation by an AppearNet feature (section 3.2, eq. 1-2).

    ``gamma`` and ``beta`` are 3x3 convolutions of the AppearNet feature ``f_a``, zero-initialised. Eq. 2,
    ``o = (gamma + 1) * h_bar + beta`` with ``h_bar`` the 3D GroupNorm of ``h`` (eq. 1), is applied in the
    normalised space and mapped back with the same statistics, ``mu + sigma * o``, which is

        ``h + sigma * (gamma * h_bar + beta)  =  h + gamma * (h - mu) + sigma * beta``.

    Why this form: eq. 2 alone outputs ``h_bar`` at ``gamma = beta = 0``, i.e. it would replace SD's
    activation by its normalised version and the freshly inflated model would not be SD. Undoing the
    normalisation with the activation's own ``mu, sigma`` makes the injection exactly the identity at zero
    init (it is computed as a residual, so ``h + 0`` is bit-exact), keeps the modulation relative to the
    activation's scale (eq. 2's ``gamma``, ``beta`` act on unit-variance values, whatever the magnitude of
    SD's activations at that level), and the statistics are still 3D GroupNorm's over frames x H x W.
    """

    def __init__(
        self, channels: int, feature_channels: int, num_groups: int = 32, kernel_size: int = 3, eps: float = 1e-6
    ):
        super().__init__()
        self.num_groups = _groups(channels, num_groups)
        self.eps = eps
        pad = kernel_size // 2
        self.to_gamma = zero_module(nn.Conv2d(feature_channels, channels, kernel_size, padding=pad))
        self.to_beta = zero_module(nn.Conv2d(feature_channels, channels, kernel_size, padding=pad))

    def forward(self, h: torch.Tensor, feature: torch.Tensor, num_frames: int) -> torch.Tensor:
        video = lambda t: rearrange(t, "(b f) c h w -> b c f h w", f=num_frames)  # noqa: E731
        h = video(h)
        mean, std = group_norm_3d_stats(h, self.num_groups, self.eps)
        gamma, beta = video(self.to_gamma(feature)), video(self.to_beta(feature))
        out = h + gamma * (h - mean) + std * beta  # = mu + sigma * ((gamma + 1) * h_bar + beta), eq. 2
        return rearrange(out, "b c f h w -> (b f) c h w")


class AppearanceInjection(nn.Module):
    """One injection point: ``h + ZeroConv1x1(f_a)``, plus SPADE (:class:`SpadeModulation`) if enabled."""

    def __init__(
        self, channels: int, feature_channels: int, spade: bool, num_groups: int = 32, spade_kernel_size: int = 3
    ):
        super().__init__()
        self.add = zero_module(nn.Conv2d(feature_channels, channels, 1))
        self.spade = SpadeModulation(channels, feature_channels, num_groups, spade_kernel_size) if spade else None

    def forward(self, h: torch.Tensor, feature: torch.Tensor, num_frames: int) -> torch.Tensor:
        out = h if self.spade is None else self.spade(h, feature, num_frames)
        return out + self.add(feature)


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
    convolutions. Measured on the embedded model before this layer: fine shapes (handwritten digits, stars)
    lose their form with the distance from the key frame, while colours and simple shapes hold. Attention
    lets a frame fetch the key frame's appearance from wherever it is, the way reference attention does in
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


# ----------------------------------------------------------------------------------------------------------
# the 3D U-Net
# ----------------------------------------------------------------------------------------------------------


@dataclass
class VideoUNetOutput(BaseOutput):
    """``sample``: the prediction ``(B, C, F, H, W)``."""

    sample: torch.Tensor


@dataclass
class _Ctx:
    """What every layer of one forward pass shares."""

    emb: torch.Tensor
    text: torch.Tensor
    text_bias: torch.Tensor | None
    cross_attention_kwargs: dict[str, Any] | None
    frames: int
    pooled_text: torch.Tensor | None = None  # (B, D), for temporal_text and frame_text_modulation
    key_features: AppearNetOutput | None = None  # the key frame's AppearNet features (B, ...), appearance_attention


def pool_text(text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the text states ``(B, L, D)`` over the kept tokens of ``mask`` ``(B, L)`` (all when ``None``)."""
    if mask is None:
        return text.mean(dim=1)
    weights = mask.to(text.dtype).unsqueeze(-1)
    return (text * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _key(path: str) -> str:
    return path.replace(".", "_")


def _clean_unet_config(config: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


class VideoUNet(ModelMixin, ConfigMixin):
    """The MicroCinema 3D U-Net: an inflated ``UNet2DConditionModel`` with AppearNet (sections 3.1-3.2).

    Config keys:
        unet_config: the wrapped ``UNet2DConditionModel``'s config (SD 1.x/2.x layouts: ``CrossAttnDownBlock2D``
            / ``DownBlock2D``, ``UNetMidBlock2DCrossAttn``, ``CrossAttnUpBlock2D`` / ``UpBlock2D``;
            ``class_embed_type`` supported, ``addition_embed_type`` None or ``"text"``).
        injection: one of :data:`INJECTION_MODES` (paper Table 2); default ``"add_encdec_spade"``.
        condition_channels: channels of the condition latent (default: the U-Net's ``in_channels``).
        temporal_attention_head_dim: width of the temporal (and appearance) attention heads (``channels // it``
            heads, >= 1).
        norm_num_groups: GroupNorm groups of the temporal convs and of SPADE's 3D GroupNorm (default: the
            U-Net's; reduced to a divisor of the channels where needed).
        temporal_dropout: dropout inside the temporal convs.
        spade_kernel_size: kernel of SPADE's gamma/beta convs (3, as the paper's "convolving"; at SD 2.1 scale
            they are ~340M parameters, 1 makes them 9x smaller).
        temporal_text: give the temporal attentions the pooled prompt embedding (see :class:`TemporalAttention`;
            an extension beyond the paper, off by default).
        frame_text_modulation: scale and shift the features after every temporal conv by the prompt times the
            frame's offset from the centre frame (see :class:`FrameTextModulation`; an extension beyond the
            paper, off by default).
        frame_text_shift: translate the features after every temporal conv by a velocity from the prompt times
            the frame's offset (see :class:`FrameTextShift`; an extension beyond the paper, off by default).
        appearance_attention: after every temporal attention, let each frame attend to the key frame's
            AppearNet feature at that resolution (see :class:`AppearanceAttention`; an extension beyond the
            paper, off by default; needs an AppearNet injection mode).

    Build it with :meth:`from_pretrained_2d` (inflate SD / any diffusers U-Net), or ``VideoUNet(unet=...)``
    with an instance; save and load the whole model with ``save_pretrained`` / ``from_pretrained``.
    """

    _supports_gradient_checkpointing = True
    ignore_for_config = ["unet"]

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any] | None = None,
        injection: str = "add_encdec_spade",
        condition_channels: int | None = None,
        temporal_attention_head_dim: int = 64,
        norm_num_groups: int | None = None,
        temporal_dropout: float = 0.0,
        spade_kernel_size: int = 3,
        temporal_text: bool = False,
        frame_text_modulation: bool = False,
        frame_text_shift: bool = False,
        appearance_attention: bool = False,
        unet: UNet2DConditionModel | None = None,
    ):
        super().__init__()
        check(
            injection in INJECTION_MODES,
            f"unknown injection {injection!r}; allowed: {', '.join(INJECTION_MODES)}",
        )
        check(unet is not None or unet_config is not None, "VideoUNet needs unet_config or a unet")
        if unet is None:
            unet = UNet2DConditionModel.from_config(_clean_unet_config(unet_config))
        self.register_to_config(unet_config=_clean_unet_config(unet.config))
        _check_supported(unet)
        self.unet = unet
        self.gradient_checkpointing = False
        groups = norm_num_groups or unet.config.norm_num_groups
        self.condition_channels = int(condition_channels or unet.config.in_channels)

        # temporal layers, keyed by the 2D layer they follow ("down_blocks_0_resnets_1", ...)
        self.temporal_convs = nn.ModuleDict()
        self.temporal_attentions = nn.ModuleDict()
        self.frame_text_modulations = nn.ModuleDict()
        self.frame_text_shifts = nn.ModuleDict()
        for path, resnet in self._layers("resnets"):
            self.temporal_convs[_key(path)] = TemporalConv(resnet.out_channels, groups, temporal_dropout)
            if frame_text_modulation:
                self.frame_text_modulations[_key(path)] = FrameTextModulation(
                    resnet.out_channels, unet.config.cross_attention_dim)
            if frame_text_shift:
                self.frame_text_shifts[_key(path)] = FrameTextShift(resnet.out_channels, unet.config.cross_attention_dim)
        for path, attn in self._layers("attentions"):
            self.temporal_attentions[_key(path)] = TemporalAttention(
                attn.in_channels, temporal_attention_head_dim, unet.config.cross_attention_dim if temporal_text else None)

        # appearance injection (Table 2)
        self.condition_conv_in: nn.Conv2d | None = None
        self.appearnet: AppearNet | None = None
        self.injections = nn.ModuleDict()
        if injection == "concat":
            # == conv_in widened to in_channels + condition_channels with the new input channels zero-
            # initialised; kept as a separate bias-free conv so that unet.conv_in keeps SD's shape and name.
            conv_in = unet.conv_in
            self.condition_conv_in = zero_module(
                nn.Conv2d(self.condition_channels, conv_in.out_channels, conv_in.kernel_size,
                          padding=conv_in.padding, bias=False)
            )
        else:
            self.appearnet = AppearNet(unet, self.condition_channels)
            skip_channels, mid_channels = self.appearnet.feature_channels()
            spade = injection == "add_encdec_spade"
            inject = lambda ch: AppearanceInjection(ch, ch, spade, groups, spade_kernel_size)  # noqa: E731
            if injection in ("add_encdec", "add_encdec_spade"):
                for path, resnet in self._down_resnets():  # AppearNet's feature there has the same channels
                    ch = resnet.out_channels
                    self.injections["enc_" + _key(path)] = inject(ch)
            for k, ch in enumerate(skip_channels):
                self.injections[f"dec_skip_{k}"] = inject(ch)
            if mid_channels is not None:
                self.injections["dec_mid"] = inject(mid_channels)
        # appearance attention (extension): after every temporal attention, to AppearNet's feature at that level
        self.appearance_attentions = nn.ModuleDict()
        self._appearance_sources: dict[str, int | None] = {}  # key -> index in skip_features (None: mid)
        if appearance_attention:
            check(self.appearnet is not None,
                  "appearance_attention needs AppearNet: use an add_* injection, not concat")
            skip_channels, mid_channels = self.appearnet.feature_channels()
            for path, attn in self._layers("attentions"):
                index = self._appearance_source(path)
                channels = mid_channels if index is None else skip_channels[index]
                self._appearance_sources[_key(path)] = index
                self.appearance_attentions[_key(path)] = AppearanceAttention(
                    attn.in_channels, channels, temporal_attention_head_dim)
        for name, child in self.named_children():  # the new modules follow the U-Net's device and dtype
            if name != "unet":
                child.to(device=unet.device, dtype=unet.dtype)

    # ------------------------------------------------------------------ structure

    def _layers(self, kind: str) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of every 2D ResNet or spatial transformer, paths relative to ``self.unet``."""
        blocks = [(f"down_blocks.{i}", b) for i, b in enumerate(self.unet.down_blocks)]
        blocks += [("mid_block", self.unet.mid_block)] if self.unet.mid_block is not None else []
        blocks += [(f"up_blocks.{i}", b) for i, b in enumerate(self.unet.up_blocks)]
        return [
            (f"{name}.{kind}.{j}", layer)
            for name, block in blocks
            for j, layer in enumerate(getattr(block, kind, None) or [])
            if layer is not None
        ]

    def _down_resnets(self) -> list[tuple[str, nn.Module]]:
        """The encoder ResNets (the ``add_encdec`` injection points in the encoder)."""
        return [(path, r) for path, r in self._layers("resnets") if path.startswith("down_blocks.")]

    def _appearance_source(self, path: str) -> int | None:
        """Which AppearNet feature a spatial transformer at ``path`` attends to: the skip produced by the
        encoder ResNet(+attention) of the same level (for ``down_blocks.i.attentions.j`` that very layer's
        copy; for the decoder, the level's last one), or ``None`` for the mid block's feature."""
        if path.startswith("mid_block."):
            return None
        kind, level, _, layer = path.split(".")
        blocks = self.unet.down_blocks
        level = int(level) if kind == "down_blocks" else len(blocks) - 1 - int(level)
        index = 1 + sum(len(b.resnets) + len(b.downsamplers or []) for b in blocks[:level])  # 0 is conv_in
        return index + (int(layer) if kind == "down_blocks" else len(blocks[level].resnets) - 1)

    @property
    def injection_points(self) -> list[str]:
        """Names of the points where the condition enters the main branch (``["conv_in"]`` for ``concat``)."""
        return ["conv_in"] if self.condition_conv_in is not None else list(self.injections.keys())

    @property
    def num_injection_points(self) -> int:
        """How many injection points this mode uses (Table 2 row): 1 for concat; skips + mid (+ encoder ResNets)."""
        return len(self.injection_points)

    # ------------------------------------------------------------------ parameters

    def temporal_parameter_names(self) -> list[str]:
        """Names of the temporal conv and temporal attention parameters (section 3.1)."""
        return [n for n, _ in self.named_parameters() if n.startswith(("temporal_convs.", "temporal_attentions."))]

    def new_parameter_names(self) -> list[str]:
        """Every parameter not inherited from the 2D U-Net: temporal layers, AppearNet, injection convs."""
        return [n for n, _ in self.named_parameters() if not n.startswith("unet.")]

    def parameter_groups(self, lr: float, spatial_lr_scale: float = 0.1) -> list[dict[str, Any]]:
        """AdamW parameter groups (section 4.1): new modules at ``lr``, the inherited 2D weights at
        ``lr * spatial_lr_scale`` (paper: temporal 2e-5, spatial 10x smaller). Frozen parameters are left out;
        empty groups are dropped. Each group also has a ``name`` ("new" / "spatial")."""
        new, spatial = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (spatial if name.startswith("unet.") else new).append(p)
        groups = [dict(params=new, lr=lr, name="new"), dict(params=spatial, lr=lr * spatial_lr_scale, name="spatial")]
        return [g for g in groups if g["params"]]

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained_2d(
        cls,
        pretrained: str | Path | UNet2DConditionModel,
        subfolder: str | None = None,
        unet_kwargs: dict[str, Any] | None = None,
        **video_config: Any,
    ) -> "VideoUNet":
        """Inflate a 2D U-Net: a diffusers U-Net folder or hub id, a pipeline folder (its ``unet/`` subfolder
        is used when present), or a ``UNet2DConditionModel`` instance (which becomes ``model.unet``, not
        copied). Temporal layers and injections start at zero, AppearNet as a copy of the U-Net's encoder.

        ``unet_kwargs`` go to ``UNet2DConditionModel.from_pretrained`` (e.g. ``torch_dtype``, ``revision``);
        ``video_config`` are :class:`VideoUNet` config keys (``injection``, ``condition_channels``, ...).
        """
        allowed = sorted(cls._get_init_keys(cls) - {"self", "unet", "unet_config"})
        unknown = sorted(set(video_config) - set(allowed))
        check(not unknown, f"unknown VideoUNet option(s) {unknown}; allowed: {', '.join(allowed)}")
        if isinstance(pretrained, UNet2DConditionModel):
            unet = pretrained
        else:
            if subfolder is None and (Path(pretrained) / "unet" / "config.json").is_file():
                subfolder = "unet"
            try:
                unet = UNet2DConditionModel.from_pretrained(pretrained, subfolder=subfolder, **(unet_kwargs or {}))
            except OSError as e:
                raise MicroCinemaError(
                    f"cannot load a 2D U-Net from {str(pretrained)!r}: {str(e).splitlines()[0]} "
                    "(expected a diffusers U-Net folder, a pipeline folder with unet/, or a hub id)"
                ) from e
        return cls(unet=unet, **video_config)

    # ------------------------------------------------------------------ forward

    def _checkpointed(self, fn: Any, *args: Any) -> torch.Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(fn, *args)
        return fn(*args)

    def _resnet(self, path: str, resnet: nn.Module, h: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        h = self._checkpointed(resnet, h, ctx.emb)
        h = self._checkpointed(self.temporal_convs[_key(path)], h, ctx.frames)
        if self.frame_text_modulations:
            h = self._checkpointed(self.frame_text_modulations[_key(path)], h, ctx.pooled_text, ctx.frames)
        if self.frame_text_shifts:
            h = self._checkpointed(self.frame_text_shifts[_key(path)], h, ctx.pooled_text, ctx.frames)
        return h

    def _attention(self, path: str, attn: nn.Module, h: torch.Tensor, ctx: _Ctx) -> torch.Tensor:
        h = attn(h, encoder_hidden_states=ctx.text, encoder_attention_mask=ctx.text_bias,
                 cross_attention_kwargs=ctx.cross_attention_kwargs, return_dict=False)[0]
        h = self._checkpointed(self.temporal_attentions[_key(path)], h, ctx.frames, ctx.pooled_text)
        if ctx.key_features is not None and _key(path) in self.appearance_attentions:
            index = self._appearance_sources[_key(path)]
            feature = ctx.key_features.mid_feature if index is None else ctx.key_features.skip_features[index]
            h = self._checkpointed(self.appearance_attentions[_key(path)], h, feature, ctx.frames)
        return h

    def _check_inputs(self, sample, encoder_hidden_states, encoder_attention_mask, condition) -> None:
        check(sample.ndim == 5, f"sample must be (B, C, F, H, W) (use F=1 for images), got shape {tuple(sample.shape)}")
        b, c, f, h, w = sample.shape
        check(c == self.unet.config.in_channels, f"sample has {c} channels, the U-Net takes {self.unet.config.in_channels}")
        check(
            encoder_hidden_states.ndim == 3 and encoder_hidden_states.shape[0] == b,
            f"encoder_hidden_states must be (B={b}, L, D), got shape {tuple(encoder_hidden_states.shape)}",
        )
        if encoder_attention_mask is not None:
            check(
                tuple(encoder_attention_mask.shape) == tuple(encoder_hidden_states.shape[:2]),
                f"encoder_attention_mask must be (B, L) = {tuple(encoder_hidden_states.shape[:2])}, "
                f"got {tuple(encoder_attention_mask.shape)}",
            )
        if condition is not None:
            cc = self.condition_channels
            check(
                condition.ndim == 5 and condition.shape[0] == b and condition.shape[1] == cc
                and condition.shape[2] in (1, f) and tuple(condition.shape[3:]) == (h, w),
                f"condition must be (B, C, F, H, W) = ({b}, {cc}, {f} or 1, {h}, {w}) to match the sample, "
                f"got shape {tuple(condition.shape)}",
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> VideoUNetOutput | tuple[torch.Tensor]:
        """Predict noise for a latent video.

        Args:
            sample: noisy latents ``(B, C, F, H, W)``; ``F = 1`` for images.
            timestep: a scalar or ``(B,)``.
            encoder_hidden_states: text states ``(B, L, D)``, shared by all frames.
            encoder_attention_mask: ``(B, L)``, 1 keep / 0 discard (as ``UNet2DConditionModel``).
            condition: the per-frame condition latent ``(B, C_c, F, H, W)`` (key frame repeated, or frames
                interpolated between first and last); ``F = 1`` is broadcast over the frames. ``None``: no
                appearance condition (pure text-to-video, or the "no image" branch of guidance).
            class_labels: ``(B,)`` when the U-Net has a class embedding (ART-V: ``class_embed_type="timestep"``
                with the noise-augmentation level).
            cross_attention_kwargs: passed to the attention processors.
        """
        self._check_inputs(sample, encoder_hidden_states, encoder_attention_mask, condition)
        unet, cfg = self.unet, self.unet.config
        batch, _, frames, height, width = sample.shape
        if cfg.center_input_sample:
            sample = 2 * sample - 1.0

        # 1. time and text, shared by all frames of a sample
        emb = embed_time(unet, timestep, batch, sample.dtype, sample.device, class_labels,
                         class_embed_type=cfg.class_embed_type, class_embeddings_concat=cfg.class_embeddings_concat,
                         text_states=encoder_hidden_states)
        text = unet.process_encoder_hidden_states(encoder_hidden_states, {})
        if condition is not None and condition.shape[2] > 1 and condition.stride(2) == 0:
            condition = condition[:, :, :1]  # a key frame .expand()-ed over frames: run AppearNet on it once
        features: AppearNetOutput | None = None
        key_features: AppearNetOutput | None = None
        if self.appearnet is not None and condition is not None:
            features = self.appearnet(condition, timestep, text, encoder_attention_mask, class_labels,
                                      cross_attention_kwargs)
            if self.appearance_attentions:
                key_features = features.key_frame()
            features = features.broadcast(frames)
        ctx = _Ctx(per_frame(emb, frames), per_frame(text, frames),
                   per_frame(mask_to_bias(encoder_attention_mask, sample.dtype), frames), cross_attention_kwargs, frames,
                   pooled_text=pool_text(text, encoder_attention_mask)
                   if self.config.temporal_text or self.config.frame_text_modulation or self.config.frame_text_shift
                   else None, key_features=key_features)

        # 2. conv_in (+ the concatenated condition, Table 2 "Concat")
        h = unet.conv_in(rearrange(sample, "b c f h w -> (b f) c h w"))
        if self.condition_conv_in is not None and condition is not None:
            condition = condition.expand(-1, -1, frames, -1, -1)
            h = h + self.condition_conv_in(rearrange(condition, "b c f h w -> (b f) c h w"))

        # 3. down: ResNet -> temporal conv -> [encoder injection] -> spatial attention -> temporal attention
        skips: list[torch.Tensor] = [h]
        for i, block in enumerate(unet.down_blocks):
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for j, (resnet, attn) in enumerate(zip(block.resnets, attentions)):
                path = f"down_blocks.{i}.resnets.{j}"
                h = self._resnet(path, resnet, h, ctx)
                if features is not None and "enc_" + _key(path) in self.injections:  # AppearNet's feature at
                    # the same position: the skip its copy of this ResNet (+ attention) produced
                    h = self.injections["enc_" + _key(path)](h, features.skip_features[len(skips)], frames)
                if attn is not None:
                    h = self._attention(f"down_blocks.{i}.attentions.{j}", attn, h, ctx)
                skips.append(h)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                skips.append(h)

        # 4. decoder injection into the skip connections (ControlNet-style)
        if features is not None:
            skips = [self.injections[f"dec_skip_{k}"](s, f, frames) for k, (s, f)
                     in enumerate(zip(skips, features.skip_features))]

        # 5. mid: ResNet, then (attention, ResNet) pairs; its output gets the decoder injection
        if unet.mid_block is not None:
            mid = unet.mid_block
            h = self._resnet("mid_block.resnets.0", mid.resnets[0], h, ctx)
            for j, (attn, resnet) in enumerate(zip(mid.attentions, mid.resnets[1:])):
                h = self._attention(f"mid_block.attentions.{j}", attn, h, ctx)
                h = self._resnet(f"mid_block.resnets.{j + 1}", resnet, h, ctx)
            if features is not None:
                h = self.injections["dec_mid"](h, features.mid_feature, frames)

        # 6. up: concatenate the skip, ResNet -> temporal conv -> attention -> temporal attention
        forward_upsample_size = any(s % 2**unet.num_upsamplers for s in (height, width))
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            n = len(block.resnets)
            res, skips = skips[-n:], skips[:-n]
            if i < len(unet.up_blocks) - 1 and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            attentions = getattr(block, "attentions", None) or [None] * n
            for j, (resnet, attn) in enumerate(zip(block.resnets, attentions)):
                h = torch.cat([h, res.pop()], dim=1)
                h = self._resnet(f"up_blocks.{i}.resnets.{j}", resnet, h, ctx)
                if attn is not None:
                    h = self._attention(f"up_blocks.{i}.attentions.{j}", attn, h, ctx)
            for upsampler in block.upsamplers or []:
                h = upsampler(h, upsample_size)

        # 7. out
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        h = unet.conv_out(h)
        out = rearrange(h, "(b f) c h w -> b c f h w", f=frames)
        return VideoUNetOutput(sample=out) if return_dict else (out,)


def _check_supported(unet: UNet2DConditionModel) -> None:
    """Refuse U-Net layouts the block walk does not cover (one line naming what is allowed)."""
    cfg = unet.config
    allowed = "CrossAttnDownBlock2D/DownBlock2D, UNetMidBlock2DCrossAttn, CrossAttnUpBlock2D/UpBlock2D"
    for block in list(unet.down_blocks) + list(unet.up_blocks) + [unet.mid_block]:
        check(
            block is None or isinstance(block, (CrossAttnDownBlock2D, DownBlock2D, UNetMidBlock2DCrossAttn,
                                                CrossAttnUpBlock2D, UpBlock2D)),
            f"VideoUNet cannot inflate a U-Net with {type(block).__name__}; allowed blocks: {allowed}",
        )
    check(cfg.addition_embed_type in (None, "text"),
          f"VideoUNet supports addition_embed_type None (SD 1.x/2.x) or 'text'; got {cfg.addition_embed_type!r}")
    check(cfg.addition_embed_type is None or cfg.encoder_hid_dim_type is None,
          "VideoUNet supports addition_embed_type 'text' only without encoder_hid_dim_type")
    check(cfg.encoder_hid_dim_type in (None, "text_proj"),
          f"VideoUNet supports encoder_hid_dim_type None or 'text_proj'; got {cfg.encoder_hid_dim_type!r}")


__all__ = [
    "INJECTION_MODES",
    "AppearanceAttention",
    "AppearanceInjection",
    "SpadeModulation",
    "TemporalAttention",
    "TemporalConv",
    "VideoUNet",
    "VideoUNetOutput",
    "frame_position_encoding",
    "spatial_position_encoding",
    "FrameTextModulation",
    "group_norm_3d",
    "group_norm_3d_stats",
    "zero_module",
]
