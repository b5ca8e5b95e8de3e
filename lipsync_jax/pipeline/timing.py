"""Wall-clock time and frame counts per pipeline stage (for progress summaries and bench/)."""

from __future__ import annotations

import collections
import contextlib
import time
from typing import Any, Iterator

import jax

# setup starts the face backend and draws the start noise; face_alignment includes the first decode of the video; frame_read is the output pass's second
# read (or the spill file); video_encode is H.264 encoding (x264 runs in its own process) + muxing.
STAGES = ("setup", "audio", "face_alignment", "vae_encode", "sampling", "vae_decode", "frame_read", "restore",
          "video_encode")


class StageTimer:
    """``with timer.stage("sampling", frames=16): ...`` accumulates seconds and frames.

    ``sync=True`` (benchmarks) waits for device results inside each stage (``timer.ready(x)``),
    so asynchronous JAX work is charged to the stage that launched it; ``sync=False`` never
    blocks (times of device stages are then only indicative)."""

    def __init__(self, sync: bool = False):
        self.sync = sync
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.frames: dict[str, int] = collections.defaultdict(int)

    @contextlib.contextmanager
    def stage(self, name: str, frames: int = 0) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.frames[name] += int(frames)

    def count(self, name: str, frames: int) -> None:
        """Frames a stage handled, when they are known only after it ran."""
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
