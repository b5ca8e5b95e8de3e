"""The ffmpeg binary (from imageio-ffmpeg; no system ffmpeg or ffprobe needed) and its errors."""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Sequence

from lipsync_jax.cleanup import run_tracked


class MediaError(RuntimeError):
    """A media file is missing, unreadable, lacks a needed stream, or ffmpeg failed on it."""


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg executable shipped with imageio-ffmpeg (or $IMAGEIO_FFMPEG_EXE)."""
    try:
        import imageio_ffmpeg
    except ImportError as e:  # pragma: no cover - a declared dependency
        raise MediaError("imageio-ffmpeg is not installed; it provides the ffmpeg binary") from e
    return imageio_ffmpeg.get_ffmpeg_exe()


def base_command() -> list[str]:
    """ffmpeg with quiet, non-interactive defaults; append inputs/outputs."""
    return [ffmpeg_exe(), "-hide_banner", "-nostdin", "-loglevel", "error"]


def require_file(path: str, what: str = "media file") -> None:
    """Raises MediaError unless ``path`` is an existing, non-empty regular file."""
    if not os.path.exists(path):
        raise MediaError(f"{path}: {what} not found")
    if not os.path.isfile(path):
        raise MediaError(f"{path}: not a regular file")
    if os.path.getsize(path) == 0:
        raise MediaError(f"{path}: {what} is empty")


def stderr_tail(text: str, lines: int = 5) -> str:
    kept = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) if kept else "(no message from ffmpeg)"


def run_ffmpeg(args: Sequence[str], *, what: str) -> str:
    """Runs ``ffmpeg <quiet defaults> args`` to completion; MediaError naming ``what`` on failure.

    Returns ffmpeg's stderr (its log).
    """
    proc = run_tracked([*base_command(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    log = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise MediaError(f"{what}: ffmpeg failed (exit {proc.returncode}): {stderr_tail(log)}")
    return log
