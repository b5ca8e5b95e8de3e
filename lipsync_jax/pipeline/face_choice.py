"""Which faces a job lip-syncs (multi-person videos) and the face pass that follows them.

``SyncJob`` options (infer.py: ``--face``, ``--faces all``, ``--face_audio``; pipeline/job.py):

- ``face="largest"`` (default), ``"left"``, ``"right"`` or a track id (as printed by
  ``--list_faces``): one person, the same one for the whole video;
- ``face="all"`` or ``"ID,ID,..."``: several people, every one synced to the job's audio;
- ``face_audio={choice: audio path, ...}``: each listed person gets their own audio (dialogue
  dubbing); the job's ``audio_path`` is the output's soundtrack and sets its length (each
  person's audio is cut to it or padded with silence);
- ``face=None``: no pre-pass, the plain single-face tracker (the pre-track behaviour).

A detection pre-pass (``face.tracks.find_face_tracks``, at the job's fps over the frames the job
uses) finds the face tracks. With at most one track and one person asked for, the face pass is
the single-face ``FaceTracker`` (the output is exactly the single-face pipeline's); a chosen person in a
multi-person video is followed by ``TrackFacePass``; several people by ``LaneFacePass`` (one
``MultiTrackAligner`` pass: each person its own smoothing). Each chosen person is a *lane*: the
engine generates every lane's chunks in the same device-program batches (lanes stacked on the
batch axis) and pastes them back in lane order, each with its own mask; a frame where a lane's
person is absent is left unchanged for that person.

Warm face backends: building a landmarker (MediaPipe's FaceMesh + detector graphs, insightface's
ONNX sessions) costs about half a second of CPU, twice per job (pre-pass and face pass). A
``LandmarkerPool`` (one per engine, ``engine.landmarkers``) lends them to jobs and keeps them
between jobs. The backends are stateless between frames (MediaPipe in static-image mode:
every frame detected on its own), so a reused landmarker gives exactly a fresh one's faces.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping

import numpy as np

from lipsync_jax.face import AlignedFace, FaceTracker, NoFaceError
from lipsync_jax.face.landmarks import make_landmarker
from lipsync_jax.face.track_align import DEFAULT_MAX_NUM_FACES, MultiTrackAligner, face_pass_for_tracks
from lipsync_jax.face.tracks import FaceSelectionError, VideoFaceTracks, choose_track, find_face_tracks

ALL = "all"


def face_choices(face: str | int | None, face_audio: Mapping[str, str] | None) -> list[str] | None:
    """The people a job asks for, as choice strings in lane order; None = no pre-pass."""
    if face_audio:
        return list(face_audio)
    if face is None:
        return None
    text = str(face).strip().lower()
    if text == ALL:
        return [ALL]
    return [c.strip() for c in text.split(",") if c.strip()] or ["largest"]


class LaneFacePass:
    """The engine's face pass for several people: per frame a tuple (one ``AlignedFace`` or None
    per lane, in lane order). ``check_found`` raises ``NoFaceError`` only when no lane found a face."""

    def __init__(self, aligner: MultiTrackAligner, source: str):
        self.aligner, self.source = aligner, source
        self.track_ids = list(aligner.track_ids)

    @property
    def resolution(self) -> int:
        return next(iter(self.aligner.trackers.values())).resolution

    def __call__(self, frame: np.ndarray) -> tuple[AlignedFace | None, ...]:
        found = self.aligner(frame)
        return tuple(found[tid] for tid in self.track_ids)

    def check_found(self) -> None:
        trackers = list(self.aligner.trackers.values())
        if trackers[0].frames_seen == 0:
            trackers[0].check_found()  # no frames at all
        if not any(t.faces_found for t in trackers):
            raise NoFaceError(f"{self.source}: none of the chosen faces ({', '.join(map(str, self.track_ids))}) "
                              f"was found in any of its {trackers[0].frames_seen} frames")

    def close(self) -> None:
        self.aligner.close()


class LandmarkerPool:
    """Landmarkers lent to jobs and kept between them (see the module docstring): ``borrow(backend,
    max_num_faces)`` gives an idle one or builds one; ``give_back`` keeps up to ``keep`` idle per
    (backend, max_num_faces) and closes the rest; ``close()`` closes the idle ones. Thread-safe:
    each landmarker serves one face pass at a time."""

    def __init__(self, keep: int = 2):
        self.keep = int(keep)
        self.built = 0  # landmarkers built so far (the rest were reused)
        self._idle: dict[tuple[str, int], list] = {}
        self._lock = threading.Lock()

    def borrow(self, backend: str, max_num_faces: int = 1):
        key = (backend, int(max_num_faces))
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                return idle.pop()
            self.built += 1
        return make_landmarker(backend, max_num_faces=int(max_num_faces))

    def give_back(self, backend: str, max_num_faces: int, landmarker) -> None:
        with self._lock:
            idle = self._idle.setdefault((backend, int(max_num_faces)), [])
            if len(idle) < self.keep:
                idle.append(landmarker)
                return
        _close(landmarker)

    def close(self) -> None:
        with self._lock:
            idle = [lm for kept in self._idle.values() for lm in kept]
            self._idle.clear()
        for landmarker in idle:
            _close(landmarker)


def _close(landmarker) -> None:
    if hasattr(landmarker, "close"):
        landmarker.close()


class _PooledFacePass:
    """A face pass on a borrowed landmarker: ``close()`` closes the pass and gives it back."""

    def __init__(self, face_pass, pool: LandmarkerPool, key: tuple[str, int], landmarker):
        self._face_pass, self._pool, self._key, self._landmarker = face_pass, pool, key, landmarker

    def __call__(self, frame):
        return self._face_pass(frame)

    def check_found(self) -> None:
        self._face_pass.check_found()

    def close(self) -> None:
        if self._landmarker is None:
            return
        landmarker, self._landmarker = self._landmarker, None
        try:
            self._face_pass.close()
        finally:
            self._pool.give_back(*self._key, landmarker)

    def __getattr__(self, name):  # resolution, track_ids, aligner, ...
        return getattr(self._face_pass, name)


@dataclasses.dataclass
class FacePlan:
    """A job's resolved face choice: ``track_ids`` (one per lane; None: the plain tracker or a
    one-track video), ``lane_audio`` (per lane: an audio path, None = the job's audio) and the
    pre-pass result (None when it did not run)."""

    resolution: int
    backend: str
    source: str
    choices: list[str] | None
    faces: VideoFaceTracks | None = None
    track_ids: list[int] | None = None
    lane_audio: list[str | None] = dataclasses.field(default_factory=lambda: [None])
    landmarkers: LandmarkerPool | None = None  # warm face backends (None: each face pass builds its own)

    @property
    def num_lanes(self) -> int:
        return len(self.lane_audio)

    @property
    def plain_tracker(self) -> bool:
        """The face pass is the single-face ``FaceTracker`` (no choice, or at most one track)."""
        return self.num_lanes == 1 and (self.choices is None or self.faces is None or len(self.faces.tracks) <= 1)

    def new_face_pass(self):
        """A fresh face pass (deterministic: a second one gives the same faces)."""
        tracks = self.faces.tracks if self.faces is not None else []
        faces = 1 if self.plain_tracker else max(DEFAULT_MAX_NUM_FACES, len(tracks))
        pool = self.landmarkers
        landmarker = pool.borrow(self.backend, faces) if pool is not None else None
        try:
            if self.num_lanes > 1:
                aligner = MultiTrackAligner(self.resolution, tracks, landmarker, track_ids=self.track_ids,
                                            backend=self.backend, source=self.source)
                face_pass = LaneFacePass(aligner, self.source)
            elif self.plain_tracker:
                face_pass = FaceTracker(self.resolution, landmarker=landmarker, backend=self.backend,
                                        source=self.source)
            else:
                face_pass = face_pass_for_tracks(self.resolution, self.backend, self.source, tracks,
                                                 self.track_ids[0], landmarker=landmarker)
        except BaseException:
            if landmarker is not None:
                pool.give_back(self.backend, faces, landmarker)
            raise
        return face_pass if pool is None else _PooledFacePass(face_pass, pool, (self.backend, faces), landmarker)


def plan_faces(resolution: int, job, *, backend: str, fps: float, max_frames: int | None = None,
               faces: VideoFaceTracks | None = None, landmarkers: LandmarkerPool | None = None,
               progress: bool = False, on_frame=None) -> FacePlan:
    """Run the pre-pass when ``job`` (a ``SyncJob``) needs it (or use ``faces``) and resolve its face
    options. ``FaceSelectionError`` for a choice naming no track or two choices naming the same
    one. ``landmarkers``: lend the pre-pass and the face passes warm face backends; ``on_frame(done,
    total)``: the pre-pass's progress."""
    face_audio = dict(job.face_audio)
    choices = face_choices(job.face, face_audio)
    plan = FacePlan(resolution, backend, job.video, choices, landmarkers=landmarkers)
    if choices is None:
        return plan
    if faces is None:
        landmarker = landmarkers.borrow(backend, DEFAULT_MAX_NUM_FACES) if landmarkers is not None else None
        try:
            faces = find_face_tracks(job.video, fps=fps, max_frames=max_frames, backend=backend,
                                     max_num_faces=DEFAULT_MAX_NUM_FACES, landmarker=landmarker, progress=progress,
                                     on_frame=on_frame)
        finally:
            if landmarker is not None:
                landmarkers.give_back(backend, DEFAULT_MAX_NUM_FACES, landmarker)
    plan.faces = faces
    tracks = faces.tracks
    if not tracks:  # nobody found by the pre-pass: the plain tracker decides (NoFaceError as usual)
        if face_audio and len(face_audio) > 1:
            raise NoFaceError(f"{job.video}: no face found, cannot give {len(face_audio)} faces their audio")
        plan.lane_audio = [next(iter(face_audio.values()), None)]
        return plan
    if choices == [ALL]:
        ids = [t.track_id for t in tracks]
    else:
        ids = []
        for choice in choices:
            track_id = choose_track(tracks, choice).track_id
            if track_id in ids:
                raise FaceSelectionError(f"face {choice!r} names track {track_id}, which is already chosen")
            ids.append(track_id)
    plan.track_ids = ids
    plan.lane_audio = [face_audio[c] for c in choices] if face_audio else [None] * len(ids)
    return plan


def lane_faces(aligned) -> tuple:
    """A record's faces per lane: a lane face pass gives a tuple, a single-face pass one face."""
    return aligned if isinstance(aligned, tuple) else (aligned,)


__all__ = ["ALL", "FacePlan", "LandmarkerPool", "LaneFacePass", "face_choices", "lane_faces",
           "plan_faces"]
