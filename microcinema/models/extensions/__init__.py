"""Opt-in layers beyond the papers. Each is the identity at initialisation, so a trained VideoUNet can be grown
with it; each is switched on by a VideoUNet config key and used by a shipped model (see each module)."""

from microcinema.models.extensions.appearance_attention import AppearanceAttention
from microcinema.models.extensions.frame_text import FrameTextModulation, FrameTextShift, shift_features

__all__ = ["AppearanceAttention", "FrameTextModulation", "FrameTextShift", "shift_features"]
