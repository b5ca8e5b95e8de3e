"""The batch on Apache Beam's RunInference (lipsync_jax/serving/batch_beam.py).

Fast: the pipeline on Beam's local runner with a stand-in service (what RunInference, the result
table, the metrics and the skip rule do; the service built once per worker process, only when a job
needs it, or shared across processes with ``model_copies``). Slow: the real tiny model through
``python -m lipsync_jax.batch --runner beam``: the same videos (byte for byte) and status rows as the
local batch, a rerun that skips finished jobs and redoes a deleted output, and SIGTERM to a
pipeline with worker processes mid-job (no partial output anywhere, the rerun completes the table).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from lipsync_jax import config_utils
from lipsync_jax.media import probe_video
from lipsync_jax.media.atomic import atomic_output
from lipsync_jax.pipeline.inputs import check_inputs
from lipsync_jax.pipeline.job import RunOptions
from lipsync_jax.serving.batch import read_jobs
from lipsync_jax.serving.batch_jobs import BatchFileError, read_results
from lipsync_jax.serving.fingerprint import record_path
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

pytestmark = pytest.mark.integration

beam = pytest.importorskip("apache_beam", reason="optional extra: pip install -r requirements-beam.txt")
from apache_beam.io.filesystem import FileMetadata  # noqa: E402 - needs apache_beam
from apache_beam.io.localfilesystem import LocalFileSystem  # noqa: E402

from lipsync_jax.serving import batch_beam  # noqa: E402

BUILDS: list[int] = []  # pids of the processes that built a stand-in service (the runner runs in this one)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "clip.mp4", seconds=0.8, size="270:480")


def write_table(folder, clip, *, good: int = 2, bad_line: int | None = 3):
    """A jobs table of ``good`` jobs on the clip (seeds 1, 2, ...), with a job whose audio is missing
    at table line ``bad_line``; outputs in ``folder/out``."""
    lines = ["id,video,audio,output,seed"]
    audios = [asset_path("demo1_audio.wav"), asset_path("demo2_audio.wav")]
    for n in range(good):
        if bad_line == len(lines) + 1:
            lines.append(f"bad,{clip},{folder}/nope.wav,out/bad.mp4,9")
        lines.append(f"job{n + 1},{clip},{audios[n % 2]},out/job{n + 1}.mp4,{n + 1}")
    path = folder / "jobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


# ---------------------------------------------------------------- the pipeline with a stand-in service

@dataclasses.dataclass
class _Done:
    num_frames: int
    seconds: float
    avatar: str = "off"
    compiles: int = 0


class StandInService:
    """Writes a small file instead of lip-syncing (the real service: the slow tests below)."""

    def describe(self):
        return "stand-in service"

    def run(self, request, progress=False):
        check_inputs(request.job.video, request.job.audio, request.job.output)  # as the service does
        with atomic_output(request.job.output) as tmp, open(tmp, "wb") as f:
            f.write(f"seed {request.job.seed}".encode())
        return _Done(num_frames=7, seconds=0.25)


@dataclasses.dataclass(frozen=True)
class StandInSpec(batch_beam.ServiceSpec):
    fail_build: bool = False

    def build(self):
        BUILDS.append(os.getpid())
        if self.fail_build:
            raise FileNotFoundError("checkpoints/jax/unet: no such folder")
        return StandInService()


def stand_in_spec(**kwargs):
    return StandInSpec(config_utils.load_config(TINY_CONFIG), {"random_init": True}, RunOptions(), **kwargs)


def test_pipeline_runs_skips_and_counts(tmp_path, clip, capfd):
    rows = read_jobs(write_table(tmp_path, clip))
    results = str(tmp_path / "results.jsonl")
    BUILDS.clear()
    outcomes, metrics = batch_beam.run_pipeline(rows, stand_in_spec(), results_path=results)
    assert [(o.row.job_id, o.status, o.frames) for o in outcomes] == [("job1", "done", 7), ("bad", "failed", 0),
                                                                       ("job2", "done", 7)]
    assert outcomes[1].message == f"audio {tmp_path}/nope.wav: no such file"
    assert metrics == {"jobs_done": 2, "jobs_failed": 1, "jobs_skipped": 0, "frames": 14, "device_milliseconds": 500}
    assert BUILDS == [os.getpid()]  # one service for the worker (the local runner works in this process)
    assert [r["status"] for r in read_results(results)] == ["done", "failed", "done"]
    assert (tmp_path / "out" / "job2.mp4").read_bytes() == b"seed 2" and os.path.exists(
        record_path(str(tmp_path / "out" / "job2.mp4")))
    printed = capfd.readouterr().out
    assert "[1/3] wrote" in printed and "[2/3] FAILED line 3" in printed  # the progress lines

    os.remove(tmp_path / "out" / "job1.mp4")
    BUILDS.clear()
    again, metrics = batch_beam.run_pipeline(rows, stand_in_spec(), results_path=results)
    assert [o.status for o in again] == ["done", "failed", "skipped"] and again[2].frames == 7
    assert metrics["jobs_skipped"] == 1 and metrics["jobs_done"] == 1 and len(BUILDS) == 1

    BUILDS.clear()
    finished, _ = batch_beam.run_pipeline(rows, stand_in_spec(), results_path=results)
    assert [o.status for o in finished] == ["skipped", "failed", "skipped"] and BUILDS == []  # nothing built
    forced, _ = batch_beam.run_pipeline(rows, stand_in_spec(), results_path=results, force=True)
    assert [o.status for o in forced] == ["done", "failed", "done"]


def test_a_service_that_cannot_be_built_fails_rows_not_the_pipeline(tmp_path, clip):
    rows = read_jobs(write_table(tmp_path, clip, bad_line=None))
    BUILDS.clear()
    outcomes, metrics = batch_beam.run_pipeline(rows, stand_in_spec(fail_build=True),
                                                results_path=str(tmp_path / "r.csv"))
    assert [o.status for o in outcomes] == ["failed", "failed"]
    assert {o.message for o in outcomes} == {"checkpoints/jax/unet: no such folder"}
    assert len(BUILDS) == 1 and metrics["jobs_failed"] == 2  # tried once per worker, not once per job


def shared_model_files() -> set[str]:
    """The address and lock files Beam's multi_process_shared leaves in the temp folder per model tag."""
    pattern = re.compile(r"[0-9a-f]{32}(\d+|_model_status)\.(address|lock)")
    return {name for name in os.listdir(tempfile.gettempdir()) if pattern.fullmatch(name)}


def test_model_copies_share_one_service_across_processes(tmp_path, clip):
    rows = read_jobs(write_table(tmp_path, clip, bad_line=None))
    BUILDS.clear()
    before = shared_model_files()
    try:
        outcomes, _ = batch_beam.run_pipeline(rows, stand_in_spec(), results_path=str(tmp_path / "r.csv"),
                                              model_copies=1)
    finally:
        for name in shared_model_files() - before:
            os.remove(os.path.join(tempfile.gettempdir(), name))
    assert [o.status for o in outcomes] == ["done", "done"] and len(BUILDS) == 1


class FakeBucket(LocalFileSystem):
    """``testfs://a/b`` is ``FakeBucket.root/a/b``: a file system the batch reaches only through Beam's
    FileSystems, as it reaches gs:// (Beam finds file systems by their class's scheme)."""

    root = ""

    @classmethod
    def scheme(cls):
        return "testfs"

    def _local(self, path):  # LocalFileSystem's methods call each other with the local path
        return os.path.join(self.root, path.split("://", 1)[1]) if "://" in path else path

    def create(self, path, *args, **kwargs):
        return super().create(self._local(path), *args, **kwargs)

    def open(self, path, *args, **kwargs):
        return super().open(self._local(path), *args, **kwargs)

    def exists(self, path):
        return super().exists(self._local(path))

    def metadata(self, path):
        local = super().metadata(self._local(path))
        return FileMetadata(path, local.size_in_bytes, local.last_updated_in_seconds)


def test_media_given_as_urls_are_staged_through_a_local_folder(tmp_path, clip):
    bucket = tmp_path / "bucket"
    (bucket / "media").mkdir(parents=True)
    (bucket / "tables").mkdir()
    shutil.copy(clip, bucket / "media" / "clip.mp4")
    shutil.copy(asset_path("demo1_audio.wav"), bucket / "media" / "speech.wav")
    (bucket / "media" / "broken.mp4").write_bytes(b"not a video")
    (bucket / "tables" / "jobs.csv").write_text(
        "id,video,audio,output,seed\n"
        "one,../media/clip.mp4,../media/speech.wav,out/one.mp4,1\n"
        "gone,../media/clip.mp4,../media/nope.wav,out/gone.mp4,2\n"
        "broken,../media/broken.mp4,../media/speech.wav,out/broken.mp4,3\n")
    FakeBucket.root = str(bucket)
    rows = read_jobs("testfs://tables/jobs.csv")
    assert (rows[0].video, rows[0].output) == ("testfs://media/clip.mp4", "testfs://tables/out/one.mp4")
    stage_folders = set(os.listdir(tempfile.gettempdir()))
    outcomes, _ = batch_beam.run_pipeline(rows, stand_in_spec(), results_path="testfs://tables/results.csv")
    assert [o.status for o in outcomes] == ["done", "failed", "failed"]
    assert outcomes[1].message == "audio testfs://media/nope.wav: no such file"
    assert outcomes[2].message.startswith("video testfs://media/broken.mp4")  # the URL, not the local copy
    assert (bucket / "tables" / "out" / "one.mp4").read_bytes() == b"seed 1"
    assert os.path.exists(bucket / "tables" / "out" / ".one.mp4.lipsync.json")
    assert [r["status"] for r in read_results("testfs://tables/results.csv")] == ["done", "failed", "failed"]
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - stage_folders if n.startswith("lipsync_stage_")]
    again, _ = batch_beam.run_pipeline(rows, stand_in_spec(), results_path="testfs://tables/results.csv")
    assert [o.status for o in again] == ["skipped", "failed", "failed"]


def test_unknown_beam_options_and_missing_results_are_one_line_errors(tmp_path):
    with pytest.raises(BatchFileError, match="unknown Beam option.*direct_num_workerz"):
        batch_beam.pipeline_options(["--direct_num_workerz=2"])
    options = batch_beam.pipeline_options(["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert batch_beam.describe_options(options) == "FnApiRunner (multi_processing, 2 workers)"
    with pytest.raises(BatchFileError, match="wrote none that this machine can read"):
        batch_beam.outcomes_from_results(str(tmp_path / "nothing.csv"), [])


def test_a_stopped_launcher_of_a_remote_pipeline_touches_nothing(tmp_path):
    """Its workers run on in the cluster, maybe writing beside the outputs: nothing is deleted."""
    (tmp_path / ".out.abcd1234.partial.mp4").write_bytes(b"a worker's upload in progress")
    rows = [batch_beam.BatchRow(2, "v.mp4", "a.wav", str(tmp_path / "out.mp4"), {})]
    line = batch_beam.stop_workers(rows, ["--runner=DataflowRunner"])
    assert "runs on in DataflowRunner (cancel it there)" in line
    assert os.listdir(tmp_path) == [".out.abcd1234.partial.mp4"]  # (the local runner's stop: the slow test below)


# ---------------------------------------------------------------- the real tiny model, command line

def batch_command(jobs, cache, *extra):
    return [sys.executable, "-m", "lipsync_jax.batch", jobs, f"--config={TINY_CONFIG}", "--random_init", "--steps=1",
            "--max_seconds=0.64", f"--compile_cache={cache}", *extra]


def run_batch(jobs, cache, *extra, timeout=900):
    proc = subprocess.run(batch_command(jobs, cache, *extra), cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("xla"))


def status_rows(results_path):
    return [(r["id"], r["line"], r["status"], r["frames"], r["message"].replace("/local/", "/beam/"))
            for r in read_results(results_path)]


@pytest.mark.slow
def test_beam_equals_local_batch_and_resumes(tmp_path, clip, compile_cache):
    for name in ("local", "beam"):
        (tmp_path / name).mkdir()
        write_table(tmp_path / name, clip)
    local = run_batch(str(tmp_path / "local" / "jobs.csv"), compile_cache, f"--summary_csv={tmp_path}/local.csv")
    assert local.returncode == 1 and "2 done, 0 skipped, 1 failed" in local.stdout, local.stdout[-2000:]
    beam_jobs = str(tmp_path / "beam" / "jobs.csv")
    first = run_batch(beam_jobs, compile_cache, "--runner=beam")
    assert first.returncode == 1 and "beam metrics: 2 done, 0 skipped, 1 failed, 32 frames" in first.stdout
    assert "[1/3] wrote" in first.stdout and "[3/3] wrote" in first.stdout  # progress lines from the worker
    results = str(tmp_path / "beam" / "jobs.results.csv")  # the default: beside the table
    assert status_rows(results) == status_rows(str(tmp_path / "local.csv"))
    assert [r[2] for r in status_rows(results)] == ["done", "failed", "done"]
    videos = {}
    for name in ("job1", "job2"):
        videos[name] = (tmp_path / "beam" / "out" / f"{name}.mp4").read_bytes()
        assert videos[name] == (tmp_path / "local" / "out" / f"{name}.mp4").read_bytes()
        assert probe_video(str(tmp_path / "beam" / "out" / f"{name}.mp4")).num_frames == 16
    assert videos["job1"] != videos["job2"]

    again = run_batch(beam_jobs, compile_cache, "--runner=beam", f"--summary_csv={tmp_path}/again.jsonl")
    assert "beam metrics: 0 done, 2 skipped, 1 failed, 0 frames, 0.0 device seconds" in again.stdout
    assert [(r["status"], r["frames"]) for r in read_results(f"{tmp_path}/again.jsonl")] == [
        ("skipped", "16"), ("failed", "0"), ("skipped", "16")]
    assert "engine:" not in again.stdout  # no service built: every job was finished or bad

    os.remove(tmp_path / "beam" / "out" / "job2.mp4")
    run_batch(beam_jobs, compile_cache, "--runner=beam")
    assert [r["status"] for r in read_results(results)] == ["skipped", "failed", "done"]
    assert (tmp_path / "beam" / "out" / "job2.mp4").read_bytes() == videos["job2"]
    local_again = run_batch(str(tmp_path / "local" / "jobs.csv"), compile_cache)  # the local batch skips them too
    assert "0 done, 2 skipped, 1 failed" in local_again.stdout


def leftovers(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(".") and not n.endswith(".lipsync.json"))


@pytest.mark.slow
def test_sigterm_mid_pipeline_leaves_no_partial_output_and_the_rerun_completes(tmp_path, clip, compile_cache):
    jobs = write_table(tmp_path, clip, good=4, bad_line=None)
    out = tmp_path / "out"
    workers = ["--runner=beam", "--beam_args=--direct_num_workers=1 --direct_running_mode=multi_processing"]
    proc = subprocess.Popen(batch_command(jobs, compile_cache, *workers), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    children = []
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:  # stop during the second job
            if os.path.exists(record_path(str(out / "job1.mp4"))) and any(
                    n.startswith((".job2.", ".lipsync_")) for n in os.listdir(out)):
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the pipeline ended before it could be stopped"
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "no worker process (--direct_running_mode=multi_processing)"
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output[-3000:]
    assert "interrupted (SIGTERM)" in output and "rerun the same command" in output
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert leftovers(out) == []  # no temp file, no work folder
    finished = [f"job{n}" for n in range(1, 5) if os.path.exists(out / f"job{n}.mp4")]
    assert "job1" in finished and len(finished) < 4
    for name in finished:  # every output there is complete
        assert probe_video(str(out / f"{name}.mp4")).num_frames == 16

    rerun = run_batch(jobs, compile_cache, "--runner=beam")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert [r["status"] for r in read_results(str(tmp_path / "jobs.results.csv"))] == [
        "skipped" if f"job{n}" in finished else "done" for n in range(1, 5)]
    assert all(probe_video(str(out / f"job{n}.mp4")).num_frames == 16 for n in range(1, 5))
    assert leftovers(out) == []
    shutil.rmtree(out)
