"""CLIPSIM (text-video alignment) and CLIP-Temp (frame-to-frame semantic consistency) from a CLIP model.

- CLIPSIM (Wu et al. 2021, GODIVA; the MSR-VTT protocol of NUWA, Make-A-Video, MicroCinema, ART-V): the
  cosine similarity between the CLIP image embedding of each generated frame and the CLIP text embedding
  of its prompt, averaged over the frames of a video and then over videos.
- CLIP-Temp (Esser et al. 2023, Gen-1; used by the recurrent few-shot paper): the cosine similarity of the
  CLIP image embeddings of consecutive frames, averaged over the frame pairs of a video and then over videos.

Scale: both are returned as plain cosines (``scale=1``), so CLIPSIM is in ``[-1, 1]`` and reads like the
tables of GODIVA (0.2402), MicroCinema (0.2967) and ART-V. The recurrent few-shot paper prints both "from
0 to 100" (CLIP-Score 31.29, CLIP-Temp 98.00): pass ``scale=100`` to compare with it. (This is not Hessel
et al.'s CLIPScore, ``2.5 * max(cos, 0)``.) The papers use ViT-B/32 (``openai/clip-vit-base-patch32``)
for MSR-VTT unless they say otherwise; scores of different CLIP models are not comparable.

The model is a transformers ``CLIPModel`` folder (``save_pretrained`` layout: ``config.json``, weights,
tokenizer files, ``preprocessor_config.json``) loaded offline; frames go through the folder's
``CLIPImageProcessor`` (resize shorter side, centre crop, CLIP mean/std), prompts through its tokenizer
(truncated to the model's 77 positions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from microcinema.core.errors import MicroCinemaError, check
from microcinema.core.video_io import to_uint8_frames
from microcinema.eval.metrics._common import Clips, PathLike, chunks, clip_list, default_device, progress

CLIP_FOLDER = ("a local transformers CLIPModel folder (config.json, model weights, tokenizer files, "
               "preprocessor_config.json), e.g. a download of openai/clip-vit-base-patch32")


def clip_image_processor_class() -> type:
    """The CLIP image processor class that needs no torchvision: ``CLIPImageProcessorPil`` (transformers >= 5),
    else ``CLIPImageProcessor``."""
    try:  # transformers >= 5: the PIL backend by name (the default one needs torchvision)
        from transformers import CLIPImageProcessorPil as cls
    except ImportError:  # transformers 4.x
        from transformers import CLIPImageProcessor as cls
    return cls


class ClipScorer:
    """A frozen CLIP model with its tokenizer and image processor, loaded from ``path`` (no network)."""

    def __init__(self, path: PathLike, *, device: str | torch.device | None = None, batch_size: int = 64) -> None:
        from transformers import AutoTokenizer, CLIPModel

        from microcinema.core.text_encoders import no_progress_bars

        folder = Path(path).expanduser()
        check(folder.is_dir() and (folder / "config.json").is_file(),
              f"CLIP: {folder} is not a model folder; need {CLIP_FOLDER}")
        try:
            with no_progress_bars():
                model = CLIPModel.from_pretrained(str(folder), local_files_only=True, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise MicroCinemaError(
                f"CLIP: cannot load {folder} ({type(exc).__name__}: {exc}); need {CLIP_FOLDER}") from None
        processor_cls = clip_image_processor_class()
        if (folder / "preprocessor_config.json").is_file():
            processor = processor_cls.from_pretrained(str(folder), local_files_only=True)
        else:  # CLIP's standard preprocessing at the model's input size
            side = model.config.vision_config.image_size
            processor = processor_cls(size={"shortest_edge": side}, crop_size={"height": side, "width": side})
        self.device = default_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.tokenizer, self.processor, self.batch_size = tokenizer, processor, batch_size
        self.max_length = int(model.config.text_config.max_position_embeddings)

    @torch.no_grad()
    def image_embeddings(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Unit-norm CLIP embeddings ``(T, D)`` of one clip's frames: ``uint8 (T, H, W, 3)`` or float
        ``(T, 3, H, W)`` in ``[-1, 1]``."""
        frames = to_uint8_frames(frames)
        out = []
        for part in progress(chunks(frames.shape[0], self.batch_size), "CLIP image features"):
            pixels = self.processor(images=list(frames[part]), return_tensors="pt",
                                    input_data_format="channels_last")["pixel_values"]
            pooled = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            out.append(self.model.visual_projection(pooled))
        return F.normalize(torch.cat(out).float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """Unit-norm CLIP embeddings ``(P, D)`` of prompts (truncated to the model's positions)."""
        check(all(isinstance(p, str) for p in prompts), "CLIP: prompts must be strings")
        enc = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(self.device)
        pooled = self.model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        return F.normalize(self.model.text_projection(pooled).float(), dim=-1).cpu()


def clipsim(videos: Clips, prompts: str | Sequence[str], scorer: ClipScorer, scale: float = 1.0) -> float:
    """Mean over videos of the mean frame-prompt CLIP cosine, times ``scale`` (see module docstring).

    ``prompts``: one per video, or one string for all of them.
    """
    clips = clip_list(videos)
    prompts = [prompts] * len(clips) if isinstance(prompts, str) else list(prompts)
    check(len(prompts) == len(clips), f"clipsim: {len(clips)} videos but {len(prompts)} prompts")
    text = scorer.text_embeddings(prompts)
    per_video = [float((scorer.image_embeddings(clip) @ text[i]).mean()) for i, clip in enumerate(clips)]
    return scale * float(np.mean(per_video))


def clip_temp(videos: Clips, scorer: ClipScorer, scale: float = 1.0) -> float:
    """Mean over videos of the mean CLIP cosine of consecutive frames, times ``scale``; clips need 2+ frames."""
    per_video = []
    for clip in clip_list(videos):
        check(clip.shape[0] >= 2, f"clip_temp: a clip has {clip.shape[0]} frame; need at least 2")
        emb = scorer.image_embeddings(clip)
        per_video.append(float((emb[:-1] * emb[1:]).sum(dim=-1).mean()))
    return scale * float(np.mean(per_video))
