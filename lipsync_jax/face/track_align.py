"""Aligning several face tracks of one video in one streaming pass (``--faces all``).

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
from lipsync_jax.face.landmarks import FaceDetection, FaceLandmarker, detect_faces
from lipsync_jax.face.tracker import FaceTracker
from lipsync_jax.face.tracks import PersonTrack, TrackAnchorSelector, choose_track


class MultiTrackAligner:
    """Per-frame aligned faces of several tracks (see the module docstring). ``track_ids``:
    the ids (or choices: "largest", "left", "right") to align; None = every track. The
    landmarker is not closed here (its owner closes it)."""

    def __init__(self, resolution: int, tracks: Sequence[PersonTrack], landmarker: FaceLandmarker,
                 track_ids: Sequence[int | str] | None = None, *, smooth: bool = True, max_gap: int = 25,
                 source: str = "video"):
        chosen = list(tracks) if track_ids is None else [choose_track(tracks, c) for c in track_ids]
        self.track_ids = list(dict.fromkeys(t.track_id for t in chosen))  # in order, no repeats
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
