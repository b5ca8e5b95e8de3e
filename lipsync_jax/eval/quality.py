"""Visual quality of clips by HyperIQA, as LatentSync's data filter (preprocess/
filter_visual_quality.py) scores them.

Per clip: the first, middle (``n // 2``) and last frame; RGB ``/ 255``; centre crop 224
(torchvision's ``CenterCrop``: offset ``int(round((size - 224) / 2))``); ImageNet mean/std;
HyperIQA's per-frame score; the clip's quality is their mean (KonIQ scale, roughly 0..100).
LatentSync keeps a clip when it is >= 40 (``passes_quality``).

    scorer = load_hyperiqa("checkpoints/jax/hyperiqa")      # or koniq_pretrained.pkl, or random_init=True
    scorer.frame_scores(frames)                             # (n,) for any frames (n, h, w, 3) uint8
    clip_quality(scorer, clip_frames)                       # float: mean of first/middle/last
    video_quality(scorer, "clip.mp4")                       # the same, read from a file
    passes_quality(score, min_quality=40.0)
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from lipsync_jax.eval.nets import load_net_params, padded_batches

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
CROP_SIZE = 224
MIN_QUALITY = 40.0  # LatentSync's filter_visual_quality threshold


class QualityError(ValueError):
    """Frames or a video the quality score cannot use (the message names the problem)."""


def quality_frame_indices(num_frames: int) -> tuple[int, int, int]:
    """The frames LatentSync scores: first, middle (``n // 2``) and last."""
    if num_frames < 1:
        raise QualityError("a clip without frames has no quality score")
    return 0, num_frames // 2, num_frames - 1


def preprocess_frames(frames: np.ndarray, size: int = CROP_SIZE) -> np.ndarray:
    """RGB uint8 (n, h, w, 3) -> (n, size, size, 3) float32: /255, centre crop, ImageNet mean/std."""
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise QualityError(f"expected RGB frames (n, h, w, 3), got shape {frames.shape}")
    height, width = frames.shape[1:3]
    if height < size or width < size:
        raise QualityError(f"frames of {height}x{width} are smaller than the {size}x{size} centre crop")
    top, left = int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    crops = frames[:, top:top + size, left:left + size].astype(np.float32) / 255.0
    return (crops - IMAGENET_MEAN) / IMAGENET_STD


def passes_quality(score: float, min_quality: float = MIN_QUALITY) -> bool:
    """LatentSync's rule: keep a clip when its quality score is >= ``min_quality`` (40)."""
    return bool(np.isfinite(score) and score >= min_quality)


@dataclasses.dataclass
class HyperIQAScorer:
    """HyperIQA with its params and a jitted scorer over fixed-size batches (the last one padded),
    so one compilation serves every clip."""

    model: Any
    params: Any
    batch_size: int = 3
    source: str = ""
    random_init: bool = False

    @functools.cached_property
    def _forward(self):
        import jax

        from lipsync_jax.models.hyperiqa import target_net

        def forward(params, images):
            return target_net(self.model.apply({"params": params}, images))

        return jax.jit(forward)

    def frame_scores(self, frames: np.ndarray) -> np.ndarray:
        """(n,) float32 HyperIQA scores of RGB uint8 frames (n, h, w, 3), h, w >= 224."""
        images = preprocess_frames(frames)
        scores = [np.asarray(self._forward(self.params, batch))[:valid]
                  for batch, valid in padded_batches(images, self.batch_size)]
        return np.concatenate(scores).astype(np.float32)


def load_hyperiqa(checkpoint: str | None = None, *, random_init: bool = False, seed: int = 0,
                  batch_size: int = 3, config: dict | None = None, dtype: Any = "float32") -> HyperIQAScorer:
    """``checkpoint``: a folder from ``python -m lipsync_jax.convert hyperiqa`` or
    ``koniq_pretrained.pkl`` itself (converted on the fly); ``random_init``: random weights (smoke
    tests: the scores are meaningless). ``config``: HyperIQAConfig fields (default LatentSync's).
    ``dtype``: compute dtype (float32 reproduces the reference)."""
    from lipsync_jax.models.hyperiqa import build, init_params

    if random_init == (checkpoint is not None):
        raise QualityError("give either a HyperIQA checkpoint (converted folder or koniq_pretrained.pkl) "
                           "or random_init=True")
    loaded = load_net_params(checkpoint, config, random_init=random_init, seed=seed, init_params=init_params,
                             convert="hyperiqa")
    if loaded is None:
        raise QualityError(f"{checkpoint}: HyperIQA checkpoint not found (a folder from "
                           "`python -m lipsync_jax.convert hyperiqa` or koniq_pretrained.pkl)")
    params, config, source = loaded
    return HyperIQAScorer(build(config, dtype=dtype), params, batch_size=batch_size, source=source,
                          random_init=random_init)


def clip_quality(scorer: HyperIQAScorer, frames: Sequence[np.ndarray] | np.ndarray) -> float:
    """A clip's quality: mean HyperIQA score of its first, middle and last frame."""
    frames = np.asarray(frames)
    picked = frames[list(quality_frame_indices(len(frames)))]
    return float(scorer.frame_scores(picked).mean())


def read_quality_frames(video_path: str) -> np.ndarray:
    """The first, middle and last frame of a video (its own frame rate), (3, h, w, 3) uint8."""
    from lipsync_jax.media import count_frames, read_frames

    if not os.path.isfile(video_path):
        raise QualityError(f"{video_path}: no such video file")
    wanted = quality_frame_indices(count_frames(video_path))
    picked: dict[int, np.ndarray] = {}
    for index, frame in enumerate(read_frames(video_path, None, max_frames=wanted[-1] + 1)):
        if index in wanted:
            picked[index] = frame
    if len(picked) != len(set(wanted)):
        raise QualityError(f"{video_path}: could not read frames {wanted}")
    return np.stack([picked[i] for i in wanted])


def video_quality(scorer: HyperIQAScorer, video_path: str) -> float:
    """``clip_quality`` of a video file (LatentSync's per-clip filter score)."""
    return float(scorer.frame_scores(read_quality_frames(video_path)).mean())
