"""Paths of the batch (jobs table, media, outputs, records, result table) on any file system: a local
path, or a URL such as ``gs://bucket/x.mp4`` read and written through Apache Beam's ``FileSystems``
(gs://, s3://, hdfs://, azfs://; the optional dependency of requirements-beam.txt).

The engine reads and writes media with ordinary file I/O (ffmpeg), so a job whose files are URLs is
staged: its inputs are copied to a local temp folder, its output written there and copied to its URL
when it is complete (an object appears only when its upload is closed: never a partial one).
"""

from __future__ import annotations

import io
import os
import posixpath
import shutil
import tempfile
from typing import IO, Any

from lipsync_jax.cleanup import remove_path, track_path, untrack_path

COPY_CHUNK = 16 << 20


class RemoteFileError(OSError):
    """A URL that cannot be used (no Apache Beam, no file system for its scheme)."""


def is_local(path: str) -> bool:
    return "://" not in path


def _filesystems():
    try:  # optional dependency (pip install -r requirements-beam.txt): only URLs such as gs://... need it
        from apache_beam.io.filesystems import FileSystems
    except ImportError:
        raise RemoteFileError("paths such as gs://... need Apache Beam: pip install -r requirements-beam.txt") from None
    return FileSystems


def _uncompressed() -> Any:
    from apache_beam.io.filesystem import CompressionTypes  # see _filesystems

    return CompressionTypes.UNCOMPRESSED


def _remote(call, path: str, *args, **kwargs):
    """``FileSystems.<call>(path, ...)``; Beam's "no file system for this scheme" as one line."""
    filesystems = _filesystems()
    try:
        return getattr(filesystems, call)(path, *args, **kwargs)
    except ValueError as error:
        if "Unable to get filesystem" in str(error):
            raise RemoteFileError(f"{path}: no file system for {path.split('://')[0]}:// (install its Apache Beam "
                                  f"extra, e.g. apache-beam[gcp])") from None
        raise


def file_exists(path: str) -> bool:
    return os.path.isfile(path) if is_local(path) else bool(_remote("exists", path))


def file_stat(path: str) -> dict[str, Any]:
    """What identifies this version of a file: its size and modification time."""
    if is_local(path):
        info = os.stat(path)
        return {"bytes": info.st_size, "mtime_ns": info.st_mtime_ns}
    meta = _remote("get_filesystem", path).metadata(path)
    return {"bytes": int(meta.size_in_bytes), "mtime": float(meta.last_updated_in_seconds)}


def file_size(path: str) -> int | None:
    try:
        return file_stat(path)["bytes"] if file_exists(path) else None
    except OSError:
        return None


def join(base: str, relative: str) -> str:
    """``relative`` in the folder ``base`` (a local folder or a URL's folder), normalised."""
    if is_local(base):
        return os.path.normpath(os.path.join(base, relative))
    scheme, _, rest = base.partition("://")
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def dirname(path: str) -> str:
    return os.path.dirname(os.path.abspath(path)) if is_local(path) else path.rsplit("/", 1)[0]


def basename(path: str) -> str:
    return os.path.basename(path) if is_local(path) else path.rsplit("/", 1)[1]


def beside(path: str, name: str) -> str:
    """The file ``name`` in ``path``'s folder."""
    return os.path.join(dirname(path), name) if is_local(path) else f"{dirname(path)}/{name}"


def open_text(path: str) -> IO[str]:
    """Read a text file (a BOM is dropped)."""
    if is_local(path):
        return open(path, newline="", encoding="utf-8-sig")
    return io.TextIOWrapper(_remote("open", path, compression_type=_uncompressed()), newline="",
                            encoding="utf-8-sig")


def write_text(path: str, text: str) -> None:
    """Write a whole text file: locally to a temp file renamed into place, elsewhere as one upload."""
    if not is_local(path):
        with _remote("create", path, mime_type="text/plain", compression_type=_uncompressed()) as f:
            f.write(text.encode("utf-8"))
        return
    folder = dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    track_path(tmp)  # deleted on a stop (lipsync_jax/cleanup.py)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    untrack_path(tmp)


def download(url: str, local: str) -> None:
    with _remote("open", url, compression_type=_uncompressed()) as source, open(local, "wb") as target:
        shutil.copyfileobj(source, target, COPY_CHUNK)


def upload(local: str, url: str) -> None:
    with open(local, "rb") as source, _remote("create", url, compression_type=_uncompressed()) as target:
        shutil.copyfileobj(source, target, COPY_CHUNK)
