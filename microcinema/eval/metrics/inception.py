"""Inception-v3 as used by FID and IS (Szegedy et al. 2016; the 2015-12-05 TF graph), and its extractor.

The architecture is the one pytorch-fid (mseitzer/pytorch-fid) builds for FID: torchvision's Inception-v3
layout (``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``fc``) with 1008 output classes, no auxiliary head, and the
patched blocks that reproduce the TF graph (``FIDInceptionA/C/E_1``: average pools that ignore padding;
``FIDInceptionE_2``: a max pool in the pool branch). Written here in plain torch with the same parameter
names, so pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` loads as it is.

Outputs (:meth:`FIDInceptionV3.forward`): the 2048-d global average pool of ``Mixed_7c`` (FID's features)
and the ``fc`` logits (1008 classes for those weights; IS takes their softmax). Input: ``(N, 3, H, W)``
in ``[-1, 1]``; pytorch-fid resizes to 299x299 bilinearly first (:meth:`InceptionFeatureExtractor.preprocess`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from microcinema.core.errors import check
from microcinema.eval.metrics._common import (ArrayLike, PathLike, check_pixels, chunks, default_device, load_into, load_state_dict,
                      progress, random_init, resolve_weights, to_float)

INCEPTION_WEIGHTS = "pytorch-fid's Inception state dict, pt_inception-2015-12-05-6726825d.pth (.pth/.safetensors)"
#: Smallest input the stride-2 stem and reductions accept.
MIN_RESOLUTION = 75


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm (``eps=1e-3``) + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: torch.Tensor) -> torch.Tensor:
    """3x3 stride-1 average pool that, like TF's, ignores the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b/c/d (pytorch-fid's FIDInceptionA)
    def __init__(self, in_channels: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionB(nn.Module):  # Mixed_6a (grid reduction)
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):  # Mixed_6b..e (pytorch-fid's FIDInceptionC), factorised 7x7
    def __init__(self, in_channels: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            dbl = layer(dbl)
        return torch.cat([
            self.branch1x1(x),
            self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
            dbl,
            self.branch_pool(_avg_pool(x)),
        ], 1)


class InceptionD(nn.Module):  # Mixed_7a (grid reduction)
    def __init__(self, in_channels: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b (FIDInceptionE_1, avg pool) and Mixed_7c (FIDInceptionE_2, max pool)
    def __init__(self, in_channels: int, max_pool: bool) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # pytorch-fid: the FID graph's last block max-pools here (likely a bug in that graph, kept for parity)
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(dbl), self.branch3x3dbl_3b(dbl),
            self.branch_pool(pool),
        ], 1)


class FIDInceptionV3(nn.Module):
    """``forward(x)`` -> ``(pool (N, 2048), logits (N, num_classes))`` for ``x`` ``(N, 3, H, W)`` in ``[-1, 1]``."""

    FEATURE_DIM = 2048

    def __init__(self, num_classes: int = 1008) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)
        self.fc = nn.Linear(self.FEATURE_DIM, num_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        pool = x.mean(dim=(2, 3))
        return pool, self.fc(pool)  # dropout before fc is the identity at evaluation


class InceptionFeatureExtractor:
    """FID features (2048-d pool) and IS logits of images, with pytorch-fid's preprocessing.

    ``weights``: a local state dict (see :data:`INCEPTION_WEIGHTS`; the class count is read from its
    ``fc.weight``, an ``AuxLogits`` head is ignored); ``weights=None`` builds a random 1008-class network and
    is refused unless ``allow_random=True`` (tests). ``resolution``: 299 for real measurements (pytorch-fid's
    bilinear resize of the whole image, no crop); tests use less to stay fast (at least 75).
    """

    def __init__(self, weights: PathLike | None = None, *, allow_random: bool = False, resolution: int = 299,
                 batch_size: int = 32, device: str | torch.device | None = None, seed: int = 0) -> None:
        check(resolution >= MIN_RESOLUTION, f"Inception: resolution must be >= {MIN_RESOLUTION}, got {resolution}")
        path = resolve_weights(weights, allow_random, "Inception", INCEPTION_WEIGHTS)
        if path is None:
            self.model = FIDInceptionV3()
            random_init(self.model, seed)
        else:
            state = {k: v for k, v in load_state_dict(path, "Inception").items() if not k.startswith("AuxLogits.")}
            check("fc.weight" in state, f"Inception: {path} has no fc.weight; need {INCEPTION_WEIGHTS}")
            self.model = FIDInceptionV3(num_classes=state["fc.weight"].shape[0])
            load_into(self.model, state, "Inception", path)
        self.device = default_device(device)
        self.model.eval().requires_grad_(False).to(self.device)
        self.resolution, self.batch_size = resolution, batch_size

    @property
    def num_classes(self) -> int:
        return self.model.fc.out_features

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Float ``(N, 3, H, W)`` in ``[-1, 1]`` -> ``(N, 3, R, R)`` (bilinear, ``align_corners=False``)."""
        if images.shape[-2:] == (self.resolution, self.resolution):
            return images
        return F.interpolate(images, size=(self.resolution, self.resolution), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def features_and_logits(self, images: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(N, 2048)`` pool features and ``(N, num_classes)`` logits, float64.

        ``images``: ``uint8 (N, H, W, 3)`` numpy/torch or float torch ``(N, 3, H, W)`` in ``[-1, 1]``; a batch
        of videos (``(N, T, H, W, 3)`` / ``(N, T, 3, H, W)``) counts as its ``N * T`` frames.
        """
        is_video = getattr(images, "ndim", None) == 5 or (
            isinstance(images, (list, tuple)) and images and getattr(images[0], "ndim", None) == 4)
        if is_video:
            images = check_pixels(images, "N, T", "Inception images")
            images = rearrange(images, "n t ... -> (n t) ...")
        images = check_pixels(images, "N", "Inception images")
        pools, logits = [], []
        for part in progress(chunks(images.shape[0], self.batch_size), "Inception features"):
            pool, logit = self.model(self.preprocess(to_float(images[part], "Inception images")).to(self.device))
            pools.append(pool.double().cpu().numpy())
            logits.append(logit.double().cpu().numpy())
        return np.concatenate(pools), np.concatenate(logits)

    def features(self, images: ArrayLike) -> np.ndarray:
        """``(N, 2048)`` FID features (see :meth:`features_and_logits`)."""
        return self.features_and_logits(images)[0]

    def logits(self, images: ArrayLike) -> np.ndarray:
        """``(N, num_classes)`` logits for IS (see :meth:`features_and_logits`)."""
        return self.features_and_logits(images)[1]
