"""Structured noise priors for few-shot video diffusion (recurrent few-shot paper, section 3.3).

Small pure functions in the k-diffusion style: ``noise(shape, generator, *, alpha, device, dtype)`` returns
Gaussian noise for latent videos ``(B, C, F, h, w)`` (frames on axis 2) whose frames are correlated. Used in
sampling as the initial latent (unit variance, as ``torch.randn``) and in training as the noise that
corrupts the clip and is the epsilon target (:func:`noise_prior` is the hook of
:class:`~microcinema.core.diffusion.DiffusionLoss`).

* ``"independent"``: ``eps_i ~ N(0, I)``, as every image model.
* ``"shared"`` (LAMP): every frame mixes one shared noise ``eps_s`` with its own ``eps'_i``.
* ``"autoregressive"`` (the paper's proposal): each frame mixes the previous frame's noise with its own.

The paper writes the mixes as ``alpha * a + (1 - alpha) * b``. For independent unit Gaussians that has
variance ``alpha^2 + (1 - alpha)^2`` (0.68 for alpha = 0.2), so the noise is *not* what the diffusion model
was trained on (``z_t = sqrt(abar) z_0 + sqrt(1 - abar) eps`` assumes ``Var(eps) = 1``), and the
auto-regressive form shrinks towards ``(1 - alpha) / (1 + alpha)`` over frames. Here the same mix is divided by
``sqrt(alpha^2 + (1 - alpha)^2)``, which makes every frame's noise unit variance; it is exactly PYoCo's
mixed and progressive noise (Ge et al. 2023) with their ``a = alpha / (1 - alpha)``:
``sqrt(a^2 / (1 + a^2)) eps_s + sqrt(1 / (1 + a^2)) eps'_i`` and
``eps_i = a / sqrt(1 + a^2) eps_(i-1) + 1 / sqrt(1 + a^2) eps'_i``.

``alpha`` in ``[0, 1]`` is the one parameter: 0 is independent noise, 1 the same noise in every frame. The
correlation it gives between frames ``i`` and ``j`` (:func:`frame_correlation`) is
``alpha^2 / (alpha^2 + (1 - alpha)^2)`` for shared noise (every pair) and ``r^|i - j|`` with
``r = alpha / sqrt(alpha^2 + (1 - alpha)^2)`` for auto-regressive noise; :func:`alpha_for_correlation` inverts it.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor

from microcinema.core.errors import check

#: The noise priors of section 3.3.
NOISE_KINDS: tuple[str, ...] = ("independent", "shared", "autoregressive")

#: The paper's example mixing weight (section 4.3: shared noise keeps frames apart "unless alpha is small (0.2)").
DEFAULT_ALPHA = 0.2

#: Latent videos are (B, C, F, h, w): frames on this axis.
FRAME_DIM = 2


def _check_kind(kind: str) -> None:
    check(kind in NOISE_KINDS, f"unknown noise prior {kind!r}; allowed: {', '.join(NOISE_KINDS)}")


def _check_alpha(alpha: float) -> float:
    ok = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha) and 0 <= alpha <= 1
    check(ok, f"noise alpha must be a number in [0, 1] (0: independent frames, 1: identical frames), got {alpha!r}")
    return float(alpha)


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    check(len(shape) == 5 and all(s >= 1 for s in shape),
          f"structured noise is for latent videos (B, C, F, h, w), got shape {shape}")
    return shape


def mix_weights(alpha: float) -> tuple[float, float]:
    """``(w_a, w_b)`` of the unit-variance mix ``w_a * a + w_b * b`` of two independent unit Gaussians: the
    paper's ``(alpha, 1 - alpha)`` divided by ``sqrt(alpha^2 + (1 - alpha)^2)`` (so ``w_a^2 + w_b^2 = 1``)."""
    alpha = _check_alpha(alpha)
    norm = math.hypot(alpha, 1.0 - alpha)
    return alpha / norm, (1.0 - alpha) / norm


def paper_mix_variance(alpha: float) -> float:
    """Variance of the paper's unnormalised mix ``alpha * a + (1 - alpha) * b`` (0.68 for alpha = 0.2)."""
    alpha = _check_alpha(alpha)
    return alpha**2 + (1.0 - alpha) ** 2


def frame_correlation(kind: str, alpha: float, lag: int = 1) -> float:
    """Correlation of two frames ``lag`` apart (``lag >= 1``) under the prior ``kind`` with parameter ``alpha``."""
    _check_kind(kind)
    check(isinstance(lag, int) and lag >= 1, f"lag must be an integer >= 1, got {lag!r}")
    w_a, _ = mix_weights(alpha)
    if kind == "independent":
        return 0.0
    return w_a**2 if kind == "shared" else w_a**lag


def alpha_for_correlation(kind: str, correlation: float) -> float:
    """The ``alpha`` whose neighbouring-frame correlation (:func:`frame_correlation`, lag 1) is ``correlation``."""
    _check_kind(kind)
    check(kind != "independent", "independent noise has no correlation parameter")
    ok = isinstance(correlation, (int, float)) and math.isfinite(correlation) and 0 <= correlation <= 1
    check(ok, f"correlation must be a number in [0, 1], got {correlation!r}")
    w_a = math.sqrt(correlation) if kind == "shared" else float(correlation)  # w_a = alpha / hypot(alpha, 1 - alpha)
    if w_a >= 1.0:
        return 1.0
    ratio = w_a / math.sqrt(1.0 - w_a**2)  # PYoCo's a = alpha / (1 - alpha)
    return ratio / (1.0 + ratio)


# ------------------------------------------------------------------------------------------------------ mixes


def shared_mix(noise: Tensor, shared: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """LAMP's shared noise, normalised: ``w_a * shared + w_b * noise_i`` for every frame ``i``.

    ``noise``: unit Gaussian ``(B, C, F, h, w)``; ``shared``: unit Gaussian ``(B, C, 1, h, w)``."""
    w_a, w_b = mix_weights(alpha)
    check(noise.ndim == 5 and shared.ndim == 5 and shared.shape[FRAME_DIM] == 1
          and shared.shape[:2] == noise.shape[:2] and shared.shape[3:] == noise.shape[3:],
          f"shared noise must be (B, C, 1, h, w) for noise {tuple(noise.shape)}, got {tuple(shared.shape)}")
    return w_a * shared.to(noise) + w_b * noise


def autoregressive_mix(noise: Tensor, alpha: float = DEFAULT_ALPHA) -> Tensor:
    """The paper's auto-regressive noise, normalised: ``eps_1 = noise_1``,
    ``eps_i = w_a * eps_(i-1) + w_b * noise_i`` (``noise``: unit Gaussian ``(B, C, F, h, w)``)."""
    w_a, w_b = mix_weights(alpha)
    check(noise.ndim == 5, f"noise must be a latent video (B, C, F, h, w), got shape {tuple(noise.shape)}")
    frames = [noise.select(FRAME_DIM, 0)]
    for i in range(1, noise.shape[FRAME_DIM]):
        frames.append(w_a * frames[-1] + w_b * noise.select(FRAME_DIM, i))
    return torch.stack(frames, dim=FRAME_DIM)


# ----------------------------------------------------------------------------------------------------- priors


def _randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str | None,
           dtype: torch.dtype | None) -> Tensor:
    """Unit Gaussian drawn on the generator's device (the same numbers for a CPU generator whatever
    ``device``), then moved to ``device``."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(tuple(shape), generator=generator, device=draw_device).to(device=device, dtype=dtype)


def independent_noise(shape: Sequence[int], generator: torch.Generator | None = None, *,
                      device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """``N(0, I)`` for every frame independently (``torch.randn``)."""
    return _randn(_check_shape(shape), generator, device, dtype)


def shared_noise(shape: Sequence[int], generator: torch.Generator | None = None, *, alpha: float = DEFAULT_ALPHA,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Tensor:
    """LAMP's shared noise (section 3.3), unit variance per frame (:func:`shared_mix`). Draws the per-frame
    noise first, then the shared one."""
    shape = _check_shape(shape)
    _check_alpha(alpha)
    noise = _randn(shape, generator, device, torch.float32)
    shared = _randn((shape[0], shape[1], 1, shape[3], shape[4]), generator, device, torch.float32)
    return shared_mix(noise, shared, alpha).to(dtype or noise.dtype)


def autoregressive_noise(shape: Sequence[int], generator: torch.Generator | None = None, *,
                         alpha: float = DEFAULT_ALPHA, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> Tensor:
    """The paper's auto-regressive noise (section 3.3), unit variance per frame (:func:`autoregressive_mix`)."""
    shape = _check_shape(shape)
    _check_alpha(alpha)
    return autoregressive_mix(_randn(shape, generator, device, torch.float32), alpha).to(dtype or torch.float32)


def structured_noise(kind: str, shape: Sequence[int], generator: torch.Generator | None = None, *,
                     alpha: float = DEFAULT_ALPHA, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> Tensor:
    """Noise of the prior ``kind`` (one of :data:`NOISE_KINDS`): e.g. the initial latents of sampling."""
    _check_kind(kind)
    if kind == "independent":
        _check_alpha(alpha)
        return independent_noise(shape, generator, device=device, dtype=dtype)
    fn = shared_noise if kind == "shared" else autoregressive_noise
    return fn(shape, generator, alpha=alpha, device=device, dtype=dtype)


def noise_prior(kind: str, alpha: float = DEFAULT_ALPHA,
                generator: torch.Generator | None = None) -> Callable[[Tensor], Tensor]:
    """The training hook: ``prior(n) -> noise`` for :class:`~microcinema.core.diffusion.DiffusionLoss`
    (``noise_prior=``), turning its unit Gaussian ``n`` ``(B, C, F, h, w)`` into the prior's noise, which then
    corrupts the clip and is the epsilon target. ``n`` is the per-frame part; shared noise draws its shared part
    from ``generator`` (required for ``"shared"``: the loss's generator, so a run is reproducible), so
    ``noise_prior(kind, alpha, g)(randn(shape, g))`` equals ``structured_noise(kind, shape, g, alpha=alpha)``."""
    _check_kind(kind)
    _check_alpha(alpha)
    if kind == "independent":
        return lambda n: n
    if kind == "autoregressive":
        return lambda n: autoregressive_mix(n, alpha)
    check(generator is not None, "the shared noise prior needs a generator for its shared part")

    def prior(n: Tensor) -> Tensor:
        check(n.ndim == 5, f"noise must be a latent video (B, C, F, h, w), got shape {tuple(n.shape)}")
        shared = _randn((n.shape[0], n.shape[1], 1, n.shape[3], n.shape[4]), generator, n.device, torch.float32)
        return shared_mix(n.float(), shared, alpha).to(n.dtype)

    return prior


__all__ = [
    "DEFAULT_ALPHA",
    "FRAME_DIM",
    "NOISE_KINDS",
    "alpha_for_correlation",
    "autoregressive_mix",
    "autoregressive_noise",
    "frame_correlation",
    "independent_noise",
    "mix_weights",
    "noise_prior",
    "paper_mix_variance",
    "shared_mix",
    "shared_noise",
    "structured_noise",
]
