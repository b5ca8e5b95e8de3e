"""Aligned face tracks for evaluation: every frame of a video through the face pipeline
(lipsync_jax.face, LatentSync's alignment), kept in memory as one (n, r, r, 3) uint8 array.

Frames without a detectable face get the nearest aligned face before them (or, at the start,
the first one after them) so the sliding 16-frame windows stay contiguous; their indices are
reported so a caller can judge how much of a score rests on filled frames. A video with no
face at all raises ``NoFaceError`` naming the file. Memory: r * r * 3 bytes per frame
(196 KB at 256 px: about 50 MB per 10 s at 25 fps).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np

from lipsync_jax.face import FaceLandmarker, FaceTracker
from lipsync_jax.media import probe_video, read_frames

SYNCNET_FPS = 25.0  # LatentSync's SyncNet windows assume 25 fps video (16 frames <-> 52 mel columns)


@dataclasses.dataclass(frozen=True)
class FaceTrack:
    faces: np.ndarray  # (n, r, r, 3) uint8 aligned faces, gaps filled with the nearest face
    affines: tuple[np.ndarray | None, ...]  # per frame (2, 3) frame -> crop transform, None: no face
    missing_frames: tuple[int, ...]  # frames where no face was found (filled)
    face_size: tuple[int, int]  # (width, height) of the crop before the resize to r
    source: str

    @property
    def num_frames(self) -> int:
        return int(self.faces.shape[0])


def _fill_gaps(faces: list[np.ndarray | None]) -> np.ndarray:
    """Replace None entries by the previous face (the next one before the first face)."""
    first = next(face for face in faces if face is not None)
    filled, last = [], first
    for face in faces:
        last = face if face is not None else last
        filled.append(last)
    return np.stack(filled)


def track_faces(frames: Iterable[np.ndarray], resolution: int = 256, landmarker: FaceLandmarker | None = None,
                backend: str = "mediapipe", source: str = "video") -> FaceTrack:
    """Align every RGB uint8 frame of ``frames`` (in order, smoothing as LatentSync does)."""
    tracker = FaceTracker(resolution, landmarker=landmarker, backend=backend, source=source)
    faces: list[np.ndarray | None] = []
    affines: list[np.ndarray | None] = []
    try:
        for frame in frames:
            aligned = tracker(frame)
            faces.append(None if aligned is None else aligned.face)
            affines.append(None if aligned is None else aligned.affine)
        tracker.check_found()  # NoFaceError when no frame (or no face) was seen
    finally:
        tracker.close()
    return FaceTrack(faces=_fill_gaps(faces), affines=tuple(affines), missing_frames=tuple(tracker.missing_frames),
                     face_size=tuple(tracker.aligner.template.face_size), source=source)


def read_face_track(video_path: str, resolution: int = 256, fps: float | None = SYNCNET_FPS,
                    max_frames: int | None = None, landmarker: FaceLandmarker | None = None,
                    backend: str = "mediapipe") -> FaceTrack:
    """Aligned faces of the video file ``video_path`` read at ``fps`` (25 by default, as
    LatentSync resamples its inputs; None keeps the file's own frames)."""
    info = probe_video(video_path, count=False)  # MediaError naming the file if unreadable
    frames = read_frames(video_path, fps, max_frames=max_frames, info=info)
    return track_faces(frames, resolution, landmarker=landmarker, backend=backend, source=video_path)


def to_signed(faces: np.ndarray) -> np.ndarray:
    """uint8 faces -> float32 in [-1, 1] (LatentSync's ``x / 255`` then ``Normalize(0.5, 0.5)``)."""
    return np.asarray(faces, np.float32) / 127.5 - 1.0
