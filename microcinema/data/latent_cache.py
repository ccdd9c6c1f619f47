"""Encode a data set once: VAE latents and text-encoder states, cached to disk, for every latent model.

Latent diffusion trains on ``vae.encode(x)`` and frozen text states; computing them every step would
cost more than the denoiser itself on a CPU. :func:`encode_dataset` runs the frozen encoders once over a
data set (images ``(3, H, W)`` or clips ``(F, 3, H, W)``, as every dataset of :mod:`microcinema.data`
yields) and :class:`LatentCache` serves the results as a ``Dataset``. The posterior's mean and std are kept
(not a sample), so training still draws a fresh latent each time. Clips are stored as ``(C, F, h, w)``,
the layout of the 3D U-Net.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from collections.abc import Iterator
from typing import Any, Callable

import torch
from einops import rearrange
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from microcinema.core.errors import MicroCinemaError


@torch.no_grad()
def encode_dataset(dataset: Dataset, vae: Any, text_encoder: Any, *, batch_size: int = 64,
                   progress: bool = True, text_dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """Encode every item: ``latent_mean``/``latent_std`` (unscaled VAE posterior), ``text_states`` (fp16) and
    ``text_mask`` (and ``lead_in`` where the items have it); plus ``uncond_states``/``uncond_mask`` (the empty
    prompt, for classifier-free guidance)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate)
    out: dict[str, list[torch.Tensor]] = {"latent_mean": [], "latent_std": [], "text_states": [], "text_mask": []}
    for batch in tqdm(loader, desc="encoding latents and captions", unit="batch", disable=not progress):
        pixels = batch["pixel_values"]
        video = pixels.ndim == 5
        flat = rearrange(pixels, "b f c h w -> (b f) c h w") if video else pixels
        posterior = vae.encode(flat.to(vae.device, vae.dtype)).latent_dist
        mean, std = posterior.mean.float().cpu(), posterior.std.float().cpu()
        if video:
            mean, std = (rearrange(t, "(b f) c h w -> b c f h w", b=pixels.shape[0]) for t in (mean, std))
        text = text_encoder.encode(batch["text"])
        out["latent_mean"].append(mean)
        out["latent_std"].append(std)
        out["text_states"].append(text.hidden_states.to("cpu", text_dtype))
        out["text_mask"].append(text.attention_mask.cpu())
        if "lead_in" in batch:  # turning clips: the first frame each caption describes
            out.setdefault("lead_in", []).append(batch["lead_in"])
    tensors = {k: torch.cat(v) for k, v in out.items()}
    uncond = text_encoder.encode([""])
    tensors["uncond_states"] = uncond.hidden_states.to("cpu", text_dtype)
    tensors["uncond_mask"] = uncond.attention_mask.cpu()
    return tensors


def _collate(items: list[dict]) -> dict:
    batch = {"pixel_values": torch.stack([i["pixel_values"] for i in items]), "text": [i["text"] for i in items]}
    if "lead_in" in items[0]:
        batch["lead_in"] = torch.tensor([i["lead_in"] for i in items], dtype=torch.long)
    return batch


class LatentCache(Dataset):
    """A cached encoding (see :func:`encode_dataset`) as a ``Dataset`` of dicts of tensors."""

    PER_ITEM = ("latent_mean", "latent_std", "text_states", "text_mask")
    OPTIONAL = ("lead_in",)  # per item when the data set has it (turning clips, :mod:`microcinema.data.synthetic`)

    def __init__(self, tensors: dict[str, torch.Tensor], keys: list[str] | None = None) -> None:
        missing = [k for k in (*self.PER_ITEM, "uncond_states", "uncond_mask") if k not in tensors]
        if missing:
            raise MicroCinemaError(f"latent cache lacks {', '.join(missing)}; rebuild it (delete the cache file)")
        self.tensors = tensors
        self.uncond_states, self.uncond_mask = tensors["uncond_states"], tensors["uncond_mask"]
        if keys is not None and len(keys) != len(tensors["latent_mean"]):
            raise MicroCinemaError(f"latent cache has {len(tensors['latent_mean'])} items but {len(keys)} keys")
        self.keys = keys

    def __len__(self) -> int:
        return len(self.tensors["latent_mean"])

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = {k: self.tensors[k][index] for k in self.PER_ITEM + self.OPTIONAL if k in self.tensors}
        if self.keys is not None:  # the sample's key (real data): the trainer records which samples it saw
            item["key"] = self.keys[index]
        return item

    @classmethod
    def build_or_load(cls, path: str | Path, build: Callable[[], dict[str, torch.Tensor]],
                      fingerprint: dict[str, Any]) -> "LatentCache":
        """Load ``path`` if it was built with the same ``fingerprint`` (settings), else ``build()`` and save it
        atomically (a killed run never leaves a half-written cache)."""
        path = Path(path)
        key = json.dumps(fingerprint, sort_keys=True, default=str)
        if path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("fingerprint") == key:
                    return cls(load_file(str(path)))
        tensors = build()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"fingerprint": key})
        os.replace(tmp, path)
        return cls(tensors)


# ----------------------------------------------------------------------------------- chunked, resumable

CHUNK_PREFIX = "chunk_"
FINGERPRINT_FILE = "fingerprint.json"
DONE_FILE = "done.json"


def _chunks(root: Path) -> list[Path]:
    found = sorted(p for p in root.glob(f"{CHUNK_PREFIX}*.safetensors") if p.stem[len(CHUNK_PREFIX):].isdigit())
    complete = []
    for i, p in enumerate(found):  # consecutive from 0: a gap means a later chunk is stale
        if int(p.stem[len(CHUNK_PREFIX):]) != i:
            break
        complete.append(p)
    return complete


def build_chunked_cache(root: str | Path, samples: Callable[[int], Iterator[tuple[int, Any]]],
                        encode: Callable[[list[dict]], dict[str, torch.Tensor]], fingerprint: dict[str, Any], *,
                        chunk_size: int = 256, limit: int | None = None, progress: bool = True) -> "LatentCache":
    """A :class:`LatentCache` written in chunks under ``root``, resumable.

    ``samples(start)`` yields ``(position, item)`` pairs of this process's stream from position ``start`` on
    (``item`` None for a sample that cannot be used, dicts with ``pixel_values``, ``text``, ``key`` else).
    Every ``chunk_size`` usable items are encoded (``encode(items)``, see :func:`encode_dataset`) and saved
    atomically as ``chunk_NNNNNN.safetensors`` with the keys and the position to continue from. A restarted
    build keeps the complete chunks and continues after the last one (the stream is skipped to that position
    without decoding); a different ``fingerprint`` (data, encoders) deletes the chunks and starts again.
    ``limit``: stop after that many items. ``done.json`` marks a finished cache.
    """
    from safetensors import safe_open

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    key = json.dumps(fingerprint, sort_keys=True, default=str)
    stamp = root / FINGERPRINT_FILE
    if not stamp.is_file() or stamp.read_text() != key:
        for p in [*root.glob(f"{CHUNK_PREFIX}*"), root / DONE_FILE, stamp]:
            p.unlink(missing_ok=True)
        stamp.write_text(key)
    chunks = _chunks(root)
    if not (root / DONE_FILE).is_file():
        start, count = 0, 0
        if chunks:
            with safe_open(str(chunks[-1]), "pt") as f:
                meta = f.metadata()
            start, count = int(meta["next_position"]), int(meta["count"])
        pending: list[dict] = []

        def flush(next_position: int) -> None:
            nonlocal count
            tensors = encode(pending)
            count += len(pending)
            path = root / f"{CHUNK_PREFIX}{len(chunks):06d}.safetensors"
            tmp = path.with_name(f".{path.name}.tmp")
            save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={
                "fingerprint": key, "next_position": str(next_position), "count": str(count),
                "keys": json.dumps([str(i.get("key", "")) for i in pending])})
            os.replace(tmp, path)
            chunks.append(path)
            pending.clear()

        bar = tqdm(desc=f"encoding {root.name}", unit="clip", initial=count, disable=not progress)
        next_position = start
        for position, item in samples(start):
            if limit is not None and count + len(pending) >= limit:
                break
            next_position = position + 1
            if item is not None:
                pending.append(item)
                bar.update(1)
            if len(pending) == chunk_size:
                flush(next_position)
        if pending:
            flush(next_position)
        bar.close()
        if not chunks:
            raise MicroCinemaError(f"no usable sample for the latent cache {root}; check the data section")
        (root / DONE_FILE).write_text(json.dumps({"chunks": len(chunks), "items": count}))
    return load_chunked_cache(root)



def load_chunked_cache(root: str | Path) -> "LatentCache":
    """The chunks of a finished :func:`build_chunked_cache`, concatenated."""
    from safetensors import safe_open

    parts, keys = [], []
    for path in _chunks(Path(root)):
        with safe_open(str(path), "pt") as f:
            keys += json.loads(f.metadata()["keys"])
        parts.append(load_file(str(path)))
    if not parts:
        raise MicroCinemaError(f"latent cache {root} has no chunks; delete it to rebuild")
    tensors = {k: torch.cat([p[k] for p in parts]) for k in LatentCache.PER_ITEM}
    tensors["uncond_states"], tensors["uncond_mask"] = parts[0]["uncond_states"], parts[0]["uncond_mask"]
    return LatentCache(tensors, keys=keys)
