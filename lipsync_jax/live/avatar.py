"""A prepared avatar for live sessions: a video decoded once, its face track, random access.

``LiveAvatar.prepare(models, video_path, ...)`` decodes the video at the models' fps, runs the
face pass on every frame (or replays an avatar cache entry: pipeline/avatar_cache.py, recording
one on the first run, with the faces' VAE moments), and keeps the frames in a ``FrameStore``
(lossless PNGs in a temp folder: the live loop walks the video ping-pong, so it needs random
access, not a stream). With a cache entry whose moments match the models' VAE, ``moments``
(pipeline/moments.py) lets sessions skip the VAE encoder. Sessions share one avatar; ``close()``
deletes its folder.

``source_of(i)``: the source frame under output frame i (ping-pong, as offline); ``stand_in(s)``:
the nearest source frame with a face (the whole-video rule, which equals the engine's windowed
rule since a chunk with a face has one within 15 frames).
"""

from __future__ import annotations

import os
import threading

import numpy as np
from tqdm import tqdm

from lipsync_jax.face import FaceTracker
from lipsync_jax.media import read_frames
from lipsync_jax.pipeline.avatar_cache import AvatarCache, CachedFacePass, RecordingFacePass
from lipsync_jax.pipeline.errors import InputError
from lipsync_jax.pipeline.faces import nearest_face_indices
from lipsync_jax.pipeline.inputs import check_video
from lipsync_jax.pipeline.moments import FaceMoments, add_moments, track_moments
from lipsync_jax.pipeline.store import FrameStore, SourceRecord


class LiveAvatar:
    def __init__(self, store: FrameStore, has_face: np.ndarray, path: str, fps: float, cache_status: str = "off",
                 moments: FaceMoments | None = None):
        self.store = store
        self.moments = moments
        self.has_face = np.asarray(has_face, bool)
        self.path = path
        self.fps = float(fps)
        self.cache_status = cache_status  # "off" | "hit" | "stored"
        if not self.has_face.any():
            raise InputError(f"video {path}: no face found in any frame")
        self.nearest = nearest_face_indices(self.has_face)
        self._lock = threading.Lock()
        self._recent: dict[int, SourceRecord] = {}  # a few decoded records (a chunk reads each about twice)

    @property
    def num_frames(self) -> int:
        return int(len(self.has_face))

    def source_of(self, output_frame: int) -> int:
        """Ping-pong: 0..n-1, n-1..0, 0..n-1, ... (pipeline/timeline.pingpong_indices)."""
        n = self.num_frames
        i = int(output_frame)
        if i < n:
            return i
        loop, pos = divmod(i, n)
        return pos if loop % 2 == 0 else n - 1 - pos

    def record(self, source: int) -> SourceRecord:
        with self._lock:
            if source not in self._recent:
                if len(self._recent) >= 64:
                    self._recent.pop(next(iter(self._recent)))
                self._recent[source] = self.store.get(int(source))
            return self._recent[source]

    def stand_in(self, source: int) -> int:
        return int(self.nearest[int(source)])

    @property
    def gone(self) -> bool:
        """The frame store is gone: closed, or deleted by a stop signal's clean-up (cleanup.py)."""
        return not os.path.isdir(self.store.path)

    def close(self) -> None:
        with self._lock:
            self._recent.clear()
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @classmethod
    def prepare(cls, models, video_path: str, *, face_backend: str = "mediapipe", avatar_cache: str | None = None,
                max_frames: int | None = None, face_pass_factory=None, progress: bool = False) -> LiveAvatar:
        """Decode + face pass (or the avatar cache's track) into a frame store."""
        fps = float(models.fps)
        info = check_video(video_path)
        total = info.frame_count_at(fps) if max_frames is None else min(max_frames, info.frame_count_at(fps))
        factory = face_pass_factory or (lambda resolution, backend, source: FaceTracker(resolution, backend=backend,
                                                                                         source=source))
        cache, key, status, recorder, moments = None, None, "off", None, None
        if avatar_cache:
            cache = AvatarCache(avatar_cache)
            key = cache.key(video_path, resolution=models.resolution, fps=fps, backend=face_backend)
            track = cache.load(key)
            if track is not None and track.covers(total):
                face_pass, status = CachedFacePass(track, video_path), "hit"
                moments = track_moments(models, track)
            else:
                recorder = RecordingFacePass(factory(models.resolution, face_backend, video_path), cache, key,
                                             expected_frames=info.frame_count_at(fps),
                                             on_store=lambda track: add_moments(models, track))
                face_pass, status = recorder, "stored"
        else:
            face_pass = factory(models.resolution, face_backend, video_path)
        store = FrameStore()
        has_face = []
        try:
            frames = read_frames(video_path, fps, max_frames=max_frames, info=info)
            for index, frame in enumerate(tqdm(frames, total=total, desc="Avatar", unit="frame", disable=not progress)):
                aligned = face_pass(frame)
                has_face.append(aligned is not None)
                store.put(SourceRecord(index, frame, aligned))
            face_pass.check_found()
            store.flush()
            if recorder is not None and recorder.store() is None:
                status = "not stored"
        except BaseException:
            store.close()
            raise
        finally:
            face_pass.close()
        if not has_face:
            store.close()
            raise InputError(f"video {video_path}: no frames decoded")
        if recorder is not None and recorder.stored_track is not None:
            moments = track_moments(models, recorder.stored_track)
        try:
            return cls(store, np.array(has_face), video_path, fps, status, moments)
        except BaseException:
            store.close()
            raise
