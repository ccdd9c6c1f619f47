"""The procedural domain's own video feature extractor, for a *domain FVD*.

FVD (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video: A New Metric & Challenges") is
the Frechet distance between Gaussians fitted to video features of real and generated clips; the standard
protocol takes the features from an I3D network trained on Kinetics. On the procedural domain (DESIGN.md
sections 4 and 5) we use a network trained on the domain itself instead: :class:`DomainVideoClassifier`, a
small (2+1)D convolutional classifier (factorised spatial then temporal convolutions, as R(2+1)D, Tran et
al. 2018) with three heads (colour, object, motion) on one shared, globally pooled feature vector. That
vector is the FVD feature, so the distance is sensitive to exactly what the domain varies: appearance,
shape and motion.

Layout: videos are ``(B, T, 3, H, W)`` floats in [-1, 1] (what :class:`~microcinema.data.synthetic_dataset.
SyntheticVideoDataset` yields, batched), any ``T >= 2`` (global pooling over time) and any size (features
are meant for the ``sample_size`` it was trained at, 64; :func:`domain_features` resizes to it).

Train and ship it with ``microcinema train classifier --config classifier --export
microcinema/embedded/weights/classifier``; then::

    model = load_domain_classifier()
    fvd = domain_fvd(real_videos, generated_videos, model)   # uint8 (N, T, H, W, 3) arrays
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput
from einops import rearrange, reduce
from torch import nn

from microcinema.data.synthetic import COLOURS, MOTIONS, OBJECTS
from microcinema.embedded import WEIGHTS_DIR
from microcinema.core.errors import MicroCinemaError, check

#: Class names of the three heads, in logit order.
HEAD_CLASSES: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "object": tuple(OBJECTS),
                                            "motion": tuple(MOTIONS)}
#: Default location of the shipped (trained) classifier.
SHIPPED_PATH = WEIGHTS_DIR / "classifier"
TRAIN_COMMAND = "microcinema train classifier --config classifier --export microcinema/embedded/weights/classifier"

Videos = Union[np.ndarray, torch.Tensor, Sequence[np.ndarray]]


@dataclass
class DomainClassifierOutput(BaseOutput):
    """``features`` (B, D): the pooled feature vector (the FVD feature); logits (B, classes) per head."""

    features: torch.Tensor
    colour: torch.Tensor
    object: torch.Tensor
    motion: torch.Tensor


class _Block2Plus1D(nn.Module):
    """Spatial 3x3 convolution (stride 2) then a temporal 3-tap convolution with a residual connection.
    Time is padded by replicating the end frames, so a still clip looks the same at its ends as inside."""

    def __init__(self, cin: int, cout: int, groups: int) -> None:
        super().__init__()
        self.spatial = nn.Conv3d(cin, cout, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
        self.norm1 = nn.GroupNorm(groups, cout)
        self.temporal = nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0), padding_mode="replicate")
        self.norm2 = nn.GroupNorm(groups, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.norm1(self.spatial(x)))
        return F.silu(x + self.norm2(self.temporal(x)))


class DomainVideoClassifier(ModelMixin, ConfigMixin):
    """A small (2+1)D video classifier of the procedural domain (0.37 M parameters at the defaults).

    Four blocks halve the frame size each (64 -> 4 pixels) and stack temporal receptive field (9 frames);
    the last block's activations are averaged over time and space into the ``block_out_channels[-1]``-d
    feature vector, which feeds three linear heads: colour (8), object (14) and motion (7) classes in
    :data:`HEAD_CLASSES` order. Input ``(B, T, 3, H, W)`` in [-1, 1], ``T >= 2``.

    It is trained on clips at 2 fps (9 frames, 4 seconds, as MicroCinema's base model); motion per frame is
    what its temporal filters see, so compare clips at that rate (take every 4th frame of 8 fps clips).
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, block_out_channels: Sequence[int] = (24, 48, 96, 192),
                 norm_num_groups: int = 8, sample_size: int = 64, num_colours: int = len(COLOURS),
                 num_objects: int = len(OBJECTS), num_motions: int = len(MOTIONS), dropout: float = 0.0) -> None:
        super().__init__()
        channels = [in_channels, *block_out_channels]
        self.blocks = nn.ModuleList(_Block2Plus1D(a, b, norm_num_groups) for a, b in zip(channels, channels[1:]))
        self.head_dropout = nn.Dropout(dropout)
        width = channels[-1]
        self.heads = nn.ModuleDict({"colour": nn.Linear(width, num_colours), "object": nn.Linear(width, num_objects),
                                    "motion": nn.Linear(width, num_motions)})

    @property
    def feature_dim(self) -> int:
        return self.config.block_out_channels[-1]

    def features(self, videos: torch.Tensor) -> torch.Tensor:
        """The pooled feature vectors (B, D) of videos (B, T, 3, H, W) in [-1, 1]."""
        check(videos.ndim == 5 and videos.shape[2] == self.config.in_channels and videos.shape[1] >= 2,
              f"videos must be (B, T>=2, {self.config.in_channels}, H, W), got {tuple(videos.shape)}")
        x = rearrange(videos, "b t c h w -> b c t h w")
        for block in self.blocks:
            x = block(x)
        return reduce(x, "b c t h w -> b c", "mean")

    def forward(self, videos: torch.Tensor) -> DomainClassifierOutput:
        features = self.features(videos)
        hidden = self.head_dropout(features)
        return DomainClassifierOutput(features=features,
                                      **{name: head(hidden) for name, head in self.heads.items()})


def collate_clips(items: list[dict]) -> dict[str, torch.Tensor]:
    """Batch :class:`~microcinema.data.synthetic_dataset.SyntheticVideoDataset` items: ``pixel_values``
    (B, T, 3, H, W) and one class-index tensor (B,) per head."""
    batch = {"pixel_values": torch.stack([i["pixel_values"] for i in items])}
    for head, names in HEAD_CLASSES.items():
        batch[head] = torch.tensor([names.index(i[head]) for i in items], dtype=torch.long)
    return batch


@torch.no_grad()
def domain_accuracy(model: DomainVideoClassifier, num: int = 512, *, seed: int = 4321, split: str = "train",
                    num_frames: int = 9, fps: float = 2.0, size: int = 64, batch_size: int = 64) -> dict[str, float]:
    """Accuracy of each head on ``num`` procedural clips of ``split`` drawn with ``seed``."""
    from torch.utils.data import DataLoader

    from microcinema.data.synthetic_dataset import SyntheticVideoDataset

    data = SyntheticVideoDataset(num, seed=seed, split=split, num_frames=num_frames, fps=fps, size=size)
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(HEAD_CLASSES, 0)
    for batch in DataLoader(data, batch_size=batch_size, collate_fn=collate_clips):
        output = model(batch["pixel_values"].to(model.device, model.dtype))
        for head in HEAD_CLASSES:
            correct[head] += (getattr(output, head).argmax(-1).cpu() == batch[head]).sum().item()
    model.train(was_training)
    return {head: round(count / num, 4) for head, count in correct.items()}


# ------------------------------------------------------------------------------------------------ features


def _as_model_input(videos: Videos) -> torch.Tensor:
    """uint8 (N, T, H, W, 3) numpy (or a list of (T, H, W, 3)) or float (N, T, 3, H, W) in [-1, 1] ->
    float tensor (N, T, 3, H, W) in [-1, 1]."""
    if isinstance(videos, (list, tuple)):
        check(len(videos) > 0, "no videos given")
        videos = np.stack([np.asarray(v) for v in videos])
    if isinstance(videos, np.ndarray):
        check(videos.dtype == np.uint8 and videos.ndim == 5 and videos.shape[-1] == 3,
              f"numpy videos must be uint8 (N, T, H, W, 3), got {videos.dtype} {videos.shape}")
        return rearrange(torch.from_numpy(np.ascontiguousarray(videos)), "n t h w c -> n t c h w").float() / 127.5 - 1
    if isinstance(videos, torch.Tensor):
        check(videos.is_floating_point() and videos.ndim == 5 and videos.shape[2] == 3,
              f"tensor videos must be float (N, T, 3, H, W) in [-1, 1], got {videos.dtype} {tuple(videos.shape)}")
        return videos.float()
    raise MicroCinemaError(f"videos must be a uint8 numpy array (N, T, H, W, 3) or a float tensor "
                           f"(N, T, 3, H, W), got {type(videos).__name__}")


@torch.no_grad()
def domain_features(videos: Videos, model: DomainVideoClassifier, batch_size: int = 32) -> np.ndarray:
    """Feature vectors (N, D) float64 of ``videos`` (see :func:`_as_model_input` for the accepted forms),
    resized to the model's ``sample_size``, computed in batches without gradients."""
    x = _as_model_input(videos)
    check(x.shape[1] >= 2, f"videos need at least 2 frames (motion), got {x.shape[1]}")
    size = model.config.sample_size
    was_training = model.training
    model.eval()
    out = []
    try:
        for batch in x.split(batch_size):
            batch = batch.to(model.device, model.dtype)
            if batch.shape[-2:] != (size, size):
                frames = rearrange(batch, "n t c h w -> (n t) c h w")
                frames = F.interpolate(frames, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
                batch = rearrange(frames, "(n t) c h w -> n t c h w", n=len(batch))
            out.append(model.features(batch).double().cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def domain_fvd(real_videos: Videos, fake_videos: Videos, model: DomainVideoClassifier, batch_size: int = 32) -> float:
    """Domain FVD: the Frechet distance between Gaussians fitted to the domain classifier's features of
    ``real_videos`` and ``fake_videos`` (FVD of Unterthiner et al. 2018 with a domain network instead of I3D).

    Like FVD it is biased by the sample size: compare numbers computed on equally many clips (the standard
    FVD protocol uses 2048), at the frame rate the classifier was trained at (2 fps)."""
    from microcinema.eval.metrics.frechet import frechet_distance_from_features

    real = domain_features(real_videos, model, batch_size)
    fake = domain_features(fake_videos, model, batch_size)
    check(len(real) >= 2 and len(fake) >= 2, f"need at least 2 videos per set, got {len(real)} and {len(fake)}")
    return max(0.0, frechet_distance_from_features(real, fake))  # round-off can leave a tiny negative


def load_domain_classifier(path: str | Path | None = None, device: str | torch.device = "cpu") -> DomainVideoClassifier:
    """The domain classifier at ``path`` (default: the shipped one in ``microcinema/embedded/weights/classifier``),
    in fp32, in eval mode."""
    folder = Path(path) if path is not None else SHIPPED_PATH
    if not (folder / "config.json").is_file():
        hint = f"train it with `{TRAIN_COMMAND}`" if path is None else "give a folder written by save_pretrained"
        raise MicroCinemaError(f"no domain classifier at {folder} (config.json missing); {hint}")
    return DomainVideoClassifier.from_pretrained(str(folder), torch_dtype=torch.float32).to(device).eval()
