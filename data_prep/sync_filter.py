"""StableSyncNet sync scoring of a clip (``--sync_scorer stable``) and the audio-offset re-cut.

A clip's aligned faces (resized to the SyncNet's face resolution, [-1, 1], lower half) and the
SyncNet mel of the source audio around it are scored with ``lipsync_jax.eval.sync_score``: the
mean cosine similarity of 16-frame windows against audio windows shifted by -max..+max
frames. Its confidence (best similarity minus the median over offsets) is a cosine margin, not
LSE-C: the default threshold for this scorer is 0 (``filters.default_sync_threshold``).

Whatever the scorer, with best offset d (the matching sound comes d frames after the picture)
the clip's audio is re-cut from the source starting d frames later, so frame i gets the audio
that matches it (LatentSync's ``-itsoffset`` remux; the frames are never re-encoded); frames
whose corrected audio would fall outside the source are trimmed (``corrected_span``). The keep
rule (LatentSync's sync_av: confidence >= threshold and |d| <= 6) is ``filters.sync_verdict``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lipsync_jax.audio.syncnet_mel import syncnet_mel
from lipsync_jax.data.records import decode_frames


@dataclasses.dataclass
class SyncResult:
    score: float  # similarity at the chosen offset
    confidence: float
    offset: int  # frames


class SyncScorer:
    """A converted StableSyncNet (folder written by ``python -m lipsync_jax.convert syncnet``)."""

    def __init__(self, ckpt_dir: str, search_offset: int = 15):
        from lipsync_jax.checkpoints import restore_params
        from lipsync_jax.models.syncnet import StableSyncNet

        params, config = restore_params(ckpt_dir)
        if config is None:
            raise ValueError(f"{ckpt_dir}: converted SyncNet has no config.json (needed to build the model)")
        self.model = StableSyncNet.from_config(config)
        self.params = params  # bare tree (restore_params also reads older converted folders)
        data = config.get("data", {}) if isinstance(config, dict) else {}
        self.resolution = int(data.get("resolution", 256))
        self.search_offset = int(search_offset)

    def score(self, jpeg_frames: list[bytes], audio: np.ndarray, fps: float) -> SyncResult:
        """Faces (JPEG bytes) and the 16 kHz float audio that starts with them."""
        import cv2

        from lipsync_jax.eval.sync_score import sync_score

        faces = decode_frames(jpeg_frames, range(len(jpeg_frames)))
        if faces.shape[1] != self.resolution:
            faces = np.stack([cv2.resize(f, (self.resolution, self.resolution), interpolation=cv2.INTER_AREA)
                              for f in faces])
        pixels = faces.astype(np.float32) / 127.5 - 1.0
        result = sync_score(self.model, self.params, pixels, syncnet_mel(audio), fps=fps,
                            max_offset=self.search_offset)
        return SyncResult(score=result.best_similarity, confidence=result.confidence, offset=result.best_offset)


def corrected_span(start_frame: int, num_frames: int, offset: int, total_samples: int,
                   samples_per_frame: int) -> tuple[int, int]:
    """Frames [a, b) of a clip (relative to its start) whose audio, shifted ``offset`` frames
    later, lies inside the source's ``total_samples``."""
    first = max(0, -(start_frame + offset))
    last = min(num_frames, total_samples // samples_per_frame - start_frame - offset)
    return first, max(first, last)
