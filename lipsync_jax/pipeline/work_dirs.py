"""Hidden work folders beside a job's output, named after the machine and process that own them.

A job writes its silent video and frame store into ``.lipsync_<host>_<pid>_<random>`` in the
output's folder and removes it when it ends (also on Ctrl-C / SIGTERM). A process killed outright
(SIGKILL, a container's stop timeout) cannot clean up, so ``make_work_dir`` first removes the work
folders in that output folder that THIS machine's dead processes left: leftovers never accumulate,
and another machine's live folder on a shared file system is never touched.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile

from lipsync_jax.cleanup import remove_path, track_path

PREFIX = ".lipsync_"
HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"
_NAME = re.compile(rf"^{re.escape(PREFIX)}{re.escape(HOST)}_(\d+)_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_folders(folder: str) -> list[str]:
    """Work folders in ``folder`` that this machine's processes left and that are gone."""
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    stale = []
    for name in names:
        match = _NAME.match(name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            stale.append(os.path.join(folder, name))
    return stale


def make_work_dir(output_path: str) -> str:
    """A fresh work folder beside ``output_path`` (stale ones there removed first), registered for
    removal on a stop (lipsync_jax/cleanup.py)."""
    folder = os.path.dirname(os.path.abspath(output_path))
    for path in stale_folders(folder):
        shutil.rmtree(path, ignore_errors=True)
    return track_path(tempfile.mkdtemp(prefix=f"{PREFIX}{HOST}_{os.getpid()}_", dir=folder))


def remove_work_dir(path: str) -> None:
    remove_path(path)
