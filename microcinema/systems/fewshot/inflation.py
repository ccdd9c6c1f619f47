"""Pseudo-3D inflation of a 2D text-to-image U-Net for few-shot motion tuning (recurrent few-shot paper, 3.1-3.2).

:func:`inflate_unet` turns any diffusers ``UNet2DConditionModel`` (Stable Diffusion 1.x/2.x layouts, the embedded
text-to-image U-Net) into a :class:`FewShotVideoUNet` that takes latent videos ``(B, C, F, h, w)``:

* **1x3x3 convolutions** (section 3.1): every 2D layer runs frame by frame (frames are folded into the batch,
  ``(b f)`` order), which is exactly a ``(1, 3, 3)`` 3D convolution with the 2D kernel.
* **Temporal attention** after every spatial transformer (Tune-A-Video's ``attn_temp``; section 3.2 trains its
  projections): self-attention over the frames of each pixel with sinusoidal frame positions
  (:class:`~microcinema.models.unet3d.TemporalAttention`), output projection zero-initialised, so at
  initialisation the layer is the identity.
* **Spatial self-attention** (every ``attn1``) replaced, through diffusers' attention processors, by one of
  (``frame 1`` below is the first frame, index 0 in code):

  ``"sparse-causal"`` (Tune-A-Video, the paper's baseline, section 3.2):
      frame ``i`` queries ``W_K [z_1, z_(i-1)]`` and ``W_V [z_1, z_(i-1)]``. Frame 1 queries its own tokens only
      (Tune-A-Video concatenates frame 1 with itself there, which gives the same softmax average: duplicated
      keys with duplicated values; using one copy keeps frame 1 *exactly* the image model's self-attention).
  ``"recurrent"`` (recurrent causal attention, section 3.2):
      frame ``i`` queries ``W_K [z_1, m_i]`` and ``W_V [z_1, m_i]`` where ``m_i`` is a memory token set (one
      token per spatial position) from a per-token recurrence over the previous frames' features::

          h_2 = f(W_zh z_1 + b_h),   h_i = f(W_hh h_(i-1) + W_zh z_(i-1) + b_h),   m_i = g(W_ho h_i + b_a)

      ``z_j`` are the attention layer's input features of frame ``j`` (the normalised hidden states that
      frame ``j``'s own query is made from); keys per query: ``2 N`` for every frame after the first, whatever
      the number of frames (the paper's constant cost). Frame 1 has no memory yet (``h_1`` is empty, not a zero
      token set): it queries its own tokens only, exactly the image model's self-attention.

How this departs from the paper's public code (``cs236/models/attention2.py``), and why:

* The public code zero-initialises the memory update and follows it with ReLU, so ``W_hh``, ``W_zh``, ``b_h``
  get exactly zero gradient forever and the memory stays zero; its zero memory tokens still take softmax weight,
  shrinking the layer's output. Here ``f = tanh`` (default; ``"identity"`` makes it a linear recurrence) and
  the update starts as a copy, ``W_zh = I``, ``W_hh = 0``, ``b_h = 0``; ``W_ho = I``, ``b_a = 0`` and
  ``g = identity`` are fixed (the paper trains ``W_hh``, ``W_zh``, ``b_h`` only), so ``m_i = h_i`` and they are
  not materialised. At initialisation frame ``i``'s memory is ``f(z_(i-1))``: with ``f = identity`` the layer
  *is* sparse-causal attention (frames 1 and ``i - 1``, tested), with ``tanh`` it is sparse-causal attention
  with a soft-clipped copy of frame ``i - 1``. Training starts from Tune-A-Video's layer and the recurrence can
  learn to carry more of the past; gradient reaches ``W_zh`` and ``b_h`` at step 0, and ``W_hh`` from the
  third frame on (``h_(i-1)`` is non-zero there; with two frames there is no recurrence to learn).
* The public code writes each frame's attention output in place into a tensor ``to_q`` saved for backward
  (fp32 backward raises); nothing here writes in place (frames are stacked).
* From frame 2 on the public code's "first frame" tokens are frame 1's attention *output*; here they are frame
  1's own features ``z_1``.

The inflated 2D U-Net is ``model.unet``: its parameters keep their names (``model.unet.state_dict()`` is a
plain 2D state dict, so SD 2.1 weights load with ``model.unet.load_state_dict``); the new parameters live in
``model.memories`` (one :class:`RecurrentMemory` per ``attn1``, recurrent attention only) and
``model.temporal_attentions`` (one per spatial transformer), keyed by the layer's path with ``_`` for ``.``.
The frame count reaches the processors through ``cross_attention_kwargs["num_frames"]`` (so gradient
checkpointing recomputes correctly); ``model.unet`` called on its own (no ``num_frames``) treats every batch item
as a one-frame video. ``unet.set_attn_processor(...)`` / ``set_default_attn_processor()`` would remove the
video attention: :class:`FewShotVideoUNet` refuses to run if that happened.

Trainable parameters (section 3.2, Tune-A-Video's for the baseline): :func:`trainable_parameter_names`,
:func:`mark_trainable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import Tensor, nn

from microcinema.core.errors import check
from microcinema.models.unet2d import clean_config, load_image_unet
from microcinema.models.unet3d import TemporalAttention, VideoUNetOutput

#: The spatio-temporal attentions that replace the spatial self-attention (section 3.2).
ATTENTION_KINDS: tuple[str, ...] = ("recurrent", "sparse-causal")

#: The memory recurrence's nonlinearity ``f`` (``tanh``: bounded memory, the default).
MEMORY_NONLINEARITIES: tuple[str, ...] = ("tanh", "identity")

#: The keyword of ``cross_attention_kwargs`` that carries the number of frames to the processors and hooks.
NUM_FRAMES_KWARG = "num_frames"


def _key(path: str) -> str:
    return path.replace(".", "_")


def _attend(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Scaled dot-product attention on ``(batch, heads, tokens, head_dim)`` tensors, as diffusers'
    ``AttnProcessor2_0`` calls it (one place, so tests can count the keys every query sees)."""
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)


def _frames_of(batch: int, num_frames: int | None) -> int:
    frames = 1 if num_frames is None else int(num_frames)
    check(frames >= 1 and batch % frames == 0,
          f"num_frames={num_frames} does not divide the attention batch {batch} (frames are folded into the batch)")
    return frames


# ----------------------------------------------------------------------------------------------------------
# the memory of recurrent causal attention
# ----------------------------------------------------------------------------------------------------------


class RecurrentMemory(nn.Module):
    """The hidden memory of recurrent causal attention (section 3.2), one per spatial self-attention.

    ``h_i = f(W_hh h_(i-1) + W_zh z_(i-1) + b_h)`` per spatial token (the recurrence runs over frames, each
    token has its own state of the layer's width ``C``), with ``h_1`` empty (frame 1 has no memory) and
    ``m_i = h_i`` as the memory tokens (``W_ho = I``, ``b_a = 0``, ``g = identity``: fixed, see the module
    docstring). Initialised as a copy, ``W_zh = I``, ``W_hh = 0``, ``b_h = 0``.
    """

    def __init__(self, channels: int, nonlinearity: str = "tanh"):
        super().__init__()
        check(nonlinearity in MEMORY_NONLINEARITIES,
              f"unknown memory nonlinearity {nonlinearity!r}; allowed: {', '.join(MEMORY_NONLINEARITIES)}")
        self.nonlinearity = nonlinearity
        self.w_hh = nn.Linear(channels, channels, bias=False)
        self.w_zh = nn.Linear(channels, channels, bias=False)
        self.b_h = nn.Parameter(torch.zeros(channels))
        with torch.no_grad():
            self.w_hh.weight.zero_()  # h_i starts as f(z_(i-1)): a copy of the previous frame (no history yet)
            self.w_zh.weight.copy_(torch.eye(channels))

    def _f(self, x: Tensor) -> Tensor:
        return torch.tanh(x) if self.nonlinearity == "tanh" else x

    def forward(self, z: Tensor) -> Tensor:
        """``z``: features ``(B, F, N, C)`` of ``F >= 2`` frames; returns the memory tokens ``(B, F - 1, N, C)``
        of frames ``2..F`` (frame ``i``'s memory has seen frames ``1..i-1``)."""
        states: list[Tensor] = []
        h: Tensor | None = None
        for i in range(1, z.shape[1]):
            pre = self.w_zh(z[:, i - 1]) + self.b_h
            if h is not None:
                pre = pre + self.w_hh(h)
            h = self._f(pre)
            states.append(h)
        return torch.stack(states, dim=1).to(z.dtype)  # a new tensor: nothing autograd saved is written to


# ----------------------------------------------------------------------------------------------------------
# attention processors
# ----------------------------------------------------------------------------------------------------------


def _check_plain_self_attention(attn: Attention, path: str) -> None:
    """The processors below implement SD's spatial self-attention (no norms inside the attention, no residual)."""
    check(attn.group_norm is None and attn.spatial_norm is None and not attn.residual_connection
          and attn.norm_q is None and attn.norm_k is None and not attn.is_cross_attention,
          f"cannot inflate {path}: only plain self-attention layers (Stable Diffusion's attn1) are supported")


class _VideoSelfAttnProcessor:
    """Shared code of the two spatio-temporal attention processors (plain objects, not modules: their
    parameters live in :class:`FewShotVideoUNet`, so ``unet.state_dict()`` stays the 2D one)."""

    def keys_values(self, attn: Attention, z: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values ``(B, F - 1, M, inner)`` that frames ``2..F`` see besides frame 1's, from the layer's
        input features ``z`` ``(B, F, N, C)`` and every frame's own keys and values ``(B, F, N, inner)``."""
        raise NotImplementedError

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 num_frames: int | None = None) -> Tensor:
        check(encoder_hidden_states is None and attention_mask is None and hidden_states.ndim == 3,
              "the video self-attention takes (B * F, N, C) tokens without encoder states or attention mask")
        bf, n, c = hidden_states.shape
        frames = _frames_of(bf, num_frames)
        b, heads = bf // frames, attn.heads
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        inner = key.shape[-1]
        head_dim = inner // heads

        def attend(q: Tensor, k: Tensor, v: Tensor) -> Tensor:  # (batch, tokens, inner) each -> (batch, N, inner)
            batch = q.shape[0]
            q, k, v = (t.reshape(batch, -1, heads, head_dim).transpose(1, 2) for t in (q, k, v))
            return _attend(q, k, v).transpose(1, 2).reshape(batch, -1, inner)

        q, k, v = (t.view(b, frames, n, inner) for t in (query, key, value))
        # frame 1: its own tokens only, exactly the image model's self-attention (AttnProcessor2_0's operations)
        first = attend(q[:, 0], k[:, 0], v[:, 0])
        if frames == 1:
            hidden = first
        else:  # frames 2..F: frame 1's tokens and M more (frame i - 1, or the memory), 2N keys per query
            extra_k, extra_v = self.keys_values(attn, hidden_states.view(b, frames, n, c), k, v)
            keys = torch.cat([k[:, :1].expand(-1, frames - 1, -1, -1), extra_k], dim=2)
            values = torch.cat([v[:, :1].expand(-1, frames - 1, -1, -1), extra_v], dim=2)
            rest = attend(q[:, 1:].reshape(b * (frames - 1), n, inner), keys.flatten(0, 1), values.flatten(0, 1))
            hidden = torch.cat([first.unsqueeze(1), rest.view(b, frames - 1, n, inner)], dim=1).view(bf, n, inner)
        hidden = attn.to_out[1](attn.to_out[0](hidden.to(query.dtype)))
        return hidden / attn.rescale_output_factor


class SparseCausalAttnProcessor(_VideoSelfAttnProcessor):
    """Tune-A-Video's sparse-causal attention: frame ``i`` attends to frames 1 and ``i - 1`` (frame 1 to itself)."""

    def keys_values(self, attn: Attention, z: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        return k[:, :-1], v[:, :-1]  # frames 1..F-1: the "former" frames of 2..F


class RecurrentCausalAttnProcessor(_VideoSelfAttnProcessor):
    """Recurrent causal attention: frame ``i`` attends to frame 1 and the memory tokens ``m_i`` of
    :class:`RecurrentMemory` (frame 1 to itself)."""

    def __init__(self, memory: RecurrentMemory):
        self.memory = memory

    def keys_values(self, attn: Attention, z: Tensor, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, frames, n, c = z.shape
        m = self.memory(z).reshape(b * (frames - 1), n, c)  # memory tokens m_2..m_F
        k, v = attn.to_k(m), attn.to_v(m)
        return k.view(b, frames - 1, n, -1), v.view(b, frames - 1, n, -1)


class FrameAwareAttnProcessor2_0(AttnProcessor2_0):
    """diffusers' default processor that accepts (and ignores) ``num_frames``: set on the cross-attention
    (``attn2``) layers so that the frame count can travel in ``cross_attention_kwargs`` without warnings."""

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None,
                 num_frames: int | None = None) -> Tensor:
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb)


class _TemporalAfterTransformer:
    """Forward hook of a spatial transformer: its output goes through the temporal attention (a callable
    object, not a closure, so ``copy.deepcopy`` of the model copies the link too)."""

    def __init__(self, temporal: TemporalAttention):
        self.temporal = temporal

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        frames_kw = (kwargs.get("cross_attention_kwargs") or {}).get(NUM_FRAMES_KWARG)
        hidden = output[0] if isinstance(output, tuple) else output.sample
        hidden = self.temporal(hidden, _frames_of(hidden.shape[0], frames_kw))
        if isinstance(output, tuple):
            return (hidden, *output[1:])
        output.sample = hidden
        return output


# ----------------------------------------------------------------------------------------------------------
# the inflated model
# ----------------------------------------------------------------------------------------------------------


def _check_attention(attention: str) -> None:
    check(attention in ATTENTION_KINDS, f"unknown attention {attention!r}; allowed: {', '.join(ATTENTION_KINDS)}")


class FewShotVideoUNet(ModelMixin, ConfigMixin):
    """A ``UNet2DConditionModel`` inflated to pseudo-3D with sparse-causal or recurrent causal attention
    (recurrent few-shot paper, sections 3.1-3.2; see the module docstring).

    Config keys:
        unet_config: the wrapped ``UNet2DConditionModel``'s config.
        attention: one of :data:`ATTENTION_KINDS` (default ``"recurrent"``, the paper's).
        memory_nonlinearity: ``f`` of the memory recurrence, one of :data:`MEMORY_NONLINEARITIES`.

    Build it with :func:`inflate_unet` (an instance, e.g. SD 2.1's or the embedded U-Net with its weights), or
    from a folder with ``from_pretrained``. ``forward`` takes ``(B, C, F, h, w)`` latents.
    """

    _supports_gradient_checkpointing = True  # the 2D blocks' (diffusers' own); enable_gradient_checkpointing()
    ignore_for_config = ["unet"]

    @register_to_config
    def __init__(self, unet_config: dict[str, Any] | None = None, attention: str = "recurrent",
                 memory_nonlinearity: str = "tanh", unet: UNet2DConditionModel | None = None):
        super().__init__()
        _check_attention(attention)
        check(memory_nonlinearity in MEMORY_NONLINEARITIES,
              f"unknown memory nonlinearity {memory_nonlinearity!r}; allowed: {', '.join(MEMORY_NONLINEARITIES)}")
        check(unet is not None or unet_config is not None, "FewShotVideoUNet needs unet_config or a unet")
        if unet is None:
            unet = UNet2DConditionModel.from_config(clean_config(unet_config))
        check(isinstance(unet, UNet2DConditionModel),
              f"can only inflate a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        self.register_to_config(unet_config=clean_config(unet.config))
        self.unet = unet
        self.memories = nn.ModuleDict()
        self.temporal_attentions = nn.ModuleDict()
        self._video_processors: dict[str, _VideoSelfAttnProcessor] = {}
        transformers = [(p, m) for p, m in unet.named_modules() if isinstance(m, Transformer2DModel)]
        check(bool(transformers), "the U-Net has no spatial transformer to inflate")
        for path, transformer in transformers:
            blocks = list(transformer.transformer_blocks)
            channels = transformer.config.in_channels
            heads = blocks[0].attn1.heads
            temporal = TemporalAttention(channels, head_dim=max(1, channels // heads))
            self.temporal_attentions[_key(path)] = temporal
            transformer.register_forward_hook(_TemporalAfterTransformer(temporal), with_kwargs=True)
            for j, block in enumerate(blocks):
                attn_path = f"{path}.transformer_blocks.{j}.attn1"
                _check_plain_self_attention(block.attn1, attn_path)
                if attention == "recurrent":
                    memory = RecurrentMemory(block.attn1.query_dim, memory_nonlinearity)
                    self.memories[_key(attn_path)] = memory
                    processor: _VideoSelfAttnProcessor = RecurrentCausalAttnProcessor(memory)
                else:
                    processor = SparseCausalAttnProcessor()
                block.attn1.set_processor(processor)
                self._video_processors[attn_path] = processor
                if block.attn2 is not None:
                    block.attn2.set_processor(FrameAwareAttnProcessor2_0())
        for name, child in self.named_children():  # the new modules follow the U-Net's device and dtype
            if name != "unet":
                child.to(device=unet.device, dtype=unet.dtype)

    # ------------------------------------------------------------------ structure

    @property
    def attention(self) -> str:
        """``"recurrent"`` or ``"sparse-causal"``."""
        return self.config.attention

    def _check_processors(self) -> None:
        for path, processor in self._video_processors.items():
            check(self.unet.get_submodule(path).processor is processor,
                  f"the video attention of {path} was replaced (set_attn_processor?); re-inflate the 2D U-Net")

    def trainable_parameter_names(self) -> list[str]:
        """The parameters that train (section 3.2), in ``named_parameters`` order.

        Recurrent: ``W_Q`` of every spatio-temporal attention (``attn1.to_q``), its memory's ``W_hh``,
        ``W_zh``, ``b_h``, ``W_Q`` of every cross-attention (``attn2.to_q``) and every temporal attention's
        projections (``to_q``, ``to_k``, ``to_v``, ``to_out``). Sparse-causal (Tune-A-Video): the same without the
        memory. Everything else (the 2D weights, ``W_K``/``W_V``, the temporal attention's LayerNorm) is frozen.
        """
        def selected(name: str) -> bool:
            if name.startswith("unet."):
                return name.split(".")[-2] == "to_q" and name.split(".")[-3] in ("attn1", "attn2")
            if name.startswith("memories."):
                return True
            return name.startswith("temporal_attentions.") and ".attn." in name

        return [n for n, _ in self.named_parameters() if selected(n)]

    def new_parameter_names(self) -> list[str]:
        """Parameters that the 2D U-Net does not have (temporal attentions, memories)."""
        return [n for n, _ in self.named_parameters() if not n.startswith("unet.")]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """The trained parameters only (what an adapter file holds), detached, by name."""
        params = dict(self.named_parameters())
        return {n: params[n].detach() for n in self.trainable_parameter_names()}

    def load_trainable_state_dict(self, state_dict: dict[str, Tensor]) -> None:
        """Load :meth:`trainable_state_dict` output; the names and shapes must be exactly this model's."""
        expected = self.trainable_parameter_names()
        missing, unexpected = sorted(set(expected) - set(state_dict)), sorted(set(state_dict) - set(expected))
        check(not missing and not unexpected,
              f"adapter does not fit this model: {len(missing)} parameter(s) missing (e.g. {missing[:1]}), "
              f"{len(unexpected)} unexpected (e.g. {unexpected[:1]})")
        params = dict(self.named_parameters())
        for name in expected:
            check(tuple(state_dict[name].shape) == tuple(params[name].shape),
                  f"adapter parameter {name} has shape {tuple(state_dict[name].shape)}, "
                  f"the model's is {tuple(params[name].shape)}")
        with torch.no_grad():
            for name in expected:
                params[name].copy_(state_dict[name].to(params[name].dtype))

    # ------------------------------------------------------------------ forward

    def forward(self, sample: Tensor, timestep: Tensor | float | int, encoder_hidden_states: Tensor,
                encoder_attention_mask: Tensor | None = None, class_labels: Tensor | None = None,
                cross_attention_kwargs: dict[str, Any] | None = None,
                return_dict: bool = True) -> VideoUNetOutput | tuple[Tensor]:
        """Predict ``(B, C, F, h, w)`` from noisy latents ``sample`` of the same shape.

        ``timestep``: a number or ``(B,)``; ``encoder_hidden_states``: ``(B, L, D)`` (shared by the frames);
        ``encoder_attention_mask``: ``(B, L)`` or None; ``class_labels``: ``(B,)`` when the U-Net has a class
        embedding. Every frame sees the same timestep and text.
        """
        self._check_processors()
        check(sample.ndim == 5, f"sample must be (B, C, F, h, w) (F=1 for images), got shape {tuple(sample.shape)}")
        b, c, frames, h, w = sample.shape
        channels = self.unet.config.in_channels
        check(c == channels, f"sample has {c} channels, the U-Net takes {channels}")
        check(encoder_hidden_states.ndim == 3 and encoder_hidden_states.shape[0] == b,
              f"encoder_hidden_states must be (B={b}, L, D), got shape {tuple(encoder_hidden_states.shape)}")
        x = sample.permute(0, 2, 1, 3, 4).reshape(b * frames, c, h, w)
        t = torch.as_tensor(timestep, device=sample.device)
        t = t.expand(b) if t.ndim == 0 else t
        check(t.shape == (b,), f"timestep must be a number or (B={b},), got shape {tuple(t.shape)}")

        def per_frame(v: Tensor | None) -> Tensor | None:
            return None if v is None else v.repeat_interleave(frames, dim=0)

        kwargs = dict(cross_attention_kwargs or {})
        kwargs[NUM_FRAMES_KWARG] = frames
        out = self.unet(x, per_frame(t), encoder_hidden_states=per_frame(encoder_hidden_states),
                        encoder_attention_mask=per_frame(encoder_attention_mask),
                        class_labels=per_frame(class_labels), cross_attention_kwargs=kwargs, return_dict=False)[0]
        out = out.reshape(b, frames, *out.shape[1:]).permute(0, 2, 1, 3, 4)
        return VideoUNetOutput(sample=out) if return_dict else (out,)


def inflate_unet(unet: UNet2DConditionModel | str | Path, attention: str = "recurrent", *,
                 memory_nonlinearity: str = "tanh", subfolder: str | None = None,
                 unet_kwargs: dict[str, Any] | None = None) -> FewShotVideoUNet:
    """Inflate a 2D U-Net (an instance, which becomes ``model.unet`` and is modified, not copied; or what
    :func:`~microcinema.models.unet2d.load_image_unet` loads: ``"embedded"``, a diffusers U-Net folder, a pipeline
    folder with ``unet/``, a hub id) into a :class:`FewShotVideoUNet`.

    The 2D weights are kept (names unchanged under ``model.unet``); the new layers start so that a one-frame
    video gives exactly the image model's output (section 3.2 and the module docstring).
    """
    _check_attention(attention)
    unet = load_image_unet(unet, subfolder, **(unet_kwargs or {}))
    return FewShotVideoUNet(attention=attention, memory_nonlinearity=memory_nonlinearity, unet=unet)


# ----------------------------------------------------------------------------------------------------------
# which parameters train (section 3.2)
# ----------------------------------------------------------------------------------------------------------


def count_parameters(model: nn.Module, names: Iterable[str] | None = None) -> int:
    """Number of scalars in the named parameters of ``model`` (all when ``names`` is None)."""
    params = dict(model.named_parameters())
    return sum(params[n].numel() for n in (params if names is None else names))


def trainable_parameter_names(model: FewShotVideoUNet) -> list[str]:
    """The parameters the paper trains (see :meth:`FewShotVideoUNet.trainable_parameter_names`)."""
    return model.trainable_parameter_names()


def mark_trainable(model: FewShotVideoUNet, log: Callable[[str], None] | None = print) -> list[str]:
    """Set ``requires_grad`` on exactly the paper's trainable parameters (section 3.2) and clear it everywhere
    else; return their names. ``log`` (default ``print``; None for silence) gets one line with their count."""
    names = model.trainable_parameter_names()
    chosen = set(names)
    for name, p in model.named_parameters():
        p.requires_grad_(name in chosen)
    if log is not None:
        n, total = count_parameters(model, names), count_parameters(model)
        log(f"few-shot ({model.attention} attention): training {n:,} of {total:,} parameters "
            f"({100 * n / total:.2f} %, {len(names)} tensors)")
    return names


__all__ = [
    "ATTENTION_KINDS",
    "MEMORY_NONLINEARITIES",
    "NUM_FRAMES_KWARG",
    "FewShotVideoUNet",
    "FrameAwareAttnProcessor2_0",
    "RecurrentCausalAttnProcessor",
    "RecurrentMemory",
    "SparseCausalAttnProcessor",
    "count_parameters",
    "inflate_unet",
    "mark_trainable",
    "trainable_parameter_names",
]
