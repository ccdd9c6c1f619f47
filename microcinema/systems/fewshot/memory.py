"""Memory estimate of few-shot tuning, printed before training starts (DESIGN.md section 7).

How it is computed (honestly, and no weights are needed):

* **parameters, gradients, optimizer, EMA**: by formula from the inflated model's parameter counts: every
  parameter in its dtype, one fp32 gradient and two fp32 AdamW moments per trainable parameter, one fp32 shadow
  per trainable parameter with EMA;
* **activations**: *measured* on PyTorch's ``meta`` device: the inflated model is built there from the base's
  config (shapes only, no memory, no compute), the paper's parameters are marked trainable, and one training
  forward of a single clip (``frames x latent size``, the text length of the base's encoder) runs under
  ``torch.autograd.graph.saved_tensors_hooks``; the bytes of every distinct tensor autograd keeps for the
  backward pass are summed (frozen weights excluded, views counted once) and multiplied by the batch size. On
  the meta device attention runs unfused (PyTorch's math path, which keeps every attention matrix), so this is
  the unfused figure, an upper bound: the fused kernels of a GPU (flash, memory-efficient) and of recent CPUs
  keep no attention matrix and need less (tested: the estimate equals a real CPU forward with the math kernel).
  The backward pass's own temporaries and the CUDA context (~0.5-1 GB) are not counted.

The same meta forward also checks that the settings fit the model (frames, size, text width) before anything
is loaded or trained: the CPU path that catches a config error before a GPU is rented.
"""

from __future__ import annotations

import copy
import functools
import json
from dataclasses import asdict, dataclass
from typing import Any

import torch

from microcinema.core.errors import MicroCinemaError, first_line

_MIB = 2**20


@dataclass
class MemoryEstimate:
    """Bytes per part of a training step's memory (see the module docstring)."""

    total_parameters: int
    trainable_parameters: int
    parameters_bytes: int
    gradients_bytes: int
    optimizer_bytes: int
    ema_bytes: int
    activations_bytes: int
    batch_size: int
    num_frames: int
    latent_size: tuple[int, int]
    gradient_checkpointing: bool

    @property
    def total_bytes(self) -> int:
        return (self.parameters_bytes + self.gradients_bytes + self.optimizer_bytes + self.ema_bytes
                + self.activations_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_bytes": self.total_bytes}

    def describe(self) -> str:
        """A few lines for the console."""
        mib = lambda b: f"{b / _MIB:,.1f} MiB"  # noqa: E731
        h, w = self.latent_size
        return "\n".join([
            f"memory estimate (batch {self.batch_size} x {self.num_frames} frames x {h}x{w} latents"
            f"{', gradient checkpointing' if self.gradient_checkpointing else ''}):",
            f"  parameters   {mib(self.parameters_bytes):>14}  ({self.total_parameters:,}, "
            f"{self.trainable_parameters:,} trainable)",
            f"  gradients    {mib(self.gradients_bytes):>14}  (fp32, trainable only)",
            f"  optimizer    {mib(self.optimizer_bytes):>14}  (AdamW: 2 fp32 moments per trainable parameter)",
            *([f"  EMA          {mib(self.ema_bytes):>14}"] if self.ema_bytes else []),
            f"  activations  {mib(self.activations_bytes):>14}  (measured: tensors saved for backward in one forward "
            "on the meta device, x batch; unfused attention, an upper bound)",
            f"  total        {mib(self.total_bytes):>14}  (+ backward temporaries and the CUDA context, not counted)",
        ])


def estimate_memory(unet_config: dict[str, Any], attention: str, *, batch_size: int, num_frames: int,
                    latent_size: tuple[int, int], text_length: int, text_dim: int | None = None,
                    memory_nonlinearity: str = "tanh", param_dtype: torch.dtype = torch.float32,
                    ema: bool = False, gradient_checkpointing: bool = False) -> MemoryEstimate:
    """Estimate one training step's memory for an inflated ``UNet2DConditionModel`` of ``unet_config`` (see the
    module docstring). Raises a one-line error when the settings do not fit the model. The same settings are
    measured once per process (the meta forward takes seconds for a large U-Net)."""
    key = json.dumps([unet_config, attention, batch_size, num_frames, list(latent_size), text_length, text_dim,
                      memory_nonlinearity, str(param_dtype), ema, gradient_checkpointing], sort_keys=True, default=str)
    return copy.copy(_estimate(key))


@functools.lru_cache(maxsize=16)
def _estimate(key: str) -> MemoryEstimate:
    (unet_config, attention, batch_size, num_frames, latent_size, text_length, text_dim, memory_nonlinearity,
     dtype_name, ema, gradient_checkpointing) = json.loads(key)
    param_dtype = getattr(torch, dtype_name.replace("torch.", ""))
    from microcinema.systems.fewshot.inflation import FewShotVideoUNet, count_parameters, mark_trainable

    with torch.device("meta"):
        model = FewShotVideoUNet(unet_config=unet_config, attention=attention,
                                 memory_nonlinearity=memory_nonlinearity)
    torch.nn.Module.to(model, param_dtype)  # (ModelMixin.to warns about dtype casts)
    names = mark_trainable(model, log=None)
    if gradient_checkpointing:
        model.enable_gradient_checkpointing()
    total, trainable = count_parameters(model), count_parameters(model, names)
    cfg = model.unet.config
    h, w = latent_size
    dim = text_dim or cfg.cross_attention_dim
    saved: dict[int, tuple[torch.Tensor, int]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t._base if t._base is not None else t
        key = id(base)
        size = base.numel() * base.element_size()
        if size > saved.get(key, (None, 0))[1]:
            saved[key] = (base, size)
        return t

    sample = torch.zeros(1, cfg.in_channels, num_frames, h, w, device="meta", dtype=param_dtype)
    states = torch.zeros(1, text_length, dim if isinstance(dim, int) else dim[0], device="meta", dtype=param_dtype)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(sample, torch.zeros(1, device="meta", dtype=torch.long), states).sample
            out.float().square().mean()
    except MicroCinemaError:
        raise
    except (RuntimeError, ValueError) as error:
        first = first_line(error)
        raise MicroCinemaError(f"the settings do not fit the base model ({num_frames} frames, {h}x{w} latents, "
                               f"text {text_length}x{dim}): {first}") from None
    weights = {id(p) for p in model.parameters()}
    activations = sum(size for key, (_, size) in saved.items() if key not in weights)
    pbytes = torch.tensor([], dtype=param_dtype).element_size()
    return MemoryEstimate(
        total_parameters=total, trainable_parameters=trainable, parameters_bytes=total * pbytes,
        gradients_bytes=trainable * 4, optimizer_bytes=2 * trainable * 4, ema_bytes=trainable * 4 if ema else 0,
        activations_bytes=activations * batch_size, batch_size=batch_size, num_frames=num_frames,
        latent_size=(h, w), gradient_checkpointing=bool(gradient_checkpointing))


__all__ = ["MemoryEstimate", "estimate_memory"]
