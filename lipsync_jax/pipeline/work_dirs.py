"""Hidden work folders beside a job's output, named after the process that owns them.

A job writes its silent video and frame store into ``.lipsync_<pid>_<random>`` in the output's
folder and removes it when it ends (also on Ctrl-C / SIGTERM). A process killed outright (SIGKILL,
a container's stop timeout) cannot clean up, so ``make`` first removes the work folders in that
output folder whose owner process no longer exists: leftovers never accumulate.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile

from lipsync_jax.cleanup import remove_path, track_path

PREFIX = ".lipsync_"
_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)_")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stale_folders(folder: str) -> list[str]:
    """Work folders in ``folder`` whose owner process is gone."""
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
    return track_path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_", dir=folder))


def remove_work_dir(path: str) -> None:
    remove_path(path)
