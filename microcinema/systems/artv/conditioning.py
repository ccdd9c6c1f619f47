"""ART-V's conditions: which frames condition frame ``i`` in training (anchored conditioning, section 3.4),
condition dropout, the null conditions and the compositional guidance over references, anchor and text
(appendix A, eq. 8), and :func:`artv_eps`, the one noise prediction that training and the pipeline share.

**Training frames.** For a clip ``y(0..F-1)`` the current frame ``i`` is uniform in ``[1, F-1]``; the
references are ``y(i-1), y(i-2)`` with indices clamped at 0, so ``i = 1`` sees ``y(0)`` twice, which is how
inference starts from a single frame (the paper starts "with the key frame, or multiple copies of it"); the
anchor is uniform among the ``anchor_window = 10`` frames before ``i`` (clamped at 0). Frame 0 itself is not a
training target with references: a first frame is the null-references case, which condition dropout trains.
For a turning clip (its caption describes frames from ``lead_in`` on, :mod:`microcinema.data.synthetic`), the
current frame is uniform in ``[max(1, lead_in), F-1]``: the references may still move the lead-in's way while
the text asks for the new motion, as after every prompt change at inference.
At inference the anchor is the first frame (or the user's key frame; in multi-prompt videos the previous
segment's last frame).

**Null conditions** (what "no ref", "no anchor", "no text" mean, in training dropout and in guidance):

* no references: zero latents into the adapter (0 is the mean of the unit-variance latents) and mask ``m = 0``
  (nothing is copied: ``eps = eps_dynamic``); the level embedding is left as it is;
* no anchor: the anchor tokens are masked out of the cross-attention (exactly as if absent);
* no text: the empty prompt's states and mask.

Each is dropped with probability 10 % independently in training (so 1 % of the samples have neither
references nor anchor: the text-only first frame; ``first_frame_prob`` adds more of them). The text-only
mode generates the first frame with both dropped.

**Guidance** (eq. 8): ``eps = e(all) + w_ref (e(all) - e(no ref)) + w_anc (e(all) - e(no anchor)) +
w_txt (e(all) - e(no text))`` with ``0.25 / 0.25 / 6.5``, the four branches in one batched forward
(:func:`guided_eps_model`); a branch whose condition is absent (no references on the first frame) equals
``e(all)`` and is skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from microcinema.core.diffusion import EpsModel
from microcinema.core.errors import check
from microcinema.core.guidance import CondEpsModel, compositional_eps_model
from microcinema.systems.artv.noise_augmentation import INFERENCE_LEVEL

__all__ = ["ANCHOR_WINDOW", "CONDITION_DROPOUT", "GUIDANCE_WEIGHTS", "FrameChoice", "sample_frames", "gather_frames",
           "sample_condition_dropout", "make_conditions", "null_conditions", "guidance_branches", "cond_eps_model",
           "check_weight", "guided_eps_model", "artv_eps"]

#: Training: the anchor is a random frame among this many before the current one (section 3.4).
ANCHOR_WINDOW = 10
#: Training: each condition (references, anchor, text) is dropped with this probability.
CONDITION_DROPOUT = 0.1
#: Guidance weights of eq. 8 (appendix A): references, anchor, text.
GUIDANCE_WEIGHTS = {"ref": 0.25, "anchor": 0.25, "text": 6.5}


@dataclass
class FrameChoice:
    """Frame indices per sample: ``current`` ``(B,)``, ``refs`` ``(B, R)`` (newest first), ``anchor`` ``(B,)``."""

    current: Tensor
    refs: Tensor
    anchor: Tensor


def sample_frames(num_frames: int, batch_size: int, generator: torch.Generator | None = None, *,
                  num_references: int = 2, anchor_window: int = ANCHOR_WINDOW, lead_in: Tensor | None = None,
                  device: torch.device | str | None = None) -> FrameChoice:
    """Draw (from ``generator``: the current frames, then the anchor offsets) the training frames of a batch
    of clips with ``num_frames`` frames each (see the module docstring); ``lead_in`` ``(B,)``: each clip's
    first captioned frame (turning clips), None for plain clips."""
    check(isinstance(num_frames, int) and num_frames >= 2,
          f"ART-V trains on clips of at least 2 frames, got num_frames={num_frames!r}")
    check(isinstance(anchor_window, int) and anchor_window >= 1,
          f"anchor_window must be an integer >= 1, got {anchor_window!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if lead_in is None:
        current = torch.randint(1, num_frames, (batch_size,), generator=generator, device=gen_device)
    else:
        first = lead_in.to(gen_device).long().clamp(1, num_frames - 1)
        check(tuple(first.shape) == (batch_size,), f"lead_in must be ({batch_size},), got {tuple(lead_in.shape)}")
        u = torch.rand(batch_size, generator=generator, device=gen_device)
        current = first + (u * (num_frames - first)).long().clamp(max=num_frames - 1 - first)
    refs = (current[:, None] - torch.arange(1, num_references + 1, device=gen_device)).clamp_min(0)
    # anchor uniform in [max(0, i - window), i - 1]
    low = (current - anchor_window).clamp_min(0)
    span = current - low
    u = torch.rand(batch_size, generator=generator, device=gen_device)
    anchor = low + (u * span).long().clamp(max=span - 1)
    move = (lambda x: x.to(device)) if device is not None else (lambda x: x)
    return FrameChoice(move(current), move(refs), move(anchor))


def gather_frames(clip: Tensor, index: Tensor) -> Tensor:
    """Frames of clips ``(B, C, F, H, W)`` at per-sample indices: ``(B,)`` -> ``(B, C, H, W)``, ``(B, R)`` ->
    ``(B, R, C, H, W)``."""
    b = clip.shape[0]
    index = index.to(clip.device)
    rows = torch.arange(b, device=clip.device)
    frames = clip.transpose(1, 2)  # (B, F, C, H, W)
    if index.ndim == 1:
        return frames[rows, index]
    return frames[rows[:, None], index]


def sample_condition_dropout(batch_size: int, generator: torch.Generator | None = None, *,
                             p_ref: float = CONDITION_DROPOUT, p_anchor: float = CONDITION_DROPOUT,
                             p_text: float = CONDITION_DROPOUT, p_first_frame: float = 0.0,
                             device: torch.device | str | None = None) -> dict[str, Tensor]:
    """Keep masks ``{"ref", "anchor", "text"}`` (``(B,)`` bool, ``False`` = dropped): each condition dropped
    independently with its probability; with probability ``p_first_frame`` a sample also drops both
    references and anchor (the text-only first frame). Draws one ``(B, 4)`` uniform tensor from ``generator``."""
    for name, p in (("p_ref", p_ref), ("p_anchor", p_anchor), ("p_text", p_text), ("p_first_frame", p_first_frame)):
        check(isinstance(p, (int, float)) and 0 <= p <= 1, f"{name} must be a probability in [0, 1], got {p!r}")
    gen_device = generator.device if generator is not None else torch.device("cpu")
    u = torch.rand(batch_size, 4, generator=generator, device=gen_device)
    first = u[:, 3] < p_first_frame
    keep = {"ref": (u[:, 0] >= p_ref) & ~first, "anchor": (u[:, 1] >= p_anchor) & ~first, "text": u[:, 2] >= p_text}
    return {k: v.to(device) for k, v in keep.items()} if device is not None else keep


# ------------------------------------------------------------------------------------------- conditions

#: An ART-V conditioning: a dict whose keys are :meth:`ARTVModel.forward`'s keyword arguments
#: (``encoder_hidden_states``, ``encoder_attention_mask``, ``refs``, ``anchor``, ``ref_level``, ``ref_noise``,
#: ``anchor_noise``, ``ref_keep``, ``anchor_keep``), tensors batch first or ``None``; it concatenates on the
#: batch axis (:func:`microcinema.core.guidance.concat_cond`).
ARTVCond = dict


def make_conditions(text: Tensor, refs: Tensor | None = None, anchor: Tensor | None = None, *,
                    text_mask: Tensor | None = None, ref_level: int | Tensor = INFERENCE_LEVEL,
                    generator: torch.Generator | None = None, ref_noise: Tensor | None = None,
                    anchor_noise: Tensor | None = None) -> ARTVCond:
    """The conditioning of one frame for a batch: text states ``(B, L, D)`` (and mask), the clean references
    ``(B, R, C, H, W)`` (newest first) or ``None`` (first frame), the clean anchor ``(B, C, h, w)`` or ``None``,
    the augmentation level (default the inference level 200) and its noise, drawn here from ``generator`` when
    not given (references first, then anchor), so every guidance branch and every sampler step of the frame
    sees the same corrupted references."""
    b = text.shape[0]
    device = text.device
    levels = torch.as_tensor(ref_level, device=device)
    levels = (levels.expand(b) if levels.ndim == 0 else levels).long()

    def noise_for(x: Tensor | None, given: Tensor | None) -> Tensor | None:
        if x is None or given is not None:
            return given
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return torch.randn(x.shape, generator=generator, device=gen_device).to(device=x.device, dtype=x.dtype)

    ref_noise = noise_for(refs, ref_noise)
    anchor_noise = noise_for(anchor, anchor_noise)
    ones = torch.ones(b, dtype=torch.bool, device=device)
    return {"encoder_hidden_states": text, "encoder_attention_mask": text_mask, "refs": refs, "anchor": anchor,
            "ref_level": levels, "ref_noise": ref_noise, "anchor_noise": anchor_noise,
            "ref_keep": ones if refs is not None else None, "anchor_keep": ones if anchor is not None else None}


def _pad_text(states: Tensor, mask: Tensor | None, length: int) -> tuple[Tensor, Tensor | None]:
    b, n, d = states.shape
    if mask is None and n == length:
        return states, None
    mask = torch.ones(b, n, device=states.device, dtype=torch.long) if mask is None else mask
    if n < length:
        states = torch.cat([states, states.new_zeros(b, length - n, d)], dim=1)
        mask = torch.cat([mask, mask.new_zeros(b, length - n)], dim=1)
    return states, mask


def null_conditions(cond: ARTVCond, *, refs: bool = False, anchor: bool = False,
                    text: tuple[Tensor, Tensor | None] | None = None) -> ARTVCond:
    """``cond`` with conditions dropped: ``refs=True`` (zero references, ``m = 0``), ``anchor=True`` (anchor
    tokens masked out), ``text=(states, mask)`` (the empty prompt's encoding, batch 1 or B, replacing the text;
    both are padded to the same length with masked zeros). Absent conditions stay absent."""
    out = dict(cond)
    b = cond["encoder_hidden_states"].shape[0]
    if refs and cond.get("refs") is not None:
        out["refs"] = torch.zeros_like(cond["refs"])
        out["ref_keep"] = torch.zeros_like(cond["ref_keep"])
    if anchor and cond.get("anchor") is not None:
        out["anchor_keep"] = torch.zeros_like(cond["anchor_keep"])
    if text is not None:
        states, mask = text
        check(states.ndim == 3 and states.shape[0] in (1, b) and states.shape[2] == cond["encoder_hidden_states"].shape[2],
              f"null text states must be (1 or {b}, L, {cond['encoder_hidden_states'].shape[2]}), "
              f"got {tuple(states.shape)}")
        states = states.to(cond["encoder_hidden_states"]).expand(b, -1, -1)
        mask = None if mask is None else mask.to(states.device).expand(b, -1)
        length = max(states.shape[1], cond["encoder_hidden_states"].shape[1])
        out["encoder_hidden_states"], out["encoder_attention_mask"] = _pad_text(states, mask, length)
    return out


def guidance_branches(cond: ARTVCond, null_text: tuple[Tensor, Tensor | None]) -> dict[str, ARTVCond]:
    """The four conditionings of eq. 8: ``{"all", "ref", "anchor", "text"}`` (the last three without that
    condition), text padded to a common length so they concatenate on the batch axis."""
    branches = {"all": dict(cond), "ref": null_conditions(cond, refs=True), "anchor": null_conditions(cond, anchor=True),
                "text": null_conditions(cond, text=null_text)}
    length = max(c["encoder_hidden_states"].shape[1] for c in branches.values())
    masks = any(c["encoder_attention_mask"] is not None for c in branches.values())
    for c in branches.values():
        states, mask = c["encoder_hidden_states"], c["encoder_attention_mask"]
        if masks and mask is None:
            mask = torch.ones(states.shape[:2], device=states.device, dtype=torch.long)
        c["encoder_hidden_states"], c["encoder_attention_mask"] = _pad_text(states, mask, length)
    return branches


def cond_eps_model(model: Any, alphas_cumprod: Any = None) -> CondEpsModel:
    """``eps_model_with_cond(y_t, t, cond)`` for :mod:`microcinema.core.guidance`: ``model``'s combined noise
    prediction (eq. 7) under ``cond`` (an :data:`ARTVCond`)."""
    return lambda y_t, t, cond: model(y_t, t, alphas_cumprod=alphas_cumprod, **cond).sample


def check_weight(name: str, value: Any) -> float:
    """A guidance weight: a finite real number >= 0 (one-line error otherwise, e.g. for ``"high"`` or NaN)."""
    check(isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
          and math.isfinite(float(value)) and float(value) >= 0,
          f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def guided_eps_model(model: Any, cond: ARTVCond, null_text: tuple[Tensor, Tensor | None], *,
                     w_ref: float = GUIDANCE_WEIGHTS["ref"], w_anchor: float = GUIDANCE_WEIGHTS["anchor"],
                     w_text: float = GUIDANCE_WEIGHTS["text"], alphas_cumprod: Any = None,
                     mask_callback: Callable[[Tensor, Tensor], None] | None = None) -> EpsModel:
    """An :data:`~microcinema.core.diffusion.EpsModel` of ART-V's compositional guidance (eq. 8) for the
    sampler: the branches with a positive weight and a present condition in one batched forward per step,
    combined by :func:`~microcinema.core.guidance.compositional_guidance`. ``mask_callback(t, m)``, if given, is
    called at every evaluation with the timesteps and the mask ``(B, 1, H, W)`` of the ``e(all)`` branch (the
    mean mask per sampling step of the paper's Fig. 4); not called without masked diffusion."""
    branches = guidance_branches(cond, null_text)
    present = {"ref": cond.get("refs") is not None, "anchor": cond.get("anchor") is not None, "text": True}
    weights = {"ref": check_weight("w_ref", w_ref), "anchor": check_weight("w_anchor", w_anchor),
               "text": check_weight("w_text", w_text)}
    terms = {k: (branches[k], weights[k] if present[k] else 0.0) for k in ("ref", "anchor", "text")}
    active = 1 + sum(1 for _, w in terms.values() if w > 0)

    def eps_with_cond(y_t: Tensor, t: Tensor, c: ARTVCond) -> Tensor:
        out = model(y_t, t, alphas_cumprod=alphas_cumprod, **c)
        if mask_callback is not None and out.mask is not None:
            b = y_t.shape[0] // active  # compositional_eps_model puts e(all) first
            mask_callback(t[:b], out.mask[:b])
        return out.sample

    return compositional_eps_model(eps_with_cond, branches["all"], terms)


def artv_eps(model: Any, y_t: Tensor, t: Tensor | float, refs: Tensor | None, anchor: Tensor | None, text: Tensor,
             ref_level: int | Tensor, *, text_mask: Tensor | None = None, ref_noise: Tensor | None = None,
             anchor_noise: Tensor | None = None, ref_keep: Tensor | None = None, anchor_keep: Tensor | None = None,
             alphas_cumprod: Any = None, return_output: bool = False) -> Any:
    """ART-V's noise prediction for frame ``i`` (eq. 7, masked combination included): ``model`` (an
    :class:`~microcinema.systems.artv.model.ARTVModel`) on the noisy latent ``y_t`` at ``t`` given the clean
    references ``(B, R, C, H, W)`` (newest first; ``None``: none), the clean anchor, the text states and the
    augmentation level (see :meth:`ARTVModel.forward`). ``return_output=True`` returns the
    :class:`~microcinema.systems.artv.model.ARTVOutput` (with ``eps_dynamic`` and ``mask``)."""
    out = model(y_t, t, text, refs=refs, anchor=anchor, ref_level=ref_level, encoder_attention_mask=text_mask,
                ref_noise=ref_noise, anchor_noise=anchor_noise, ref_keep=ref_keep, anchor_keep=anchor_keep,
                alphas_cumprod=alphas_cumprod)
    return out if return_output else out.sample
