"""What a stopped process leaves behind (lipsync_jax/cleanup.py, pipeline/work_dirs.py): registered
temp paths and child processes go at a stop; work folders carry their owner's pid and a new job
removes those whose owner is gone (a SIGKILL cannot clean up)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from lipsync_jax import cleanup
from lipsync_jax.pipeline.work_dirs import HOST, PREFIX, make_work_dir, remove_work_dir, stale_folders

pytestmark = pytest.mark.integration


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has it (until the kernel reuses it)


def test_release_all_kills_children_and_deletes_paths(tmp_path):
    folder = cleanup.track_path(tempfile.mkdtemp(dir=tmp_path))
    open(os.path.join(folder, "partial.mp4"), "wb").write(b"x" * 100)
    child = cleanup.track_process(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    kept = tmp_path / "kept.txt"
    kept.write_text("not registered")
    cleanup.release_all()
    assert child.wait(5) != 0 and not os.path.exists(folder) and kept.exists()
    assert cleanup.tracked() == ([], 0)


def test_paths_removed_by_their_owner_are_forgotten(tmp_path):
    with cleanup.tracked_path(tempfile.mkdtemp(dir=tmp_path)) as folder:
        assert folder in cleanup.tracked()[0]
    assert not os.path.exists(folder) and folder not in cleanup.tracked()[0]
    result = cleanup.run_tracked([sys.executable, "-c", "print('hi')"], stdout=subprocess.PIPE)
    assert result.returncode == 0 and result.stdout.strip() == b"hi" and cleanup.tracked()[1] == 0


def test_a_new_job_removes_the_work_folders_of_processes_that_are_gone(tmp_path):
    output = str(tmp_path / "out.mp4")
    stale = tmp_path / f"{PREFIX}{HOST}_{dead_pid()}_abcd"  # left by a SIGKILLed run on this machine
    (stale / "frames").mkdir(parents=True)
    (stale / "frames" / "000.png").write_bytes(b"png")
    alive = tmp_path / f"{PREFIX}{HOST}_{os.getppid()}_efgh"  # a running process's (our parent's) folder
    alive.mkdir()
    elsewhere = tmp_path / f"{PREFIX}other-machine_{dead_pid()}_ijkl"  # another machine's (shared folder)
    elsewhere.mkdir()
    other = tmp_path / ".lipsync_notes"  # not a work folder
    other.mkdir()
    assert stale_folders(str(tmp_path)) == [str(stale)]
    work = make_work_dir(output)
    assert os.path.basename(work).startswith(f"{PREFIX}{HOST}_{os.getpid()}_") and work in cleanup.tracked()[0]
    assert not stale.exists() and alive.exists() and other.exists() and elsewhere.exists()
    remove_work_dir(work)
    assert not os.path.exists(work) and work not in cleanup.tracked()[0]
