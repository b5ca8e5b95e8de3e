"""Write-then-rename: outputs appear at their final path only when complete."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from lipsync_jax.cleanup import remove_path, track_path, untrack_path


def temp_path_beside(path: str) -> str:
    """A fresh hidden temp file in ``path``'s folder (same file system, so rename is atomic),
    keeping the extension so ffmpeg picks the right container."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        from lipsync_jax.media.ffmpeg import MediaError
        raise MediaError(f"{path}: output folder {folder} does not exist")
    name, ext = os.path.splitext(os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    return track_path(tmp)


def discard(path: str) -> None:
    remove_path(path)


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temp path; on normal exit it is moved onto ``path``, on error it is deleted."""
    tmp = temp_path_beside(path)
    try:
        yield tmp
    except BaseException:
        discard(tmp)
        raise
    _chmod_like_new_file(tmp)  # mkstemp makes 0600 files; outputs get the usual umask mode
    os.replace(tmp, path)
    untrack_path(tmp)


def _chmod_like_new_file(path: str) -> None:
    umask = os.umask(0)
    os.umask(umask)
    with contextlib.suppress(OSError):
        os.chmod(path, 0o666 & ~umask)
