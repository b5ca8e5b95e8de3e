"""Wall-clock time and frame counts per pipeline stage (for progress summaries and bench/)."""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax

# Engine stages (pipeline/stream.py; they run in parallel threads, so their seconds overlap): setup starts the
# face backend; video_decode is the one decode pass; frame_store the PNG store of ping-pong loops; dispatch
# launches the device program (the first call waits for its compilation); device_wait is the writer waiting
# for the device; restore pastes faces into frames (thread pool); video_encode feeds x264; mux adds the audio.
# vae_encode/sampling/vae_decode/frame_read: the chunk-at-a-time reference (ChunkGenerator, FrameSpill).
STAGES = ("setup", "audio", "video_decode", "face_alignment", "frame_store", "batch_assembly", "dispatch",
          "device_wait", "vae_encode", "sampling", "vae_decode", "frame_read", "restore", "video_encode", "mux")


class StageTimer:
    """``with timer.stage("sampling", frames=16): ...`` accumulates seconds and frames.

    ``sync=True`` (benchmarks) waits for device results inside each stage (``timer.ready(x)``),
    so asynchronous JAX work is charged to the stage that launched it; ``sync=False`` never
    blocks (times of device stages are then only indicative)."""

    def __init__(self, sync: bool = False):
        self.sync = sync
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.frames: dict[str, int] = collections.defaultdict(int)
        self._lock = threading.Lock()  # stages run in several threads (pipeline/stream.py)

    @contextlib.contextmanager
    def stage(self, name: str, frames: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            with self._lock:
                self.seconds[name] += time.perf_counter() - start
                self.frames[name] += int(frames)

    def count(self, name: str, frames: int) -> None:
        """Frames a stage handled, when they are known only after it ran."""
        with self._lock:
            self.frames[name] += int(frames)

    def ready(self, value: Any) -> Any:
        return jax.block_until_ready(value) if self.sync else value

    def fps(self, name: str) -> float:
        seconds = self.seconds.get(name, 0.0)
        return self.frames.get(name, 0) / seconds if seconds > 0 else float("nan")

    def rows(self) -> list[tuple[str, int, float, float]]:
        """(stage, frames, seconds, frames per second) in pipeline order, then any others."""
        names = [s for s in STAGES if s in self.seconds] + sorted(set(self.seconds) - set(STAGES))
        return [(n, self.frames.get(n, 0), self.seconds[n], self.fps(n)) for n in names]
