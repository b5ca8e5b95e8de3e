"""Full-resolution source frames for the output pass, without holding the video in memory.

- ``ForwardFrames``: decodes the video again, in order; ``get(i)`` for non-decreasing ``i``
  (output order when the audio is not longer than the video).
- ``FrameSpill``: raw RGB frames appended to a temporary file during the face pass and read
  back by index (``os.pread``), for the ping-pong loop that walks the video backwards. Disk use
  is width x height x 3 bytes per source frame; the file is deleted on ``close()``.
Both hold at most one frame in memory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import numpy as np

from lipsync_jax.media import read_frames
from lipsync_jax.pipeline.errors import InferenceError


class ForwardFrames:
    def __init__(self, path: str, fps: float, num_frames: int):
        self.path = path
        self._frames: Iterator[np.ndarray] = read_frames(path, fps, max_frames=num_frames)
        self._index = -1
        self._frame: np.ndarray | None = None

    def get(self, index: int) -> np.ndarray:
        if index < self._index:
            raise InferenceError(f"{self.path}: frame {index} requested after frame {self._index} "
                                 "(forward reading only)")
        while self._index < index:
            try:
                self._frame = next(self._frames)
            except StopIteration:
                raise InferenceError(f"{self.path}: frame {index} is past the end of the video "
                                     f"({self._index + 1} frames on the second read)") from None
            self._index += 1
        return self._frame

    def close(self) -> None:
        self._frames.close()


class FrameSpill:
    def __init__(self, width: int, height: int, folder: str | None = None):
        self.shape = (int(height), int(width), 3)
        self.frame_bytes = self.shape[0] * self.shape[1] * 3
        fd, self.path = tempfile.mkstemp(prefix="lipsync_frames_", suffix=".rgb", dir=folder)
        self._file = os.fdopen(fd, "w+b")
        self.count = 0

    def append(self, frame: np.ndarray) -> None:
        if frame.shape != self.shape or frame.dtype != np.uint8:
            raise InferenceError(f"frame {self.count}: expected uint8 {self.shape}, got {frame.dtype} {frame.shape}")
        self._file.write(np.ascontiguousarray(frame).tobytes())
        self.count += 1

    def get(self, index: int) -> np.ndarray:
        if not 0 <= index < self.count:
            raise IndexError(f"frame {index} not in the spill file ({self.count} frames)")
        self._file.flush()
        data = os.pread(self._file.fileno(), self.frame_bytes, index * self.frame_bytes)
        return np.frombuffer(data, np.uint8).reshape(self.shape)

    def close(self) -> None:
        self._file.close()
        try:
            os.remove(self.path)
        except FileNotFoundError:
            pass

    def __del__(self):
        if not self._file.closed:
            self.close()
