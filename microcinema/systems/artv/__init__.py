"""ART-V (Weng et al. 2023, ``../shared/papers/artv-paper.txt``): auto-regressive text-to-video with an image
diffusion model, one frame at a time.

* :mod:`.model`: :class:`ARTVModel` (image U-Net + T2I-Adapter on the references + anchor tokens + reference
  noise-level embedding + the mask network), section 3.1 / appendix A;
* :mod:`.masked_diffusion`: the exact static noise, the masked combination (section 3.2);
* :mod:`.noise_augmentation`: corrupted references and anchor (section 3.3);
* :mod:`.conditioning`: training frames and anchor (section 3.4), condition dropout, null conditions, the
  batched compositional guidance (appendix A, eq. 8) and :func:`artv_eps`;
* :mod:`.task`: ``microcinema train artv``;
* :mod:`.segments`: multi-prompt schedules, anchors per frame, keyframes and loops (appendix D);
* :mod:`.pipeline`: :class:`ARTVPipeline` (``stream()`` and ``__call__``; imported on first use, so that training
  does not load the pipeline machinery; importing it lets ``DiffusionPipeline.from_pretrained`` load ART-V folders);
* :mod:`.cli`: ``microcinema artv``.
"""

from typing import Any

from microcinema.systems.artv.conditioning import (ANCHOR_WINDOW, CONDITION_DROPOUT, GUIDANCE_WEIGHTS, artv_eps,
                                                   cond_eps_model, guidance_branches, guided_eps_model,
                                                   make_conditions, null_conditions)
from microcinema.systems.artv.masked_diffusion import combine, static_noise
from microcinema.systems.artv.model import ARTVModel, ARTVOutput
from microcinema.systems.artv.noise_augmentation import INFERENCE_LEVEL, MAX_TRAIN_LEVEL, augment

__all__ = ["ARTVPipeline", "ARTVModel", "ARTVOutput", "artv_eps", "make_conditions", "null_conditions", "guidance_branches",
           "guided_eps_model", "cond_eps_model", "static_noise", "combine", "augment", "INFERENCE_LEVEL",
           "MAX_TRAIN_LEVEL", "ANCHOR_WINDOW", "CONDITION_DROPOUT", "GUIDANCE_WEIGHTS"]


def __getattr__(name: str) -> Any:
    if name == "ARTVPipeline":
        from microcinema.systems.artv.pipeline import ARTVPipeline

        return ARTVPipeline
    raise AttributeError(f"module 'microcinema.systems.artv' has no attribute {name!r}")
