"""Source frames and their faces for the engine, from ONE decode pass with bounded memory.

``SourceRecord``: one decoded source frame (full resolution, RGB uint8) and the face pass's
result for it (an ``AlignedFace`` or None).

``FrameStore``: random access to every source frame for ping-pong loops (the backward passes
walk the video in reverse), compressed losslessly: each frame (and its aligned face) is a PNG
file in a temp folder (cv2, compression level 1: about a third of the raw size for video frames,
written by a small thread pool so the face pass does not wait). The alignment metadata (affine,
crop box, anchors: ~100 bytes per frame) stays in memory; pixels do not. ``get(i)`` decodes the
PNGs back: the same pixels, so results equal those of a raw spill.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import tempfile
import threading

import cv2
import numpy as np

from lipsync_jax.cleanup import remove_path, track_path
from lipsync_jax.face import AlignedFace
from lipsync_jax.pipeline.errors import InferenceError

PNG_LEVEL = 1  # zlib level: fast, still ~3x smaller than raw for camera frames


@dataclasses.dataclass
class SourceRecord:
    index: int  # source frame number (at the job's fps)
    frame: np.ndarray  # (H, W, 3) uint8
    aligned: AlignedFace | None  # None: no face in this frame (several faces: a tuple, one per lane)


def _write_png(path: str, image: np.ndarray) -> None:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, PNG_LEVEL])
    if not ok:
        raise InferenceError(f"{path}: PNG encoding failed")
    with open(path, "wb") as f:
        f.write(data.tobytes())


def _read_png(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InferenceError(f"{path}: cannot read a stored frame back")
    return np.ascontiguousarray(image[..., ::-1])


def _face_name(lane: int) -> str:
    return "face" if lane == 0 else f"face{lane}"


class FrameStore:
    """Lossless (PNG) random-access store of source frames + faces in ``folder`` (a fresh
    sub-folder is made there and deleted by ``close()``)."""

    def __init__(self, folder: str | None = None, *, threads: int = 2, max_pending: int = 8):
        self.path = track_path(tempfile.mkdtemp(prefix="frames_", dir=folder))
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="frame-store")
        self._pending: list[concurrent.futures.Future] = []
        self._max_pending = max_pending
        self._meta: dict[int, AlignedFace | None] = {}
        self._lock = threading.Lock()
        self.bytes_written = 0

    def __len__(self) -> int:
        return len(self._meta)

    def _file(self, index: int, what: str) -> str:
        return os.path.join(self.path, f"{index:08d}_{what}.png")

    def _write(self, index: int, frame: np.ndarray, faces: list[np.ndarray | None]) -> None:
        _write_png(self._file(index, "frame"), frame)
        size = os.path.getsize(self._file(index, "frame"))
        for lane, face in enumerate(faces):
            if face is not None:
                _write_png(self._file(index, _face_name(lane)), face)
                size += os.path.getsize(self._file(index, _face_name(lane)))
        with self._lock:
            self.bytes_written += size

    def put(self, record: SourceRecord) -> None:
        """Store a record (asynchronously; at most ``max_pending`` writes in flight)."""
        lanes = record.aligned if isinstance(record.aligned, tuple) else (record.aligned,)
        meta = tuple(None if a is None else dataclasses.replace(a, face=None) for a in lanes)
        self._meta[record.index] = meta if isinstance(record.aligned, tuple) else meta[0]
        faces = [None if a is None else a.face for a in lanes]
        self._pending.append(self._pool.submit(self._write, record.index, record.frame, faces))
        while len(self._pending) > self._max_pending:
            self._pending.pop(0).result()

    def flush(self) -> None:
        while self._pending:
            self._pending.pop(0).result()

    def has_face(self, lane: int = 0) -> np.ndarray:
        return np.array([self.has_face_at(i, lane) for i in range(len(self._meta))], bool)

    def has_face_at(self, index: int, lane: int = 0) -> bool:
        meta = self._meta[index]
        return (meta[lane] if isinstance(meta, tuple) else meta) is not None

    def get(self, index: int) -> SourceRecord:
        if index not in self._meta:
            raise IndexError(f"frame {index} not in the frame store ({len(self._meta)} frames)")
        self.flush()
        meta = self._meta[index]
        lanes = tuple(None if m is None else dataclasses.replace(m, face=_read_png(self._file(index, _face_name(k))))
                      for k, m in enumerate(meta if isinstance(meta, tuple) else (meta,)))
        aligned = lanes if isinstance(meta, tuple) else lanes[0]
        return SourceRecord(index, _read_png(self._file(index, "frame")), aligned)

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pending.clear()
        remove_path(self.path)
