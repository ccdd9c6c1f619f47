"""Frechet Inception Distance (Heusel et al. 2017) and Inception Score (Salimans et al. 2016).

FID: the Frechet distance (:mod:`.frechet`) between Gaussians fitted to the 2048-d Inception pool
features of real and generated images, as in TTUR / pytorch-fid. For video models it is computed on
frames (MicroCinema reports it on MSR-VTT frames): pass video batches and every frame counts.

IS: ``exp(E_x KL(p(y|x) || p(y)))`` with ``p(y|x)`` the softmax of the Inception logits (all 1008 classes
of the FID graph, as the original TF code) and ``p(y)`` the marginal over a split; the images are cut into
``splits`` consecutive parts (10 in the reference) and the mean and standard deviation over parts are
reported. ``1 <= IS <= number of classes``. On UCF-101, video papers (MicroCinema, ART-V) quote the IS of
a C3D classifier trained on UCF-101 (TGAN's protocol); this Inception IS is the image version.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

from microcinema.core.errors import check
from microcinema.eval.metrics._common import ArrayLike
from microcinema.eval.metrics.frechet import frechet_distance_from_features
from microcinema.eval.metrics.inception import InceptionFeatureExtractor


def fid(real_images: ArrayLike, fake_images: ArrayLike, extractor: InceptionFeatureExtractor) -> float:
    """FID between two batches of images (``uint8 (N, H, W, 3)`` or float ``(N, 3, H, W)`` in ``[-1, 1]``;
    video batches count frame by frame), embedded by ``extractor``; at least 2 images per side."""
    return frechet_distance_from_features(extractor.features(real_images), extractor.features(fake_images))


def inception_score_from_logits(logits: np.ndarray, splits: int = 10) -> tuple[float, float]:
    """``(mean, std)`` of the Inception Score over ``splits`` consecutive parts of ``(N, C)`` logits."""
    logits = np.asarray(logits, dtype=np.float64)
    check(logits.ndim == 2 and logits.shape[1] >= 2, f"logits must be (N, C) with C >= 2, got {logits.shape}")
    check(1 <= splits <= logits.shape[0], f"inception_score: splits must be in [1, N={logits.shape[0]}], got {splits}")
    log_p = log_softmax(logits, axis=1)
    scores = []
    for part in np.array_split(log_p, splits):
        log_marginal = logsumexp(part, axis=0) - np.log(part.shape[0])  # log p(y), finite even on underflow
        kl = (np.exp(part) * (part - log_marginal)).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def inception_score(images: ArrayLike, extractor: InceptionFeatureExtractor, splits: int = 10) -> tuple[float, float]:
    """Inception Score ``(mean, std)`` of a batch of images (or video frames); see the module docstring."""
    return inception_score_from_logits(extractor.logits(images), splits=splits)
