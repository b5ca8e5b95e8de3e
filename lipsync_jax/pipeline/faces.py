"""The face pass: every source frame's aligned face (or None) from one streaming read.

Frames without a face are kept unchanged in the output. The UNet still needs 16 faces per
chunk, so such a frame borrows the aligned face of the nearest frame that has one (it only
steadies the chunk's motion modules; the borrowed result is never pasted anywhere).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from lipsync_jax.face import AlignedFace, FaceTracker
from lipsync_jax.pipeline.frames import FrameSpill


@dataclasses.dataclass
class FaceTrack:
    """Per source frame: ``aligned[i]`` (face (R, R, 3) uint8 + affine + crop box) or None."""

    aligned: list[AlignedFace | None]
    resolution: int

    @property
    def num_frames(self) -> int:
        return len(self.aligned)

    @property
    def has_face(self) -> np.ndarray:
        return np.array([a is not None for a in self.aligned], bool)

    def stand_ins(self) -> np.ndarray:
        """(n,) index of the frame whose face each frame uses as UNet input: itself when it has a
        face, else the nearest frame with one (the earlier one on a tie)."""
        return nearest_face_indices(self.has_face)

    def chunk_faces(self, indices: np.ndarray, stand_ins: np.ndarray) -> np.ndarray:
        """(len(indices), R, R, 3) uint8 UNet input faces of these source frames."""
        return np.stack([self.aligned[int(stand_ins[i])].face for i in indices])


def nearest_face_indices(has_face: np.ndarray) -> np.ndarray:
    """For each position, the nearest position where ``has_face`` is True (earlier on a tie)."""
    has_face = np.asarray(has_face, bool)
    found = np.flatnonzero(has_face)
    if found.size == 0:
        raise ValueError("no frame has a face")
    positions = np.arange(has_face.size)
    after = np.clip(np.searchsorted(found, positions), 0, found.size - 1)
    before = np.clip(after - 1, 0, found.size - 1)
    next_found, prev_found = found[after], found[before]
    use_prev = np.abs(positions - prev_found) <= np.abs(next_found - positions)
    return np.where(has_face, positions, np.where(use_prev, prev_found, next_found))


def track_faces(frames: Iterable[np.ndarray], tracker: FaceTracker, *, spill: FrameSpill | None = None,
                total: int | None = None, progress: bool = True) -> FaceTrack:
    """Align every frame (optionally copying each frame into ``spill``); ``NoFaceError`` if no
    frame has a face."""
    aligned: list[AlignedFace | None] = []
    for frame in tqdm(frames, total=total, desc="Aligning faces", unit="frame", disable=not progress):
        if spill is not None:
            spill.append(frame)
        aligned.append(tracker(frame))
    tracker.check_found()
    return FaceTrack(aligned=aligned, resolution=tracker.resolution)
