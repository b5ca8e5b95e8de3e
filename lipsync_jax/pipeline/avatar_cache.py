"""The avatar cache: a video's face track stored once, reused by every later job on that video.

Lip-syncing the same video (an "avatar") to new audio repeats the same face work every time:
decode for alignment, landmarks, the similarity warp, and the masked/reference VAE encodes of
the same faces. ``AvatarCache(DIR)`` stores that work per video and settings:

    cache = AvatarCache("avatars/")
    key = cache.key(video_path, resolution=256, fps=25.0, backend="mediapipe")
    track = cache.load(key)              # AvatarTrack or None (missing, stale or corrupt)
    recorder = RecordingFacePass(inner_face_pass, key, cache, expected_frames=N)   # first run
    replay = CachedFacePass(track)       # later runs: no landmarks, no warps

``AvatarTrack`` holds, per source frame (read at ``fps``): whether a face was found
(``has_face``), and for the frames with one the aligned face (uint8, R x R), its affine (frame ->
crop), crop box and anchors; ``num_frames`` frames from the start of the video (``complete``:
the whole video). Optionally ``latents``: per face frame the VAE posterior moments of the masked
and of the reference (unmasked) face, (r, r, 4 x [masked mean, masked logvar, ref mean, ref
logvar]), tagged with a fingerprint of the VAE weights (``vae_fingerprint``); the engine samples
the latents from them with each job's keys, so the output is the same as encoding again.

Keys: ``sha256(video bytes)`` plus every setting that changes the track (resolution, fps, face
backend, face choice, smoothing, ``FACE_PASS_VERSION``), hashed to one name. An entry is one
``.npz`` file written to a temp file in the cache folder and renamed into place (readers never
see half an entry); it carries ``CACHE_VERSION``, the video hash, the settings and a sha256 of
its arrays, all checked on load. A stale (other version/settings/video) or corrupt entry is
deleted and rebuilt by the next run, never trusted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import threading
import time
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lipsync_jax.face import AlignedFace

CACHE_VERSION = 1
FACE_PASS_VERSION = 1  # bump when alignment (template, smoothing, landmarks) changes its output
SUFFIX = ".avatar.npz"
_ARRAYS = ("has_face", "faces", "affines", "boxes", "landmarks")


class AvatarCacheMiss(Exception):
    """A cached track is shorter than the job needs (raised by ``CachedFacePass``; the caller reruns
    the job with a ``RecordingFacePass``)."""


def file_sha256(path: str, block: int = 1 << 22) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def tree_fingerprint(tree: Any) -> str:
    """A short sha256 of a parameter tree's paths, shapes, dtypes and values (which VAE made the latents)."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        value = np.asarray(leaf)
        digest.update(f"{jax.tree_util.keystr(path)}{value.shape}{value.dtype}".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()[:32]


@dataclasses.dataclass(frozen=True)
class AvatarKey:
    video_sha256: str
    settings: Mapping[str, Any]  # JSON-able: everything besides the video that changes the track

    @property
    def name(self) -> str:
        blob = json.dumps({"video": self.video_sha256, "settings": dict(self.settings),
                           "version": CACHE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:40]


@dataclasses.dataclass
class AvatarTrack:
    """One video's face track (see the module docstring). Arrays of the frames with a face are in
    frame order: ``faces[k]`` belongs to frame ``np.flatnonzero(has_face)[k]``."""

    has_face: np.ndarray  # (n,) bool
    faces: np.ndarray  # (m, R, R, 3) uint8
    affines: np.ndarray  # (m, 2, 3) float32
    boxes: np.ndarray  # (m, 4) int64
    landmarks: np.ndarray  # (m, 3, 2) float64
    complete: bool  # the whole video, not only its first num_frames frames
    latents: np.ndarray | None = None  # (m, r, r, 16) VAE moments: masked mean|logvar, ref mean|logvar
    vae_fingerprint: str = ""

    @property
    def num_frames(self) -> int:
        return int(len(self.has_face))

    @property
    def resolution(self) -> int:
        return int(self.faces.shape[1]) if len(self.faces) else 0

    def covers(self, frames_needed: int) -> bool:
        return self.complete or self.num_frames >= frames_needed

    def aligned_faces(self) -> list[AlignedFace | None]:
        """Per frame the ``AlignedFace`` the face pass produced (or None)."""
        out: list[AlignedFace | None] = [None] * self.num_frames
        for k, index in enumerate(np.flatnonzero(self.has_face)):
            out[int(index)] = AlignedFace(face=self.faces[k], affine=self.affines[k],
                                          box=tuple(int(v) for v in self.boxes[k]), landmarks=self.landmarks[k])
        return out

    @classmethod
    def from_aligned(cls, aligned: list[AlignedFace | None], complete: bool) -> AvatarTrack:
        found = [a for a in aligned if a is not None]
        if not found:
            raise ValueError("a face track needs at least one frame with a face")
        return cls(has_face=np.array([a is not None for a in aligned], bool),
                   faces=np.stack([a.face for a in found]).astype(np.uint8),
                   affines=np.stack([np.asarray(a.affine, np.float32) for a in found]),
                   boxes=np.array([list(a.box) for a in found], np.int64),
                   landmarks=np.stack([np.asarray(a.landmarks, np.float64) for a in found]),
                   complete=bool(complete))


def _payload_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}{value.shape}{value.dtype}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


class AvatarCache:
    """Face tracks by video content and settings in folder ``root`` (created on first write)."""
    def __init__(self, root: str):
        self.root = os.path.abspath(os.path.expanduser(root))
        self.rebuilt: list[str] = []  # names of entries found stale or corrupt (and deleted) by this object
        self._hashes: dict[tuple, str] = {}  # video sha256 by (path, size, mtime, inode): hashed once
        self._lock = threading.Lock()

    def video_sha256(self, path: str) -> str:
        st = os.stat(path)
        memo = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino)
        with self._lock:
            if memo in self._hashes:
                return self._hashes[memo]
        value = file_sha256(path)
        with self._lock:
            self._hashes[memo] = value
        return value

    def key(self, video_path: str, *, resolution: int, fps: float, backend: str, face: str | int | None = None,
            **extra: Any) -> AvatarKey:
        settings = dict(resolution=int(resolution), fps=float(fps), backend=str(backend),
                        face="" if face is None else str(face), face_pass_version=FACE_PASS_VERSION,
                        smooth=True, max_gap=25, **extra)
        return AvatarKey(self.video_sha256(video_path), settings)

    def path(self, key: AvatarKey) -> str:
        return os.path.join(self.root, key.name + SUFFIX)

    def _discard(self, path: str, reason: str) -> None:
        self.rebuilt.append(f"{os.path.basename(path)}: {reason}")
        try:
            os.remove(path)
        except OSError:
            pass

    def load(self, key: AvatarKey) -> AvatarTrack | None:
        """The entry of ``key`` if present and valid; a stale or corrupt entry is deleted (None)."""
        path = self.path(key)
        if not os.path.exists(path):
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                arrays = {name: data[name] for name in data.files if name != "meta"}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, json.JSONDecodeError) as error:
            self._discard(path, f"unreadable ({type(error).__name__})")
            return None
        problem = self._check(meta, arrays, key)
        if problem:
            self._discard(path, problem)
            return None
        latents = arrays.get("latents")
        return AvatarTrack(**{name: arrays[name] for name in _ARRAYS}, complete=bool(meta["complete"]),
                           latents=latents, vae_fingerprint=str(meta.get("vae_fingerprint", "")))

    @staticmethod
    def _check(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], key: AvatarKey) -> str:
        if meta.get("version") != CACHE_VERSION:
            return f"cache version {meta.get('version')} != {CACHE_VERSION}"
        if meta.get("video_sha256") != key.video_sha256:
            return "made from other video content"
        if meta.get("settings") != json.loads(json.dumps(dict(key.settings))):
            return "made with other settings"
        if any(name not in arrays for name in _ARRAYS):
            return "arrays missing"
        if meta.get("payload_sha256") != _payload_sha256(arrays):
            return "content does not match its checksum"
        m = int(arrays["has_face"].sum())
        if any(len(arrays[name]) != m for name in _ARRAYS[1:]) or ("latents" in arrays and len(arrays["latents"]) != m):
            return "inconsistent array lengths"
        return ""

    def store(self, key: AvatarKey, track: AvatarTrack) -> str:
        """Write ``track`` atomically (temp file + rename); returns the entry's path."""
        os.makedirs(self.root, exist_ok=True)
        arrays = {name: getattr(track, name) for name in _ARRAYS}
        if track.latents is not None:
            arrays["latents"] = track.latents
        meta = dict(version=CACHE_VERSION, video_sha256=key.video_sha256, settings=dict(key.settings),
                    complete=track.complete, num_frames=track.num_frames, vae_fingerprint=track.vae_fingerprint,
                    payload_sha256=_payload_sha256(arrays), created=time.strftime("%Y-%m-%dT%H:%M:%S"))
        fd, tmp = tempfile.mkstemp(prefix=".tmp_", suffix=SUFFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(json.dumps(meta)), **arrays)
            os.replace(tmp, self.path(key))
        except BaseException:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise
        return self.path(key)


class CachedFacePass:
    """The engine's face pass replayed from an ``AvatarTrack``: frame i gets the stored aligned face
    (no landmarks, no warp). A frame past a partial track raises ``AvatarCacheMiss``."""
    def __init__(self, track: AvatarTrack, source: str = "video"):
        self.track = track
        self.source = source
        self._aligned = track.aligned_faces()
        self.frames_seen = 0

    def __call__(self, frame: np.ndarray) -> AlignedFace | None:
        index = self.frames_seen
        self.frames_seen += 1
        if index >= self.track.num_frames:
            if self.track.complete:  # the decoder gave one frame more than the first run: keep it unchanged
                return None
            raise AvatarCacheMiss(f"{self.source}: the avatar cache holds {self.track.num_frames} frames, "
                                  f"this job needs more")
        return self._aligned[index]

    def check_found(self) -> None:
        return None  # the track had a face when it was stored

    def close(self) -> None:
        return None


class RecordingFacePass:
    """Wraps the engine's face pass and stores what it produced as an ``AvatarTrack`` when the pass
    ends well (``check_found`` passed): ``expected_frames`` (the video's frame count at the job's
    fps) tells whether the job saw the whole video. ``on_store(track)`` may add latents first."""

    def __init__(self, inner, cache: AvatarCache, key: AvatarKey, expected_frames: int, on_store=None):
        self.inner, self.cache, self.key = inner, cache, key
        self.expected_frames = int(expected_frames)
        self.on_store = on_store
        self.aligned: list[AlignedFace | None] = []
        self.found = False
        self.stored_path: str | None = None
        self.stored_track: AvatarTrack | None = None

    def __call__(self, frame: np.ndarray) -> AlignedFace | None:
        aligned = self.inner(frame)
        self.aligned.append(aligned)
        return aligned

    def check_found(self) -> None:
        self.inner.check_found()
        self.found = True

    def track(self) -> AvatarTrack | None:
        if not self.found or not any(a is not None for a in self.aligned):
            return None
        if any(a is not None and not isinstance(a, AlignedFace) for a in self.aligned):
            return None  # a face pass with several faces per frame (lanes): not cached (yet)
        return AvatarTrack.from_aligned(self.aligned, complete=len(self.aligned) >= self.expected_frames)

    def close(self) -> None:
        self.inner.close()

    def store(self) -> str | None:
        """Write the entry (call after the job succeeded)."""
        track = self.track()
        if track is None:
            return None
        if self.on_store is not None:
            track = self.on_store(track) or track
        self.stored_path = self.cache.store(self.key, track)
        self.stored_track = track
        return self.stored_path
