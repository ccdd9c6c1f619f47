"""Frechet Video Distance (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video").

FVD is the Frechet distance (:mod:`.frechet`) between Gaussians fitted to I3D embeddings of real and of
generated videos. The reference (google-research/google-research ``frechet_video_distance``) embeds
clips with the Kinetics-400 I3D after resizing frames to 224x224 and scaling to ``[-1, 1]``, and uses the
network's 400 logits as the embedding; :class:`~.i3d.I3DFeatureExtractor` does the same by default.

Standard protocols (MicroCinema, ART-V): UCF-101 zero-shot with 16-frame clips and 2,048 (or 10K)
samples per side. FVD is biased by the sample count, so only compare numbers computed with equal counts.
"""

from __future__ import annotations

from microcinema.eval.metrics.frechet import frechet_distance_from_features
from microcinema.eval.metrics.i3d import I3DFeatureExtractor
from microcinema.eval.metrics._common import ArrayLike


def fvd(real_videos: ArrayLike, fake_videos: ArrayLike, extractor: I3DFeatureExtractor) -> float:
    """FVD between two batches of videos (each ``uint8 (N, T, H, W, 3)`` or float ``(N, T, 3, H, W)`` in
    ``[-1, 1]``, ``T >= 10``, at least 2 videos per side), embedded by ``extractor``."""
    return frechet_distance_from_features(extractor.features(real_videos), extractor.features(fake_videos))
