"""Text x time layers: the prompt times each frame's offset from the key frame drives a per-frame change of
the features (extensions beyond the papers, opt-in: ``VideoUNet(frame_text_modulation=True)``,
``VideoUNet(frame_text_shift=True)``; the embedded base model uses both).

Both are applied after every temporal convolution and are the identity at initialisation (their last linear
map is zero-initialised), so a trained model can be grown with them and starts exactly where it was.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microcinema.models.layers import frame_position_encoding, zero_module


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
    shrinking does. A translation is antisymmetric about the object, so a per-channel scale barely correlates
    with it; :class:`FrameTextShift` is the spatial counterpart. (What it changed on the embedded model:
    ``docs/history.md``.)
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

    Scale: the raw product is small (its RMS is a few hundredths), so ``W`` would need large entries for a
    shift of a pixel; the product is therefore RMS-normalised and multiplied by ``s`` (``velocity_scale``,
    4 px). (What it changed on the embedded model, and its cost: ``docs/history.md``.)
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
