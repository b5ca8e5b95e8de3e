"""Streaming video I/O through ffmpeg pipes: frames are RGB uint8 (h, w, 3), one at a time.

Reading resamples to a constant frame rate with ffmpeg's ``fps`` filter when asked (LatentSync
re-encodes every input with ``ffmpeg -r 25`` before reading; the fps filter makes the same
drop/duplicate-nearest-frame choice without that lossy intermediate encode). Rotation
metadata is honoured: ffmpeg auto-rotates decoded frames, so frames come out as displayed.

Writing encodes H.264 (libx264, yuv420p) into a temp file beside the target, which is moved
into place only when the writer closes without error.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator

import numpy as np

from lipsync_jax.cleanup import track_process, untrack_path, untrack_process
from lipsync_jax.media.atomic import discard, temp_path_beside
from lipsync_jax.media.ffmpeg import MediaError, base_command, stderr_tail
from lipsync_jax.media.probe import VideoInfo, probe_video


def _same_rate(a: float, b: float) -> bool:
    return abs(a - b) < 1e-3


def _read_exact(stream, size: int) -> bytearray | None:
    """``size`` bytes from a pipe, or None at a clean end of stream; MediaError on a cut frame."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])
        if not n:
            break
        got += n
    if got == 0:
        return None
    if got < size:
        raise MediaError(f"truncated frame from ffmpeg ({got} of {size} bytes)")
    return buf


def scaled_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) shrunk, aspect kept (rounded), so that the longest side is at most
    ``max_side``; unchanged when it already is or ``max_side`` is None."""
    if max_side is None or max(width, height) <= max_side:
        return width, height
    factor = max_side / max(width, height)
    return max(int(round(width * factor)), 1), max(int(round(height * factor)), 1)


def read_frames(path: str, fps: float | None = None, *, max_frames: int | None = None,
                info: VideoInfo | None = None, max_side: int | None = None) -> Iterator[np.ndarray]:
    """Yields the frames of ``path`` as writable RGB uint8 arrays (height, width, 3).

    fps: resample to this constant rate (e.g. 25.0, as LatentSync does) or None to keep every
    decoded frame. max_frames: stop after this many. max_side: downscale in ffmpeg (area
    filter) to ``scaled_size(width, height, max_side)`` (cheap previews and pre-passes).
    Memory: one frame at a time.
    """
    info = info or probe_video(path, count=False)
    args = [*base_command(), "-i", path, "-map", "0:v:0"]
    width, height = scaled_size(info.width, info.height, max_side)
    filters = []
    if fps is not None and not _same_rate(fps, info.fps):
        filters.append(f"fps={fps:g}")
    if (width, height) != (info.width, info.height):
        filters.append(f"scale={width}:{height}:flags=area")
    if filters:
        args += ["-vf", ",".join(filters)]
    if max_frames is not None:
        args += ["-frames:v", str(int(max_frames))]
    args += ["-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
    frame_bytes = width * height * 3
    with tempfile.TemporaryFile() as log:
        proc = track_process(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log))
        finished = False
        try:
            count = 0
            while True:
                try:
                    buf = _read_exact(proc.stdout, frame_bytes)
                except MediaError as e:
                    raise MediaError(f"{path}: {e}") from None
                if buf is None:
                    break
                count += 1
                yield np.frombuffer(buf, np.uint8).reshape(height, width, 3)
            finished = True
            if proc.wait() != 0:
                log.seek(0)
                raise MediaError(f"{path}: decoding failed after {count} frames: "
                                 f"{stderr_tail(log.read().decode('utf-8', 'replace'))}")
            if count == 0:
                raise MediaError(f"{path}: no video frames could be decoded")
        finally:
            if not finished and proc.poll() is None:  # the caller stopped early
                proc.kill()
            proc.stdout.close()
            proc.wait()
            untrack_process(proc)


class VideoWriter:
    """Context manager encoding RGB uint8 frames to an H.264 mp4, frame by frame.

        with VideoWriter("out.mp4", width, height, fps=25) as writer:
            for frame in frames:
                writer.write(frame)

    Odd sizes are padded by one pixel to even (yuv420p needs even dimensions). The file appears
    at ``path`` only after a successful close; on an exception the temp file is deleted.
    """

    def __init__(self, path: str, width: int, height: int, fps: float = 25.0, *, crf: int = 18,
                 preset: str = "medium"):
        if width <= 0 or height <= 0:
            raise ValueError(f"{path}: invalid frame size {width}x{height}")
        self.path, self.width, self.height, self.fps = path, int(width), int(height), float(fps)
        self.crf, self.preset = int(crf), preset
        self.frames_written = 0
        self._proc: subprocess.Popen | None = None
        self._tmp: str | None = None
        self._log = None

    def _command(self, tmp: str) -> list[str]:
        args = [*base_command(), "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
                "-s", f"{self.width}x{self.height}", "-r", f"{self.fps:g}", "-i", "-", "-an"]
        if self.width % 2 or self.height % 2:
            args += ["-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2"]
        return args + ["-c:v", "libx264", "-preset", self.preset, "-crf", str(self.crf),
                       "-pix_fmt", "yuv420p", "-movflags", "+faststart", tmp]

    def __enter__(self) -> VideoWriter:
        self._tmp = temp_path_beside(self.path)
        self._log = tempfile.TemporaryFile()
        self._proc = track_process(subprocess.Popen(self._command(self._tmp), stdin=subprocess.PIPE,
                                                    stdout=subprocess.DEVNULL, stderr=self._log))
        return self

    def _ffmpeg_log(self) -> str:
        self._log.seek(0)
        return stderr_tail(self._log.read().decode("utf-8", "replace"))

    def write(self, frame: np.ndarray) -> None:
        if self._proc is None:
            raise RuntimeError("VideoWriter.write outside its 'with' block")
        frame = np.asarray(frame)
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: expected uint8 frames of shape "
                             f"{(self.height, self.width, 3)}, got {frame.dtype} {frame.shape}")
        try:
            self._proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        except (BrokenPipeError, OSError):
            self._proc.wait()
            raise MediaError(f"{self.path}: the encoder stopped: {self._ffmpeg_log()}") from None
        self.frames_written += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        proc, tmp = self._proc, self._tmp
        self._proc = None
        try:
            if exc_type is not None:
                proc.kill()
                proc.wait()
                discard(tmp)
                return
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            if proc.wait() != 0:
                discard(tmp)
                raise MediaError(f"{self.path}: encoding failed: {self._ffmpeg_log()}")
            if self.frames_written == 0:
                discard(tmp)
                raise MediaError(f"{self.path}: no frames were written")
            os.replace(tmp, self.path)
            untrack_path(tmp)
        finally:
            untrack_process(proc)
            if proc.stdin and not proc.stdin.closed:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
            self._log.close()
