"""The 2D (image) U-Net that every system starts from: loading it and storing its config.

All three systems wrap a diffusers ``UNet2DConditionModel`` (MicroCinema's :class:`~microcinema.models.unet3d.
VideoUNet` inflates it, the few-shot system's ``FewShotVideoUNet`` inflates it, ART-V's ``ARTVModel`` conditions
it); they load it with :func:`load_image_unet` and keep its config inside their own with
:func:`clean_config` (which also serves any other diffusers config, e.g. a VAE's in a fingerprint).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from diffusers import UNet2DConditionModel

from microcinema.core.errors import MicroCinemaError

#: What :func:`load_image_unet` accepts, for its error messages.
UNET_SOURCES = ("'embedded', a UNet2DConditionModel folder (config.json), a diffusers pipeline folder with unet/, "
                "or a hub id")

__all__ = ["UNET_SOURCES", "clean_config", "load_image_unet"]


def clean_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A ``UNet2DConditionModel`` config (or any diffusers config) as a plain JSON-able dict: the private
    ``_class_name`` / ``_diffusers_version`` / ... keys dropped and tuples turned into lists, so that it can be
    stored as a config key of a wrapping model and given back to ``UNet2DConditionModel.from_config``."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dict(config).items() if not k.startswith("_")}


def load_image_unet(source: str | Path | UNet2DConditionModel, subfolder: str | None = None,
                    **kwargs: Any) -> UNet2DConditionModel:
    """A ``UNet2DConditionModel``: ``source`` itself if it is one (not copied); ``"embedded"``, the embedded
    text-to-image U-Net; a U-Net folder (``config.json``); a diffusers pipeline folder (its ``unet/``, unless
    ``subfolder`` says otherwise); or a hub id. ``kwargs`` go to ``UNet2DConditionModel.from_pretrained``
    (``torch_dtype``, ``revision``, ...). Anything else raises a one-line :class:`MicroCinemaError`."""
    if isinstance(source, UNet2DConditionModel):
        return source
    if not isinstance(source, (str, Path)):
        raise MicroCinemaError(f"cannot load a 2D U-Net from a {type(source).__name__}; allowed: a "
                               f"UNet2DConditionModel, {UNET_SOURCES}")
    name_or_path: str | Path = source
    if str(source) == "embedded":
        from microcinema.embedded import embedded_path

        name_or_path = embedded_path("t2i")
    if subfolder is None and (Path(name_or_path) / "unet" / "config.json").is_file():
        subfolder = "unet"
    try:
        return UNet2DConditionModel.from_pretrained(name_or_path, subfolder=subfolder, **kwargs)
    except (OSError, ValueError) as error:
        if isinstance(error, MicroCinemaError):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MicroCinemaError(f"cannot load a 2D U-Net from {str(source)!r}: {first} "
                               f"(allowed: {UNET_SOURCES})") from None
