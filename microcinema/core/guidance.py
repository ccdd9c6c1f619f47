"""Classifier-free guidance on noise predictions, and batched guided :data:`~microcinema.core.diffusion.EpsModel`s.

* :func:`classifier_free_guidance`: ``eps = eps_u + s (eps_c - eps_u)`` (Ho & Salimans 2022, eq. 6, written
  with SD's scale convention: ``s = 1`` is the conditional model, ``s = 0`` the unconditional one).
* :func:`compositional_guidance`: ART-V's multi-condition guidance
  ``eps = e(all) + sum_k w_k (e(all) - e(all without k))`` (ART-V, inference section; w_ref = w_anchor = 0.25,
  w_text = 6.5). With a single term it is CFG with ``s = 1 + w``.
* :func:`cfg_eps_model` / :func:`compositional_eps_model`: wrap a conditional network
  ``eps_model_with_cond(z_t, t, cond) -> eps`` into a plain EpsModel that evaluates all conditionings in
  one batch (conditioning = tensor, ``None``, or a (nested) dict of those, concatenated on the batch dim).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor

from microcinema.core.diffusion import EpsModel
from microcinema.core.errors import MicroCinemaError

__all__ = [
    "Cond",
    "CondEpsModel",
    "classifier_free_guidance",
    "compositional_guidance",
    "cfg_eps_model",
    "compositional_eps_model",
    "concat_cond",
]

#: Conditioning: a tensor with the batch first, ``None``, or a mapping of those (nested mappings allowed),
#: e.g. ``{"encoder_hidden_states": text, "added_cond": {"anchor": a}}``.
Cond = Any

#: A conditional noise predictor ``eps_model_with_cond(z_t, t, cond) -> eps``.
CondEpsModel = Callable[[Tensor, Tensor, Cond], Tensor]


def _check_weight(name: str, w: float) -> float:
    w = float(w)
    if not w >= 0:  # also rejects NaN
        raise MicroCinemaError(f"{name} must be a non-negative number, got {w}")
    return w


def classifier_free_guidance(eps_cond: Tensor, eps_uncond: Tensor, scale: float) -> Tensor:
    """``eps_uncond + scale * (eps_cond - eps_uncond)``; ``scale >= 0`` (1: exactly ``eps_cond``, 0: exactly
    ``eps_uncond``, so the batched shortcut of :func:`cfg_eps_model` gives bit-identical results)."""
    scale = _check_weight("guidance scale", scale)
    if scale == 1.0:
        return eps_cond
    if scale == 0.0:
        return eps_uncond
    return eps_uncond + scale * (eps_cond - eps_uncond)


def compositional_guidance(eps_all: Tensor, terms: Mapping[str, tuple[Tensor, float]]) -> Tensor:
    """``eps_all + sum_k w_k (eps_all - eps_without_k)`` for ``terms = {name_k: (eps_without_k, w_k)}``,
    ``w_k >= 0`` (ART-V's guidance over references, anchor and text)."""
    out = eps_all
    for name, (eps_without, w) in terms.items():
        w = _check_weight(f"guidance weight {name!r}", w)
        if w:
            out = out + w * (eps_all - eps_without)
    return out


def _batch_of(cond: Cond) -> int | None:
    if isinstance(cond, Tensor):
        return cond.shape[0]
    if isinstance(cond, Mapping):
        for v in cond.values():
            b = _batch_of(v)
            if b is not None:
                return b
    return None


def _expand_batch(cond: Cond, batch: int) -> Cond:
    if isinstance(cond, Tensor):
        if cond.shape[0] == batch:
            return cond
        if cond.shape[0] == 1:
            return cond.expand(batch, *cond.shape[1:])
        raise MicroCinemaError(f"conditioning batch {cond.shape[0]} matches neither the latent batch {batch} nor 1")
    if isinstance(cond, Mapping):
        return {k: _expand_batch(v, batch) for k, v in cond.items()}
    return cond


def concat_cond(conds: list[Cond], batch: int | None = None) -> Cond:
    """Concatenate conditionings of the same structure on the batch dimension (tensors with batch 1 are
    expanded to ``batch`` first). ``None`` entries must be ``None`` in all; other values must be equal."""
    if batch is not None:
        conds = [_expand_batch(c, batch) for c in conds]
    first = conds[0]
    if isinstance(first, Tensor):
        if not all(isinstance(c, Tensor) for c in conds):
            raise MicroCinemaError("conditionings differ in structure: tensor in one, not in another")
        return torch.cat(conds, dim=0)
    if isinstance(first, Mapping):
        keys = set(first)
        if not all(isinstance(c, Mapping) and set(c) == keys for c in conds):
            raise MicroCinemaError(f"conditionings differ in keys; expected {sorted(keys)}")
        return {k: concat_cond([c[k] for c in conds]) for k in first}
    if not all(c is first or c == first for c in conds):
        raise MicroCinemaError(f"non-tensor conditioning values differ between branches: {conds!r}")
    return first


def _batched(eps_model_with_cond: CondEpsModel, x: Tensor, t: Tensor, conds: list[Cond]) -> list[Tensor]:
    """Evaluate the model on ``len(conds)`` copies of ``(x, t)`` in one batch, one conditioning per copy."""
    n, b = len(conds), x.shape[0]
    if n == 1:
        return [eps_model_with_cond(x, t, _expand_batch(conds[0], b))]
    eps = eps_model_with_cond(torch.cat([x] * n), torch.cat([t] * n), concat_cond(conds, b))
    return list(eps.chunk(n))


def cfg_eps_model(
    eps_model_with_cond: CondEpsModel, cond: Cond, uncond: Cond, scale: float
) -> EpsModel:
    """An EpsModel computing :func:`classifier_free_guidance` of ``cond`` over ``uncond`` with one batched
    network call per step (one unbatched call when ``scale`` is 1 or 0: the other branch has weight 0)."""
    scale = _check_weight("guidance scale", scale)

    def eps_model(x: Tensor, t: Tensor) -> Tensor:
        if scale == 1.0:
            return _batched(eps_model_with_cond, x, t, [cond])[0]
        if scale == 0.0:
            return _batched(eps_model_with_cond, x, t, [uncond])[0]
        eps_u, eps_c = _batched(eps_model_with_cond, x, t, [uncond, cond])
        return classifier_free_guidance(eps_c, eps_u, scale)

    return eps_model


def compositional_eps_model(
    eps_model_with_cond: CondEpsModel, cond_all: Cond, terms: Mapping[str, tuple[Cond, float]]
) -> EpsModel:
    """An EpsModel computing :func:`compositional_guidance` with ``terms = {name: (cond_without_name, w)}``
    in one batched call per step (terms with weight 0 are not evaluated)."""
    active = {k: (c, _check_weight(f"guidance weight {k!r}", w)) for k, (c, w) in terms.items()}
    active = {k: v for k, v in active.items() if v[1] > 0}

    def eps_model(x: Tensor, t: Tensor) -> Tensor:
        outs = _batched(eps_model_with_cond, x, t, [cond_all] + [c for c, _ in active.values()])
        return compositional_guidance(outs[0], {k: (e, w) for (k, (_, w)), e in zip(active.items(), outs[1:])})

    return eps_model
