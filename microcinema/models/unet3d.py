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

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import (
    CrossAttnDownBlock2D,
    CrossAttnUpBlock2D,
    DownBlock2D,
    UNetMidBlock2DCrossAttn,
    UpBlock2D,
)
from diffusers.utils import BaseOutput
from einops import rearrange
from torch import nn

from microcinema.models.appearnet import (INJECTION_MODES, AppearanceInjection, AppearNet, AppearNetOutput, embed_time,
                                          mask_to_bias, per_frame)
from microcinema.models.extensions import AppearanceAttention, FrameTextModulation, FrameTextShift
from microcinema.models.layers import frame_position_encoding, gcd_groups, zero_module
from microcinema.models.unet2d import clean_config, load_image_unet
from microcinema.core.errors import check



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
        groups = gcd_groups(channels, num_groups)
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


class TemporalAttention(nn.Module):
    """Self-attention over frames at every spatial position, as a pre-norm residual branch (section 3.1).

    ``x + Attn(LN(x) + PE(frame))``: tokens are the ``F`` frames of one pixel, ``PE`` is a sinusoidal frame
    position encoding. The output projection is zero-initialised, so the layer is the identity at init.

    """

    def __init__(self, channels: int, head_dim: int = 64):
        super().__init__()
        heads = max(1, channels // head_dim)
        check(channels % heads == 0, f"temporal attention: {channels} channels do not split into {heads} heads")
        self.norm = nn.LayerNorm(channels)
        self.attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads, bias=False)
        zero_module(self.attn.to_out[0])  # zero-initialised output projection: the branch starts at 0

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        height, width = x.shape[-2:]
        tokens = rearrange(x, "(b f) c h w -> (b h w) f c", f=num_frames)
        tokens = self.norm(tokens) + frame_position_encoding(num_frames, x.shape[1], x.device, x.dtype)
        out = self.attn(tokens)
        return x + rearrange(out, "(b h w) f c -> (b f) c h w", h=height, w=width)


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
    pooled_text: torch.Tensor | None = None  # (B, D), for the frame-text extensions
    key_features: AppearNetOutput | None = None  # the key frame's AppearNet features (B, ...), appearance_attention


def pool_text(text: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of the text states ``(B, L, D)`` over the kept tokens of ``mask`` ``(B, L)`` (all when ``None``)."""
    if mask is None:
        return text.mean(dim=1)
    weights = mask.to(text.dtype).unsqueeze(-1)
    return (text * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _key(path: str) -> str:
    return path.replace(".", "_")


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
            unet = UNet2DConditionModel.from_config(clean_config(unet_config))
        self.register_to_config(unet_config=clean_config(unet.config))
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
                attn.in_channels, temporal_attention_head_dim)

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
        """Inflate a 2D U-Net: ``"embedded"``, a diffusers U-Net folder or hub id, a pipeline folder (its ``unet/``
        subfolder is used when present; :func:`~microcinema.models.unet2d.load_image_unet`), or a
        ``UNet2DConditionModel`` instance (which becomes ``model.unet``, not copied). Temporal layers and
        injections start at zero, AppearNet as a copy of the U-Net's encoder.

        ``unet_kwargs`` go to ``UNet2DConditionModel.from_pretrained`` (e.g. ``torch_dtype``, ``revision``);
        ``video_config`` are :class:`VideoUNet` config keys (``injection``, ``condition_channels``, ...).
        """
        allowed = sorted(cls._get_init_keys(cls) - {"self", "unet", "unet_config"})
        unknown = sorted(set(video_config) - set(allowed))
        check(not unknown, f"unknown VideoUNet option(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(unet=load_image_unet(pretrained, subfolder, **(unet_kwargs or {})), **video_config)

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
        h = self._checkpointed(self.temporal_attentions[_key(path)], h, ctx.frames)
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
                   if self.config.frame_text_modulation or self.config.frame_text_shift
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
    "TemporalAttention",
    "TemporalConv",
    "VideoUNet",
    "VideoUNetOutput",
]
