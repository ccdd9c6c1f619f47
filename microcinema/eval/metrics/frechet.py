"""Frechet distance between two Gaussians fitted to feature sets: the maths under FID and FVD.

``d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` (Dowson & Landau 1982), as used by FID (Heusel et
al. 2017) and FVD (Unterthiner et al. 2018). The computation follows ``calculate_frechet_distance`` of
pytorch-fid (mseitzer/pytorch-fid), itself a port of the TTUR reference: ``scipy.linalg.sqrtm`` of the
product; when that is not finite (a singular product, e.g. fewer samples than dimensions) ``eps`` is
added to both diagonals and the root retaken; an imaginary part left by round-off is dropped, one that is
not negligible is an error.

:func:`frechet_distance_from_features` with fewer samples than dimensions in a set (rank-deficient
covariances, e.g. a quick FID over a few dozen images) takes an exact shortcut instead of ``sqrtm`` of a
singular ``D x D`` product: with centred features ``A`` (n1 x D) and ``B`` (n2 x D),
``Tr (S1 S2)^(1/2) = ||A B^T||_* / sqrt((n1 - 1)(n2 - 1))`` (the nonzero eigenvalues of ``S1 S2`` are the
squared singular values of ``A B^T`` over ``(n1 - 1)(n2 - 1)``). It agrees with the ``sqrtm`` route to
round-off (~1e-8 relative) and costs ``n1 n2 D`` instead of ``D^3`` (seconds for ``D = 2048`` on one core).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg

from microcinema.core.errors import check


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (``np.cov(rowvar=False)``) of ``(N, D)`` features."""
    x = np.asarray(features, dtype=np.float64)
    check(x.ndim == 2, f"features must be a 2-D (N, D) array, got shape {x.shape}")
    check(x.shape[0] >= 2, f"features: need at least 2 samples for a covariance, got {x.shape[0]}")
    check(bool(np.isfinite(x).all()), "features contain NaN or inf")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Squared Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Raises :class:`~microcinema.core.errors.MicroCinemaError` on mismatched shapes and when the matrix square
    root keeps an imaginary component larger than ``1e-3`` on its diagonal (a numerically broken input).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    check(mu1.shape == mu2.shape and mu1.ndim == 1, f"means must be 1-D of one length, got {mu1.shape} and {mu2.shape}")
    d = mu1.shape[0]
    check(sigma1.shape == sigma2.shape == (d, d),
          f"covariances must be ({d}, {d}) to match the means, got {sigma1.shape} and {sigma2.shape}")

    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are expected (N < D); handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            offset = np.eye(d) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        check(imag <= 1e-3, f"frechet_distance: matrix square root has an imaginary component {imag:.3g} "
                            f"(ill-conditioned covariances; use more samples)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def frechet_distance_from_features(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """:func:`frechet_distance` between Gaussians fitted to two ``(N, D)`` feature sets (same ``D``).

    When a set has fewer samples than dimensions the trace term is computed exactly from the nuclear
    norm of the centred cross-product (module docstring) rather than with ``sqrtm``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    check(a.ndim == 2 and b.ndim == 2 and a.shape[1] == b.shape[1],
          f"feature sets must be (N, D) with one D, got {a.shape} and {b.shape}")
    (n1, d), n2 = a.shape, b.shape[0]
    if min(n1, n2) >= d:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b), eps=eps)
    for x in (a, b):
        check(x.shape[0] >= 2, f"features: need at least 2 samples for a covariance, got {x.shape[0]}")
        check(bool(np.isfinite(x).all()), "features contain NaN or inf")
    ac, bc = a - a.mean(axis=0), b - b.mean(axis=0)
    diff = a.mean(axis=0) - b.mean(axis=0)
    trace1, trace2 = (ac ** 2).sum() / (n1 - 1), (bc ** 2).sum() / (n2 - 1)
    tr_covmean = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((n1 - 1) * (n2 - 1))
    return float(diff @ diff + trace1 + trace2 - 2.0 * tr_covmean)
