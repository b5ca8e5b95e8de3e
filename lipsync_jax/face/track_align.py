"""Face passes over chosen face tracks, shaped like the inference engine's face pass.

``face_pass_for_tracks(resolution, backend, source, tracks, choice)`` is the engine's
``FacePass`` (``__call__(frame) -> AlignedFace | None`` per frame in order, ``check_found()``,
``close()``) following one person (``--face largest|left|right|ID``): with at most one track it
is the single-face ``FaceTracker`` itself (the single-face path, unchanged); otherwise a
``TrackFacePass`` (a ``FaceTracker`` fed by ``TrackLandmarker``: that track's anchors, the same
smoothing, gap and no-face handling).

Aligning several face tracks of one video in one streaming pass (``--faces all``):

``MultiTrackAligner(resolution, tracks, track_ids, landmarker)`` is called on frames 0, 1, 2,
... in order; per frame it detects every face once (``detect_faces``), gives each track its
anchors (``TrackAnchorSelector``, with the crop retry) and aligns each chosen track with its
own ``FaceTracker`` (its own smoothing state and gap reset, exactly as a single-face video is
aligned today). It returns ``{track id: AlignedFace or None}``; None means that person is not
in the frame (the frame is kept unchanged for that person).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipsync_jax.face.align import AlignedFace
from lipsync_jax.face.landmarks import FaceDetection, FaceLandmarker, detect_faces, make_landmarker
from lipsync_jax.face.tracker import FaceTracker
from lipsync_jax.face.tracks import PersonTrack, TrackAnchorSelector, TrackLandmarker, choose_track

DEFAULT_MAX_NUM_FACES = 4


class TrackFacePass:
    """One track's aligned faces, frame by frame (see the module docstring). Builds (and closes)
    a ``backend`` landmarker with ``max_num_faces`` unless ``landmarker`` is given."""

    def __init__(self, resolution: int, tracks: Sequence[PersonTrack], choice: str | int = "largest", *,
                 landmarker: FaceLandmarker | None = None, backend: str = "mediapipe",
                 max_num_faces: int = DEFAULT_MAX_NUM_FACES, smooth: bool = True, max_gap: int = 25,
                 source: str = "video"):
        self._owns_landmarker = landmarker is None
        if landmarker is None:
            landmarker = make_landmarker(backend, max_num_faces=max(max_num_faces, len(tracks)))
        self.landmarker = landmarker
        self.follow = TrackLandmarker(landmarker, tracks, choice)
        self.track_id = self.follow.track.track_id
        self.tracker = FaceTracker(resolution, landmarker=self.follow, smooth=smooth, max_gap=max_gap,
                                   source=f"{source} (face {self.track_id})")

    @property
    def resolution(self) -> int:
        return self.tracker.resolution

    def __call__(self, frame: np.ndarray) -> AlignedFace | None:
        return self.tracker(frame)

    def check_found(self) -> None:
        self.tracker.check_found()

    def close(self) -> None:
        if self._owns_landmarker and hasattr(self.landmarker, "close"):
            self.landmarker.close()


def face_pass_for_tracks(resolution: int, backend: str, source: str, tracks: Sequence[PersonTrack],
                         choice: str | int = "largest", *, max_num_faces: int = DEFAULT_MAX_NUM_FACES,
                         landmarker: FaceLandmarker | None = None) -> FaceTracker | TrackFacePass:
    """The engine's face pass for one chosen person: the single-face ``FaceTracker`` when the pre-pass
    found at most one track (a bad ``choice`` still raises ``FaceSelectionError`` when there is
    one), else a ``TrackFacePass``."""
    if len(tracks) <= 1:
        if tracks:
            choose_track(tracks, choice)
        return FaceTracker(resolution, landmarker=landmarker, backend=backend, source=source)
    return TrackFacePass(resolution, tracks, choice, landmarker=landmarker, backend=backend,
                         max_num_faces=max_num_faces, source=source)


class MultiTrackAligner:
    """Per-frame aligned faces of several tracks (see the module docstring). ``track_ids``:
    the ids (or choices: "largest", "left", "right") to align; None = every track. Builds
    (and closes) a ``backend`` landmarker with ``max_num_faces`` unless ``landmarker`` is given."""

    def __init__(self, resolution: int, tracks: Sequence[PersonTrack], landmarker: FaceLandmarker | None = None,
                 track_ids: Sequence[int | str] | None = None, *, backend: str = "mediapipe",
                 max_num_faces: int = DEFAULT_MAX_NUM_FACES, smooth: bool = True, max_gap: int = 25,
                 source: str = "video"):
        chosen = list(tracks) if track_ids is None else [choose_track(tracks, c) for c in track_ids]
        self.track_ids = list(dict.fromkeys(t.track_id for t in chosen))  # in order, no repeats
        self._owns_landmarker = landmarker is None
        if landmarker is None:
            landmarker = make_landmarker(backend, max_num_faces=max(max_num_faces, len(tracks)))
        self.landmarker = landmarker
        self.selector = TrackAnchorSelector(tracks)
        self.frame_index = 0
        self.last_detections: list[FaceDetection] = []
        self._anchors: dict[int, np.ndarray | None] = {}
        self.trackers = {tid: FaceTracker(resolution, landmarker=self._anchor_source(tid), smooth=smooth,
                                          max_gap=max_gap, source=f"{source} (face {tid})")
                         for tid in self.track_ids}

    def _anchor_source(self, track_id: int):
        return lambda frame: self._anchors.get(track_id)

    def __call__(self, frame: np.ndarray) -> dict[int, AlignedFace | None]:
        self.last_detections = detect_faces(self.landmarker, frame)
        self._anchors = self.selector.anchors(self.frame_index, self.last_detections, frame, self.landmarker)
        self.frame_index += 1
        return {tid: tracker(frame) for tid, tracker in self.trackers.items()}

    def check_found(self) -> None:
        """``NoFaceError`` if some chosen track got no face in any frame seen."""
        for tracker in self.trackers.values():
            tracker.check_found()

    def close(self) -> None:
        if self._owns_landmarker and hasattr(self.landmarker, "close"):
            self.landmarker.close()
