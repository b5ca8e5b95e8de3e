"""What a stopped process must not leave behind: its temp files and folders and its child processes.

Code that creates a temp path or starts a child process registers it here (``tracked_path``,
``tracked_process``, ``run_tracked``) and unregisters it when it removes or reaps it itself. When a
command is stopped (SIGTERM, Ctrl-C; serving/cli.py) its main thread calls ``release_all()``: every
registered child process is killed and every registered path deleted, at once, without waiting for
worker threads that sit in a device call or an XLA compile; then the process exits. This is a
registry of the process's own resources (like ``atexit``), not configuration.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence

_lock = threading.Lock()
_paths: dict[str, int] = {}  # path -> registrations (the same folder may be registered twice)
_processes: set[subprocess.Popen] = set()


def track_path(path: str) -> str:
    """Register ``path`` (a file or folder) for deletion on a stop; returns it."""
    path = os.path.abspath(path)
    with _lock:
        _paths[path] = _paths.get(path, 0) + 1
    return path


def untrack_path(path: str) -> None:
    path = os.path.abspath(path)
    with _lock:
        count = _paths.get(path, 0) - 1
        if count > 0:
            _paths[path] = count
        else:
            _paths.pop(path, None)


def remove_path(path: str) -> None:
    """Delete ``path`` (file or folder, missing is fine) and unregister it."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    untrack_path(path)


@contextlib.contextmanager
def tracked_path(path: str) -> Iterator[str]:
    """Registered while the block runs; removed at its end whatever happens."""
    track_path(path)
    try:
        yield path
    finally:
        remove_path(path)


def track_process(proc: subprocess.Popen) -> subprocess.Popen:
    with _lock:
        _processes.add(proc)
    return proc


def untrack_process(proc: subprocess.Popen) -> None:
    with _lock:
        _processes.discard(proc)


def run_tracked(args: Sequence[str], **kwargs) -> subprocess.CompletedProcess:
    """``subprocess.run`` (output captured as given by ``kwargs``) with the child registered while it runs."""
    with subprocess.Popen(args, **kwargs) as proc:
        track_process(proc)
        try:
            stdout, stderr = proc.communicate()
        except BaseException:
            proc.kill()
            raise
        finally:
            untrack_process(proc)
    return subprocess.CompletedProcess(args, proc.returncode, stdout, stderr)


def release_all() -> None:
    """Kill every registered child process, then delete every registered path (a stop)."""
    with _lock:
        processes, paths = list(_processes), sorted(_paths, key=len, reverse=True)
        _processes.clear()
        _paths.clear()
    for proc in processes:
        with contextlib.suppress(OSError):
            proc.kill()
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.wait(timeout=2)
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.remove(path)


def tracked() -> tuple[list[str], int]:
    """(registered paths, number of registered processes): for tests and debugging."""
    with _lock:
        return sorted(_paths), len(_processes)
