"""The ART-V network (paper section 3.1, Fig. 3, appendix A): an image U-Net conditioned on two reference
frames, an anchor frame and the references' noise level, plus the mask network of masked diffusion.

:class:`ARTVModel` is one diffusers model (``ModelMixin``, ``ConfigMixin``: one ``save_pretrained`` folder,
one module for the trainer, its EMA and DDP) holding:

* ``unet``: a diffusers ``UNet2DConditionModel`` (SD 2.1 loads unchanged; the embedded family's text-to-image
  U-Net), the dynamic-noise network ``Phi_dynamic``. No temporal layers (section 3.1).
* ``adapter``: a diffusers ``T2IAdapter`` (full adapter, no pixel unshuffle: it reads latents) on the two
  previous frames' latents concatenated on channels (``2 x 4 = 8`` channels, Table 2 ``cin 8``), one feature
  per U-Net encoder level, added into the encoder through diffusers' ``down_intrablock_additional_residuals``
  path; each feature goes through a zero-initialised 1x1 conv (``adapter_zero_convs``), so the adapter adds
  exactly zero at the start.
* ``anchor_embed`` (:class:`AnchorTokens`): the anchor frame's latent as tokens (a patch embedding to
  ``cross_attention_dim``, zero-initialised, plus a learned positional grid), concatenated after the text
  tokens on the sequence axis: the cross-attention sees both (section 3.4). The text attention mask (MiniLM has
  one, CLIP none) is extended with the anchor tokens' (1, or 0 for a dropped anchor).
* the references' noise level (section 3.3) embedded like a timestep and added to the timestep embedding:
  ``class_embed_type="timestep"`` with ``class_labels = level``; when an image U-Net is converted the class
  embedding is added with its last linear zero-initialised, so it adds exactly zero at the start.
* ``mask_net`` (``masked_diffusion=True``, section 3.2): the mask network
  (:func:`~microcinema.systems.artv.masked_diffusion.make_mask_unet`).

At initialisation the converted model computes the image U-Net's noise prediction exactly when the anchor is
absent or dropped (adapter and level embedding add zero). With anchor tokens in the softmax, exact equality
is impossible: zero tokens still take attention weight (their logit is 0), which scales every cross-attention
output by ``Z / (Z + n_anchor)``; what holds at init is that the output does not depend on the anchor's
content (the patch embedding is zero). The combined prediction at init is
``sigmoid(mask_init_bias) * eps_static + ...`` unless the references are dropped (then the mask is 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import T2IAdapter, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import Tensor, nn

from microcinema.core.diffusion import alphas_cumprod_of
from microcinema.core.errors import check
from microcinema.models.layers import zero_module
from microcinema.models.unet2d import clean_config, load_image_unet
from microcinema.systems.artv.masked_diffusion import (alphas_cumprod_at, combine, default_mask_channels,
                                                       make_mask_unet, predict_mask, static_noise)
from microcinema.systems.artv.noise_augmentation import augment, check_levels

__all__ = ["ARTVModel", "ARTVOutput", "AnchorTokens", "add_level_embedding", "load_image_unet"]


@dataclass
class ARTVOutput(BaseOutput):
    """``sample``: the noise prediction (eq. 7: the masked combination, or ``eps_dynamic`` without masked
    diffusion); ``eps_dynamic``: the U-Net's prediction; ``mask``: ``m`` ``(B, 1, H, W)`` or ``None``."""

    sample: Tensor
    eps_dynamic: Tensor | None = None
    mask: Tensor | None = None


class AnchorTokens(nn.Module):
    """The anchor latent as cross-attention tokens: a ``patch_size`` patch embedding (``Conv2d`` with stride
    ``patch_size``, zero-initialised) plus a learned positional grid (``grid_size`` squared, std 0.02, resized
    bilinearly to other latent sizes), flattened to ``(B, N, dim)``."""

    def __init__(self, in_channels: int, dim: int, patch_size: int, grid_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = zero_module(nn.Conv2d(in_channels, dim, patch_size, stride=patch_size))
        self.pos = nn.Parameter(torch.randn(1, dim, grid_size, grid_size) * 0.02)

    def forward(self, anchor: Tensor) -> Tensor:
        x = self.proj(anchor)
        pos = self.pos
        if pos.shape[-2:] != x.shape[-2:]:
            pos = F.interpolate(pos.float(), size=x.shape[-2:], mode="bilinear", align_corners=False).to(pos.dtype)
        return (x + pos).flatten(2).transpose(1, 2)


def add_level_embedding(unet: UNet2DConditionModel) -> UNet2DConditionModel:
    """Give ``unet`` (in place) the noise-level embedding of section 3.3: ``class_embed_type="timestep"`` (the
    level goes through the U-Net's sinusoidal ``time_proj`` and a ``TimestepEmbedding`` whose sum with the
    timestep embedding conditions every ResNet), its last linear zero-initialised so the U-Net computes what
    it did. A U-Net that already has ``class_embed_type="timestep"`` is returned unchanged."""
    kind = unet.config.class_embed_type
    if kind == "timestep":
        return unet
    check(kind is None and unet.config.num_class_embeds is None and not unet.config.class_embeddings_concat,
          f"the image U-Net already has a class embedding ({kind or 'num_class_embeds'}); ART-V needs its "
          "class_labels for the reference noise level")
    te = unet.time_embedding
    embedding = TimestepEmbedding(te.linear_1.in_features, te.linear_2.out_features, act_fn=unet.config.act_fn)
    zero_module(embedding.linear_2)
    unet.class_embedding = embedding.to(device=unet.device, dtype=unet.dtype)
    unet.register_to_config(class_embed_type="timestep")
    return unet


def _check_unet(unet: UNet2DConditionModel) -> None:
    config = unet.config
    check(config.cross_attention_dim is not None and config.encoder_hid_dim is None
          and config.addition_embed_type is None,
          "ART-V needs a text-conditioned UNet2DConditionModel without encoder_hid_dim / addition embeddings "
          "(SD 1.x / 2.x layouts)")
    check(isinstance(config.cross_attention_dim, int),
          f"ART-V needs one cross_attention_dim for every block, got {config.cross_attention_dim}")


class ARTVModel(ModelMixin, ConfigMixin):
    """ART-V's network (see the module docstring). Build it with :meth:`from_unet`; save and load it with
    ``save_pretrained`` / ``from_pretrained``.

    Config keys:
        unet_config: the ``UNet2DConditionModel``'s config (with ``class_embed_type="timestep"``).
        num_references: previous frames fed to the adapter (2 in the paper: ``y(i-1), y(i-2)``).
        adapter_num_res_blocks: ResNets per adapter level (T2I-Adapter's default 2, the paper's ``nums_rb``).
        anchor_patch_size: patch size of the anchor tokens (latent pixels per token side).
        anchor_grid_size: side of the learned positional grid (default ``sample_size // anchor_patch_size``).
        masked_diffusion: build the mask network and combine ``eps_static`` / ``eps_dynamic`` (section 3.2);
            ``False`` is the paper's ablation "without masked diffusion".
        mask_block_out_channels: the mask network's widths (default a fifth of the U-Net's, Table 2).
        mask_layers_per_block: ResNets per mask-network level (Table 2: 2).
        mask_norm_num_groups: the mask network's GroupNorm groups (its widths must be multiples of it).
        mask_init_bias: the mask logit at init (0: ``m = 0.5``).
    """

    ignore_for_config = ["unet"]
    _supports_gradient_checkpointing = True  # enable_gradient_checkpointing(): the U-Net's and mask network's blocks

    @register_to_config
    def __init__(
        self,
        unet_config: dict[str, Any] | None = None,
        num_references: int = 2,
        adapter_num_res_blocks: int = 2,
        anchor_patch_size: int = 2,
        anchor_grid_size: int | None = None,
        masked_diffusion: bool = True,
        mask_block_out_channels: list[int] | None = None,
        mask_layers_per_block: int = 2,
        mask_norm_num_groups: int = 8,
        mask_init_bias: float = 0.0,
        unet: UNet2DConditionModel | None = None,
    ):
        super().__init__()
        check(unet is not None or unet_config is not None, "ARTVModel needs unet_config or a unet")
        check(isinstance(num_references, int) and num_references >= 1,
              f"num_references must be an integer >= 1, got {num_references!r}")
        check(isinstance(anchor_patch_size, int) and anchor_patch_size >= 1,
              f"anchor_patch_size must be an integer >= 1, got {anchor_patch_size!r}")
        if unet is None:
            unet = UNet2DConditionModel.from_config(clean_config(unet_config))
        _check_unet(unet)
        add_level_embedding(unet)
        self.unet = unet
        self.register_to_config(unet_config=clean_config(unet.config))
        config = unet.config
        latent = int(config.in_channels)
        channels = list(config.block_out_channels)
        self.adapter = T2IAdapter(in_channels=num_references * latent, channels=channels,
                                  num_res_blocks=adapter_num_res_blocks, downscale_factor=1,
                                  adapter_type="full_adapter")
        self.adapter_zero_convs = nn.ModuleList(zero_module(nn.Conv2d(c, c, 1)) for c in channels)
        sample_size = config.sample_size if isinstance(config.sample_size, int) else max(config.sample_size or [64])
        grid = anchor_grid_size or max(1, int(sample_size or 64) // anchor_patch_size)
        self.anchor_embed = AnchorTokens(latent, int(config.cross_attention_dim), anchor_patch_size, grid)
        self.mask_net = None
        if masked_diffusion:
            widths = list(mask_block_out_channels or default_mask_channels(channels))
            self.mask_net = make_mask_unet((1 + num_references) * latent, widths,
                                           layers_per_block=mask_layers_per_block, norm_num_groups=mask_norm_num_groups,
                                           sample_size=config.sample_size, init_bias=mask_init_bias)
        for name, child in self.named_children():  # the new modules follow the U-Net's device and dtype
            if name != "unet" and any(p.dtype != unet.dtype or p.device != unet.device for p in child.parameters()):
                child.to(device=unet.device, dtype=unet.dtype)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_unet(cls, unet: str | Path | UNet2DConditionModel, subfolder: str | None = None,
                  unet_kwargs: dict[str, Any] | None = None, **options: Any) -> "ARTVModel":
        """ART-V from an image U-Net: an instance (it becomes ``model.unet``, converted in place), ``"embedded"``,
        a U-Net folder or a pipeline folder (its ``unet/``; :func:`~microcinema.models.unet2d.load_image_unet`). ``options`` are config keys (``masked_diffusion``,
        ``anchor_patch_size``, ...); ``unet_kwargs`` go to ``UNet2DConditionModel.from_pretrained``. The new
        parts start at zero: at init the model is the image U-Net (see the module docstring)."""
        allowed = sorted(cls._get_init_keys(cls) - {"self", "unet", "unet_config"})
        unknown = sorted(set(options) - set(allowed))
        check(not unknown, f"unknown ARTVModel option(s) {unknown}; allowed: {', '.join(allowed)}")
        return cls(unet=load_image_unet(unet, subfolder, **(unet_kwargs or {})), **options)

    # ------------------------------------------------------------------ parameters

    def new_parameter_names(self) -> list[str]:
        """Parameters not inherited from the image U-Net: adapter, zero convs, anchor tokens, level embedding,
        mask network."""
        return [n for n, _ in self.named_parameters()
                if not n.startswith("unet.") or n.startswith("unet.class_embedding.")]

    def parameter_groups(self, lr: float, pretrained_lr_scale: float = 1.0) -> list[dict[str, Any]]:
        """AdamW groups: new parts at ``lr``, the inherited U-Net weights at ``lr * pretrained_lr_scale`` (the
        paper trains everything end to end at one rate: scale 1). Frozen parameters and empty groups dropped."""
        new_names = set(self.new_parameter_names())
        new, old = [], []
        for name, p in self.named_parameters():
            if p.requires_grad:
                (new if name in new_names else old).append(p)
        groups = [dict(params=new, lr=lr, name="new"), dict(params=old, lr=lr * pretrained_lr_scale, name="pretrained")]
        return [g for g in groups if g["params"]]

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.in_channels)

    # ------------------------------------------------------------------ pieces

    def adapter_features(self, refs: Tensor) -> list[Tensor]:
        """The adapter's encoder features of (noise-augmented) references ``(B, R, C, H, W)``, after the zero
        convs: one per U-Net encoder level."""
        feats = self.adapter(refs.flatten(1, 2))
        return [conv(f) for conv, f in zip(self.adapter_zero_convs, feats)]

    def anchor_tokens(self, anchor: Tensor) -> Tensor:
        """The anchor latent ``(B, C, h, w)`` as ``(B, N, cross_attention_dim)`` tokens."""
        return self.anchor_embed(anchor)

    def _check_inputs(self, sample: Tensor, encoder_hidden_states: Tensor, refs: Tensor | None,
                      anchor: Tensor | None, mask: Tensor | None) -> None:
        c = self.latent_channels
        check(sample.ndim == 4 and sample.shape[1] == c,
              f"sample must be a latent (B, {c}, H, W), got shape {tuple(sample.shape)}")
        b, _, h, w = sample.shape
        d = self.unet.config.cross_attention_dim
        check(encoder_hidden_states.ndim == 3 and encoder_hidden_states.shape[0] == b
              and encoder_hidden_states.shape[2] == d,
              f"encoder_hidden_states must be (B={b}, L, {d}), got shape {tuple(encoder_hidden_states.shape)}")
        if mask is not None:
            check(tuple(mask.shape) == tuple(encoder_hidden_states.shape[:2]),
                  f"encoder_attention_mask must be (B, L) = {tuple(encoder_hidden_states.shape[:2])}, "
                  f"got {tuple(mask.shape)}")
        r = self.config.num_references
        if refs is not None:
            check(refs.ndim == 5 and refs.shape[0] == b and refs.shape[1] == r,
                  f"refs must be (B={b}, {r} references, {c}, H, W) (previous frames, newest first), got shape "
                  f"{tuple(refs.shape)}")
            check(refs.shape[2] == c and tuple(refs.shape[3:]) == (h, w),
                  f"refs must be (B, {r}, {c}, {h}, {w}) to match the sample, got shape {tuple(refs.shape)}")
        if anchor is not None:
            p = self.config.anchor_patch_size
            check(anchor.ndim == 4 and anchor.shape[0] == b and anchor.shape[1] == c,
                  f"anchor must be a latent (B={b}, {c}, H, W), got shape {tuple(anchor.shape)}")
            check(anchor.shape[2] % p == 0 and anchor.shape[3] % p == 0,
                  f"anchor latent sides must be multiples of anchor_patch_size={p}, got {tuple(anchor.shape[2:])}")

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        sample: Tensor,
        timestep: Tensor | float,
        encoder_hidden_states: Tensor,
        refs: Tensor | None = None,
        anchor: Tensor | None = None,
        ref_level: Tensor | int | None = None,
        *,
        encoder_attention_mask: Tensor | None = None,
        ref_noise: Tensor | None = None,
        anchor_noise: Tensor | None = None,
        ref_keep: Tensor | None = None,
        anchor_keep: Tensor | None = None,
        alphas_cumprod: Any = None,
        return_dict: bool = True,
    ) -> ARTVOutput | tuple:
        """Predict the noise of frame ``i``.

        Args:
            sample: the noisy latent ``y_t`` ``(B, C, H, W)``; ``timestep``: ``t`` (scalar or ``(B,)``, may be
                fractional, as samplers give).
            encoder_hidden_states / encoder_attention_mask: the text tokens ``(B, L, D)`` and their mask
                ``(B, L)`` (1 keep, 0 padding; ``None``: all kept, as CLIP).
            refs: the *clean* previous latents ``(B, R, C, H, W)``, newest first (``y(i-1), y(i-2)``); ``None``:
                no references (the null condition: zero adapter input, mask 0).
            anchor: the clean anchor latent ``(B, C, h, w)``; ``None``: no anchor tokens at all.
            ref_level: the noise-augmentation level ``s`` (scalar or ``(B,)``; default 0): references and
                anchor are corrupted by the forward process at ``s`` (with ``ref_noise`` / ``anchor_noise``;
                drawn from torch's global RNG when ``None``) before the adapter and the anchor tokens see them,
                and ``s`` is embedded (section 3.3). The static noise and the mask network use the clean
                references: the static noise is a copy of ``y(i-1)``, and copying a corrupted frame would put
                the corruption into the video.
            ref_keep / anchor_keep: ``(B,)`` bool, ``False`` drops that condition for that sample (classifier-
                free guidance, section 3.4 / appendix A): dropped references are zeros and force ``m = 0``; a
                dropped anchor's tokens are masked out of the attention.
            alphas_cumprod: the diffusion schedule (a scheduler or its ``alphas_cumprod``; default SD's).
        """
        self._check_inputs(sample, encoder_hidden_states, refs, anchor, encoder_attention_mask)
        b, device, dtype = sample.shape[0], sample.device, sample.dtype
        ac = alphas_cumprod_of(alphas_cumprod)
        levels = check_levels(torch.zeros((), dtype=torch.long) if ref_level is None else ref_level, b,
                              ac.numel()).to(device)
        t = torch.as_tensor(timestep, device=device)
        t = t.expand(b) if t.ndim == 0 else t.flatten()
        check(t.shape == (b,), f"timestep must be a scalar or have shape ({b},), got {tuple(t.shape)}")

        def keep_of(keep: Tensor | None, name: str) -> Tensor:
            if keep is None:
                return torch.ones(b, dtype=torch.bool, device=device)
            keep = torch.as_tensor(keep, device=device)
            check(keep.shape == (b,), f"{name} must have shape ({b},), got {tuple(keep.shape)}")
            return keep.bool()

        r = self.config.num_references
        ref_keep = keep_of(ref_keep, "ref_keep") if refs is not None else torch.zeros(b, dtype=torch.bool, device=device)
        clean_refs = refs if refs is not None else sample.new_zeros(b, r, *sample.shape[1:])
        if refs is not None:
            noise = torch.randn_like(refs) if ref_noise is None else ref_noise
            check(noise.shape == refs.shape, f"ref_noise must have the refs' shape {tuple(refs.shape)}, got "
                  f"{tuple(noise.shape)}")
            cond_refs = augment(refs, levels, noise, ac) * ref_keep.view(b, 1, 1, 1, 1).to(dtype)
        else:
            cond_refs = clean_refs
        residuals = self.adapter_features(cond_refs)

        context, context_mask = encoder_hidden_states, encoder_attention_mask
        if anchor is not None:
            noise = torch.randn_like(anchor) if anchor_noise is None else anchor_noise
            check(noise.shape == anchor.shape, f"anchor_noise must have the anchor's shape {tuple(anchor.shape)}, "
                  f"got {tuple(noise.shape)}")
            tokens = self.anchor_tokens(augment(anchor, levels, noise, ac)).to(encoder_hidden_states.dtype)
            text_mask = (torch.ones(encoder_hidden_states.shape[:2], device=device) if encoder_attention_mask is None
                         else encoder_attention_mask.to(device=device, dtype=torch.float32))
            keep = keep_of(anchor_keep, "anchor_keep").float()
            context = torch.cat([encoder_hidden_states, tokens], dim=1)
            context_mask = torch.cat([text_mask, keep[:, None].expand(b, tokens.shape[1])], dim=1)

        eps_dynamic = self.unet(sample, t, encoder_hidden_states=context, class_labels=levels,
                                encoder_attention_mask=context_mask,
                                down_intrablock_additional_residuals=residuals).sample
        eps, m = eps_dynamic, None
        if self.mask_net is not None:
            if bool(ref_keep.any()):
                m = predict_mask(self.mask_net, sample, t, clean_refs) * ref_keep.view(b, 1, 1, 1).to(dtype)
                eps = combine(m, static_noise(sample, clean_refs[:, 0], alphas_cumprod_at(t, ac)), eps_dynamic)
            else:  # no references anywhere in the batch: nothing to copy, m = 0
                m = sample.new_zeros(b, 1, *sample.shape[2:])
        if not return_dict:
            return (eps, eps_dynamic, m)
        return ARTVOutput(sample=eps, eps_dynamic=eps_dynamic, mask=m)
