"""Per-video face alignment: landmarks -> anchors -> aligned face, frame by frame.

Frames without a face give ``None`` (the caller keeps the original frame there) instead of
aborting as LatentSync does. Smoothing state survives short gaps (as LatentSync keeps it over
the whole video) and is reset after a gap longer than ``max_gap`` frames (a cut or a new
shot). A video where no frame has a face raises ``NoFaceError``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from lipsync_jax.face.align import AlignedFace, FaceAligner
from lipsync_jax.face.errors import NoFaceError
from lipsync_jax.face.landmarks import FaceLandmarker, check_frame, make_landmarker


class FaceTracker:
    """Stateful aligner for one video. Call it on each RGB uint8 frame in order.

    ``landmarker`` is any ``FaceLandmarker``; by default one is built from ``backend``
    (and closed by ``close()``).
    """

    def __init__(self, resolution: int = 256, landmarker: FaceLandmarker | None = None,
                 backend: str = "mediapipe", smooth: bool = True, max_gap: int = 25, source: str = "video"):
        self._owns_landmarker = landmarker is None
        self.landmarker = make_landmarker(backend) if landmarker is None else landmarker
        self.aligner = FaceAligner(resolution, smooth=smooth)
        self.max_gap = max_gap
        self.source = source
        self.frames_seen = 0
        self.faces_found = 0
        self.missing_frames: list[int] = []  # indices of frames without a face
        self._gap = 0

    @property
    def resolution(self) -> int:
        return self.aligner.template.resolution

    def __call__(self, frame: np.ndarray) -> AlignedFace | None:
        frame = check_frame(frame, f"{self.source} frame {self.frames_seen}")
        index = self.frames_seen
        self.frames_seen += 1
        anchors = self.landmarker(frame)
        if anchors is None:
            self.missing_frames.append(index)
            self._gap += 1
            if self._gap > self.max_gap:
                self.aligner.reset()
            return None
        self._gap = 0
        self.faces_found += 1
        return self.aligner(frame, anchors)

    def check_found(self) -> None:
        """Raise NoFaceError if no frame seen so far had a face."""
        if self.frames_seen == 0:
            raise NoFaceError(f"{self.source}: no frames to align")
        if self.faces_found == 0:
            raise NoFaceError(f"{self.source}: no face found in any of its {self.frames_seen} frames; "
                              "lip sync needs a visible, roughly frontal face")

    def close(self) -> None:
        if self._owns_landmarker and hasattr(self.landmarker, "close"):
            self.landmarker.close()


def align_video(frames: Iterable[np.ndarray], resolution: int = 256, landmarker: FaceLandmarker | None = None,
                backend: str = "mediapipe", smooth: bool = True, source: str = "video") -> Iterator[AlignedFace | None]:
    """Yield one ``AlignedFace`` or ``None`` per frame, streaming; ``NoFaceError`` at the end
    if no frame had a face (before that, frames already yielded are valid)."""
    tracker = FaceTracker(resolution, landmarker=landmarker, backend=backend, smooth=smooth, source=source)
    try:
        for frame in frames:
            yield tracker(frame)
        tracker.check_found()
    finally:
        tracker.close()
