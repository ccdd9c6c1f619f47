"""AppearNet: the appearance injection network of MicroCinema (paper section 3.2, Fig. 2 and 3).

AppearNet "inherits the encoder and the middle part of the backbone network" (ControlNet-style): it is a
copy of a ``UNet2DConditionModel``'s ``conv_in``, time embedding (with ``class_embedding`` when the U-Net
has one), down blocks and mid block, initialised from the U-Net's weights. It reads a per-frame condition
latent video ``(B, C, F, h, w)``, the same timestep and the same text as the main branch, and returns its
multi-scale features; :class:`~microcinema.models.unet3d.VideoUNet` adds them (through zero-initialised convs,
and optionally SPADE de-normalisation) into its encoder and decoder at matching scales.

The condition can be anything per frame: the key frame latent repeated N times (base model, section 3.2),
or latents linearly interpolated between the first and last frame (temporal interpolation model,
section 3.1). A condition with ``F = 1`` is run once and its features are broadcast over the frames by the
caller, which is exactly the repeated key frame at 1/N of the cost.

AppearNet works frame by frame (it has no temporal layers): the main branch's temporal layers mix frames.

The injections of Table 2 live here too: :data:`INJECTION_MODES`, :class:`AppearanceInjection` (a zero
1x1 conv, plus :class:`SpadeModulation`, the de-normalisation of eq. 1-2 with 3D GroupNorm statistics).

This module also holds the small conditioning helpers that :class:`VideoUNet` shares with it (timestep
embedding, text-mask bias), so both branches embed time and text the same way ``UNet2DConditionModel`` does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn

from microcinema.core.errors import check
from microcinema.models.layers import gcd_groups, zero_module

#: The appearance injections of the paper's Table 2, in its order (:class:`~microcinema.models.unet3d.VideoUNet`'s
#: ``injection``): ``concat`` needs no AppearNet; the others inject its features with :class:`AppearanceInjection`.
INJECTION_MODES: tuple[str, ...] = ("concat", "add_dec", "add_encdec", "add_encdec_spade")


# ----------------------------------------------------------------------------------------------------------
# conditioning helpers shared with VideoUNet (mirror UNet2DConditionModel.forward, steps 0-1)
# ----------------------------------------------------------------------------------------------------------


def timestep_batch(timestep: torch.Tensor | float | int, batch: int, device: torch.device) -> torch.Tensor:
    """Timesteps as a ``(batch,)`` tensor from a scalar, a 0-d, ``(1,)`` or ``(batch,)`` tensor."""
    if not torch.is_tensor(timestep):
        timestep = torch.tensor(timestep, dtype=torch.float32 if isinstance(timestep, float) else torch.int64)
    timestep = timestep.to(device).reshape(-1) if timestep.ndim == 0 else timestep.to(device)
    check(
        timestep.ndim == 1 and timestep.shape[0] in (1, batch),
        f"timestep must be a scalar or have shape ({batch},) (one per sample), got shape {tuple(timestep.shape)}",
    )
    return timestep.expand(batch)


def embed_time(
    owner: nn.Module,
    timestep: torch.Tensor | float | int,
    batch: int,
    dtype: torch.dtype,
    device: torch.device,
    class_labels: torch.Tensor | None = None,
    *,
    class_embed_type: str | None = None,
    class_embeddings_concat: bool = False,
    text_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``(batch, D)`` time embedding, as ``UNet2DConditionModel`` computes it.

    ``owner`` has the U-Net's ``time_proj``, ``time_embedding``, ``class_embedding`` and ``time_embed_act``
    (a ``UNet2DConditionModel`` or an :class:`AppearNet`). With ``class_embed_type="timestep"`` (ART-V's
    noise-augmentation level) ``class_labels`` are projected like timesteps, then embedded and added. When
    the owner has an ``add_embedding`` (diffusers' ``addition_embed_type="text"``: attention pooling of the
    prompt's token states), its embedding of ``text_states`` ``(B, L, D)`` is added too.
    """
    t_emb = owner.time_proj(timestep_batch(timestep, batch, device)).to(dtype=dtype)
    emb = owner.time_embedding(t_emb, None)
    if owner.class_embedding is not None:
        check(class_labels is not None, "this U-Net has a class embedding: pass class_labels of shape (B,)")
        labels = class_labels.to(device)
        labels = labels.expand(batch) if labels.ndim == 0 else labels
        check(labels.shape[0] == batch, f"class_labels must have {batch} rows, got shape {tuple(labels.shape)}")
        if class_embed_type == "timestep":
            labels = owner.time_proj(labels).to(dtype=dtype)
        class_emb = owner.class_embedding(labels).to(dtype=dtype)
        emb = torch.cat([emb, class_emb], dim=-1) if class_embeddings_concat else emb + class_emb
    add_embedding = getattr(owner, "add_embedding", None)
    if add_embedding is not None:
        check(text_states is not None, "this U-Net embeds the prompt into its time embedding: pass text_states")
        emb = emb + add_embedding(text_states).to(dtype=dtype)
    if owner.time_embed_act is not None:
        emb = owner.time_embed_act(emb)
    return emb


def mask_to_bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A ``(B, L)`` keep(1)/discard(0) text mask as the ``(B, 1, L)`` additive bias diffusers' attention uses."""
    if mask is None:
        return None
    return ((1 - mask.to(dtype)) * -10000.0).unsqueeze(1)


def per_frame(x: torch.Tensor | None, num_frames: int) -> torch.Tensor | None:
    """Repeat a per-sample tensor ``(B, ...)`` for every frame: ``(B * F, ...)`` in ``(b f)`` order."""
    return None if x is None else x.repeat_interleave(num_frames, dim=0)


# ----------------------------------------------------------------------------------------------------------
# AppearNet
# ----------------------------------------------------------------------------------------------------------


@dataclass
class AppearNetOutput:
    """AppearNet's multi-scale features, per frame, in ``(b f) c h w`` layout.

    ``skip_features`` follow the U-Net's skip connections one to one (``conv_in``'s output, then every
    ResNet(+attention) output and every downsampler output of the down blocks, as ``UNet2DConditionModel``
    collects ``down_block_res_samples``); ``mid_feature`` is the mid block's output. ``num_frames`` is the
    number of frames the features were computed for (1 when the condition was a single key frame).
    """

    skip_features: tuple[torch.Tensor, ...]
    mid_feature: torch.Tensor | None
    num_frames: int

    def key_frame(self) -> "AppearNetOutput":
        """One frame's features ``(B, ...)``: the centre frame's, which is the base model's key frame (the
        only frame when the condition was a single key frame)."""
        if self.num_frames == 1:
            return self

        def centre(feature: torch.Tensor | None) -> torch.Tensor | None:
            if feature is None:
                return None
            return rearrange(feature, "(b f) ... -> b f ...", f=self.num_frames)[:, self.num_frames // 2]

        return AppearNetOutput(tuple(centre(f) for f in self.skip_features), centre(self.mid_feature), 1)

    def broadcast(self, num_frames: int) -> "AppearNetOutput":
        """Features for ``num_frames`` frames (repeats single-frame features; a no-op otherwise)."""
        if self.num_frames == num_frames:
            return self
        check(self.num_frames == 1, f"AppearNet features have {self.num_frames} frames, the video {num_frames}")
        return AppearNetOutput(
            tuple(per_frame(f, num_frames) for f in self.skip_features),
            per_frame(self.mid_feature, num_frames),
            num_frames,
        )


class AppearNet(nn.Module):
    """A ControlNet-style copy of a U-Net's encoder and middle, fed a per-frame condition latent video.

    Built from a ``UNet2DConditionModel`` whose weights it copies (``conv_in``, ``time_proj``,
    ``time_embedding``, ``class_embedding``, ``add_embedding`` when there is one, ``time_embed_act``,
    ``down_blocks``, ``mid_block``). It has no
    configuration of its own: it is saved and loaded as part of :class:`~microcinema.models.unet3d.VideoUNet`
    (``appearnet.*`` keys), which rebuilds it from the U-Net config.

    Args:
        unet: the 2D U-Net to copy (not modified, not kept).
        condition_channels: channels of the condition latent; defaults to the U-Net's ``in_channels``. When
            it differs, ``conv_in`` copies the U-Net's weights for the shared input channels and starts the
            others at zero.
    """

    def __init__(self, unet: nn.Module, condition_channels: int | None = None):
        super().__init__()
        config = unet.config
        self.class_embed_type: str | None = config.class_embed_type
        self.class_embeddings_concat: bool = bool(config.class_embeddings_concat)
        self.condition_channels = int(condition_channels or config.in_channels)

        self.conv_in = self._copy_conv_in(unet.conv_in, self.condition_channels)
        self.time_proj = copy.deepcopy(unet.time_proj)
        self.time_embedding = copy.deepcopy(unet.time_embedding)
        self.class_embedding = copy.deepcopy(unet.class_embedding)
        # the pooled-prompt embedding of addition_embed_type="text" (None for SD 1.x/2.x U-Nets)
        self.add_embedding = copy.deepcopy(unet.add_embedding) if config.addition_embed_type == "text" else None
        self.time_embed_act = copy.deepcopy(unet.time_embed_act)
        self.down_blocks = copy.deepcopy(unet.down_blocks)
        self.mid_block = copy.deepcopy(unet.mid_block)
        self.gradient_checkpointing = False  # set by VideoUNet.enable_gradient_checkpointing()

    @staticmethod
    def _copy_conv_in(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
        if in_channels == conv.in_channels:
            return copy.deepcopy(conv)
        new = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, padding=conv.padding,
                        device=conv.weight.device, dtype=conv.weight.dtype)
        with torch.no_grad():
            new.weight.zero_()
            shared = min(in_channels, conv.in_channels)
            new.weight[:, :shared] = conv.weight[:, :shared]
            new.bias.copy_(conv.bias)
        return new

    def feature_channels(self) -> tuple[list[int], int | None]:
        """Channels of ``skip_features`` (in order) and of ``mid_feature`` (None without a mid block)."""
        channels = [self.conv_in.out_channels]
        for block in self.down_blocks:
            channels += [resnet.out_channels for resnet in block.resnets]
            channels += [d.out_channels for d in (block.downsamplers or [])]
        mid = self.mid_block.resnets[-1].out_channels if self.mid_block is not None else None
        return channels, mid

    def forward(
        self,
        condition: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        class_labels: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
    ) -> AppearNetOutput:
        """Features of ``condition`` ``(B, C, F, h, w)`` at the U-Net's scales (``F = 1`` is allowed).

        ``encoder_hidden_states`` ``(B, L, D)`` and ``encoder_attention_mask`` ``(B, L)`` (1 keep, 0 discard)
        are shared by all frames, as is ``timestep`` (scalar or ``(B,)``).
        """
        check(condition.ndim == 5, f"condition must be (B, C, F, H, W), got shape {tuple(condition.shape)}")
        batch, _, frames = condition.shape[:3]
        emb = embed_time(self, timestep, batch, condition.dtype, condition.device, class_labels,
                         class_embed_type=self.class_embed_type,
                         class_embeddings_concat=self.class_embeddings_concat, text_states=encoder_hidden_states)
        emb = per_frame(emb, frames)
        text = per_frame(encoder_hidden_states, frames)
        text_bias = per_frame(mask_to_bias(encoder_attention_mask, condition.dtype), frames)

        h = self.conv_in(rearrange(condition, "b c f h w -> (b f) c h w"))
        skips: tuple[torch.Tensor, ...] = (h,)
        for block in self.down_blocks:
            attentions = getattr(block, "attentions", None) or [None] * len(block.resnets)
            for resnet, attn in zip(block.resnets, attentions):
                if self.gradient_checkpointing and torch.is_grad_enabled():
                    h = self._gradient_checkpointing_func(resnet, h, emb)
                else:
                    h = resnet(h, emb)
                if attn is not None:
                    h = attn(h, encoder_hidden_states=text, encoder_attention_mask=text_bias,
                             cross_attention_kwargs=cross_attention_kwargs, return_dict=False)[0]
                skips += (h,)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                skips += (h,)
        mid = None
        if self.mid_block is not None:
            mid = self.mid_block(h, emb, encoder_hidden_states=text, encoder_attention_mask=text_bias,
                                 cross_attention_kwargs=cross_attention_kwargs)
        return AppearNetOutput(skips, mid, frames)


__all__ = ["AppearNet", "AppearNetOutput", "embed_time", "mask_to_bias", "per_frame", "timestep_batch"]


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
        self.num_groups = gcd_groups(channels, num_groups)
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
