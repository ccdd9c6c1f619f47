"""The embedded tiny family's saved pipeline settings: the tricks its models need, switched on here and not by
the library's class defaults (which are the papers'; DESIGN.md section 4, "the embedded family's saved config
turns on its own tricks").

:data:`MICROCINEMA` holds ``MicroCinemaPipeline`` config keys: ``MicroCinemaPipeline.embedded()`` builds the
shipped models with them, and they are written into ``model_index.json`` by ``save_pretrained``.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

#: ``MicroCinemaPipeline`` settings of the embedded family (64x64, the procedural domain, MiniLM text).
MICROCINEMA: Mapping[str, Any] = MappingProxyType({
    # sampling (the paper: EulerEDM, 50 steps): DPM-Solver++(2M) on SD's timesteps, 10 base steps and 8 for the
    # interpolation, chosen for speed (issue 19) with the stage-two evaluation unchanged (docs/results/cpu_speed.md)
    "sampler": "dpmpp_2m",
    "num_inference_steps": 10,
    "interp_sampler": "dpmpp_2m",
    "interp_num_inference_steps": 8,
    "guidance_scale": 5.0,             # the paper: 7.5
    "key_frame_sampler": "ddim",       # stage one: the embedded text-to-image model's own settings
    "key_frame_num_inference_steps": 25,
    "key_frame_guidance_scale": 5.0,
    "text_max_length": 32,             # MiniLM tokens the family was trained with
    "decode_chunk_size": 64,           # frames per VAE call as before the diffusers pipeline (same float sums)
    # beyond the paper, measured on the procedural domain (docs/results):
    "interp_anchor_means": True,       # each in-between frame's palette kept at its condition's
    "refine_strength": 0.3,            # motion-compensated key-frame refinement of base and in-between frames
    "pin_key_frame": True,             # the key frame kept exactly as the centre frame (also the class default)
})

__all__ = ["MICROCINEMA"]
