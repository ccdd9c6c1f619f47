"""MicroCinema: text-to-video diffusion (MicroCinema, ART-V, recurrent few-shot) with an embedded tiny model family."""

from microcinema.core.errors import MicroCinemaError

__version__ = "0.1.0"

__all__ = ["MicroCinemaError", "__version__"]
