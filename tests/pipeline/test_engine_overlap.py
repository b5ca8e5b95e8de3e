"""Sampler options through the inference engine: overlapping windows, DeepCache, DPM-Solver++
(lipsync_jax/pipeline/job_runner.py, dispatch.py, program.py; infer.py flags).

- overlap K = 2: every shared frame is identical whichever window wrote it (full program outputs:
  window j's first K faces == window j-1's last K faces), both across calls (chunk_batch 1: every
  link goes through the device-side tail) and inside a call (chunk_batch 2);
- overlap K = 2: chunk_batch 1 == 2 (written frames, float32 roundoff);
- overlap 0 keeps the plain program (same executable, no tail arguments);
- DeepCache interval 1 == off through the engine, bit for bit;
- infer.py: dpmsolver++ + DeepCache 3 + overlap 2 on the demo clip (frame count, duration);
  bad option values fail with one line before any heavy work.

Tiny config, random weights, 2 steps with CFG, a 540x960 cut of the demo video (faces hidden in
frames 12..17, looped ping-pong under 1.6 s of audio: 40 output frames, 3 windows at K = 2).
Each engine compiles its chunk program once, so the engine runs are marked slow (``-m slow``);
the option checks stay in the unit and integration tiers (infer.py one-line errors, batch CSV
columns, overlap 0 = the plain program). Overlap 0 was also checked bit
for bit against the engine before this change (the same job's generated faces and output file:
identical; bench/RESULTS.md).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_jax.media import probe_audio_duration, probe_video
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

STEPS, GUIDANCE, SEED, SECONDS, K = 2, 1.5, 11, 1.6, 2
ROUNDOFF = 2e-4  # as tests/pipeline/test_engine.py: UNet batch 1 vs 2, float32


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "hidden.mp4", seconds=1.2, black_frames=(12, 17))


class RecordingEngine:
    """Runs jobs on one engine and records every program call's full outputs (all window frames)."""

    def __init__(self, models, chunk_batch, sampler_options=None):
        from lipsync_jax.pipeline import LipsyncEngine, RunOptions

        self.engine = LipsyncEngine(models, RunOptions(chunk_batch=chunk_batch))
        self.sampler_options = dict(sampler_options or {})
        self.calls: list[tuple[np.ndarray, object]] = []
        self.plain_program = plain = self.engine.program

        def program(*args):
            inner = plain(*args)
            calls = self.calls

            class Recorder:
                def __getattr__(self, name):
                    return getattr(inner, name)

                def __call__(self, *call_args, **kwargs):
                    out = inner(*call_args, **kwargs)
                    calls.append((np.array(call_args[4]), out))
                    return out
            return Recorder()
        self.engine.program = program

    def run(self, clip, output, overlap=0, seconds=SECONDS):
        from lipsync_jax.pipeline import JobHooks, Sampling, SyncJob

        chunks = {}
        hooks = JobHooks(on_chunk=lambda index, start, faces: chunks.__setitem__(index, (start, np.array(faces))))
        sampling = Sampling(steps=STEPS, guidance=GUIDANCE, overlap=overlap, **self.sampler_options)
        self.calls.clear()
        job = SyncJob(clip, asset_path("demo2_audio.wav"), output, seed=SEED, max_seconds=seconds)
        return self.engine.run(job, sampling, hooks=hooks), chunks

    def window_faces(self) -> dict[int, np.ndarray]:
        """Window index -> its 16 generated faces (first occurrence: batch padding repeats the last)."""
        faces = {}
        for indices, out in self.calls:
            batch = np.asarray(out[0] if isinstance(out, tuple) else out)
            for b, index in enumerate(indices):
                faces.setdefault(int(index), batch[b])
        return faces


class OverlapRuns(dict):
    """chunk_batch -> (result, written chunks, window faces, RecordingEngine), run on first use."""

    def __init__(self, models, clip, folder):
        super().__init__()
        self.models, self.clip, self.folder = models, clip, folder

    def __missing__(self, chunk_batch):
        engine = RecordingEngine(self.models, chunk_batch)
        result, chunks = engine.run(self.clip, str(self.folder / f"out{chunk_batch}.mp4"), overlap=K)
        self[chunk_batch] = (result, chunks, engine.window_faces(), engine)
        return self[chunk_batch]


@pytest.fixture(scope="module")
def overlap_runs(tiny_models, clip, tmp_path_factory):
    return OverlapRuns(tiny_models, clip, tmp_path_factory.mktemp("overlap"))


@pytest.mark.slow  # one chunk-program compilation per chunk_batch
@pytest.mark.parametrize("chunk_batch", [1, 2])
def test_shared_frames_are_identical_whichever_window_wrote_them(overlap_runs, chunk_batch):
    result, chunks, windows, _ = overlap_runs[chunk_batch]
    assert (result.num_frames, result.looped, result.chunk_batches) == (40, True, 3 if chunk_batch == 1 else 2)
    assert sorted(windows) == [0, 1, 2]
    for j in (1, 2):  # chunk_batch 1: both links through the tail; 2: 0->1 inside the call, 1->2 across
        np.testing.assert_array_equal(windows[j][:K], windows[j - 1][-K:], err_msg=f"window {j}")
        assert np.abs(windows[j][K:K + 2] - windows[j - 1][-K - 2:-K]).max() > 0  # not trivially equal
    # written frames: window 0 all 16, the others their new frames from frame K on, tiling 0..40
    written = [(start, len(faces)) for start, faces in (chunks[i] for i in sorted(chunks))]
    assert written == [(0, 16), (16, 14), (30, 10)]
    for j in (1, 2):
        np.testing.assert_array_equal(chunks[j][1], windows[j][K:K + len(chunks[j][1])])


@pytest.mark.slow
def test_overlap_chunk_batch_1_equals_2(overlap_runs):
    one, two = overlap_runs[1][1], overlap_runs[2][1]
    assert sorted(one) == sorted(two)
    for index in one:
        assert one[index][0] == two[index][0]
        np.testing.assert_allclose(two[index][1], one[index][1], atol=ROUNDOFF, err_msg=f"window {index}")
    frames = [probe_video(overlap_runs[b][0].output_path).num_frames for b in (1, 2)]
    assert frames == [40, 40]


@pytest.mark.integration
def test_overlap_zero_is_the_plain_program(tiny_models):
    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling

    program = LipsyncEngine(tiny_models, RunOptions(chunk_batch=1)).program  # nothing compiled here
    plain = program(Sampling(steps=STEPS, guidance=GUIDANCE))
    assert program(Sampling(steps=STEPS, guidance=GUIDANCE, overlap=0)) is plain and plain.overlap == 0
    windows = program(Sampling(steps=STEPS, guidance=GUIDANCE, overlap=K))
    assert windows is not plain and windows.overlap == K
    assert not hasattr(plain, "tail_shape") and windows.tail_shape[:2] == (STEPS + 1, K)


@pytest.mark.slow  # two compilations of the chunk program
def test_deepcache_interval_1_equals_off_through_the_engine(tiny_models, clip, tmp_path):
    runs = []
    for options in ({}, {"deepcache_interval": 1}):
        engine = RecordingEngine(tiny_models, 1, options)
        _, chunks = engine.run(clip, str(tmp_path / f"out{len(options)}.mp4"), seconds=0.64)
        runs.append(chunks)
    assert sorted(runs[0]) == sorted(runs[1]) == [0]
    np.testing.assert_array_equal(runs[1][0][1], runs[0][0][1])


def run_infer(args, cwd, timeout=900):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cwd / "jax_cache"))
    cmd = [sys.executable, os.path.join(ROOT, "infer.py"), f"--config={TINY_CONFIG}", "--random_init", "--noprogress",
           *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, needle", [
    (["--overlap=16"], "overlap 16: must be a whole number in 0..15"),
    (["--scheduler=euler"], "scheduler 'euler': choose one of ddim, dpmsolver++"),
    (["--deepcache_interval=-1"], "deepcache_interval -1: must be a whole number >= 0"),
    (["--overlap=2", "--faces=all"], "overlap 2 lip-syncs one face"),
])
@pytest.mark.integration
def test_bad_sampler_flags_fail_with_one_line(args, needle, tmp_path):
    proc = run_infer(["--video", asset_path("demo1_video.mp4"), "--audio", asset_path("demo1_audio.wav"),
                      "--output", str(tmp_path / "out.mp4"), *args], tmp_path, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and needle in last and "Traceback" not in proc.stderr, last
    assert not os.path.exists(tmp_path / "out.mp4")


@pytest.mark.slow
def test_infer_all_sampler_options_together_on_the_demo_clip(tmp_path):
    """dpmsolver++ + DeepCache 3 + overlap 2 through infer.py: 3 steps (full, shallow, shallow)."""
    output = tmp_path / "synced.mp4"
    proc = run_infer(["--video", asset_path("demo1_video.mp4"), "--audio", asset_path("demo1_audio.wav"),
                      "--output", str(output), "--steps=3", "--scheduler=dpmsolver++", "--deepcache_interval=3",
                      "--overlap=2", "--max_seconds=1.2", "--preset=ultrafast"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = probe_video(str(output))
    assert info.num_frames == 30 and info.fps == 25.0, (info.num_frames, info.fps)  # 1.2 s at 25 fps
    assert abs(info.duration - 1.2) < 0.05, info.duration
    assert abs(probe_audio_duration(str(output)) - 1.2) < 0.06
    assert "wrote" in proc.stdout and "30 frames" in proc.stdout, proc.stdout


def test_batch_csv_sampler_columns(tmp_path):
    from lipsync_jax.pipeline import JobDefaults
    from lipsync_jax.serving.batch import BatchFileError, parse_rows, read_jobs

    jobs = tmp_path / "jobs.csv"
    jobs.write_text("video,audio,output,scheduler,deepcache_interval,overlap\n"
                    "a.mp4,a.wav,o1.mp4,DPMSolver++,3,2\nb.mp4,b.wav,o2.mp4,,,\n")
    requests = parse_rows(str(jobs), read_jobs(str(jobs)), JobDefaults())
    assert [(r.sampling.solver, r.sampling.deepcache_interval, r.sampling.overlap) for r in requests] == [
        ("dpmsolver++", 3, 2), ("ddim", 0, 0)]
    for column, value, needle in [("overlap", "16", "overlap 16: must be a whole number in 0..15"),
                                  ("scheduler", "euler", "scheduler 'euler': choose one of ddim, dpmsolver++"),
                                  ("deepcache_interval", "x", "deepcache_interval 'x': must be a whole number")]:
        jobs.write_text(f"video,audio,output,{column}\na.mp4,a.wav,o1.mp4,{value}\n")
        with pytest.raises(BatchFileError, match="line 2: ") as error:
            parse_rows(str(jobs), read_jobs(str(jobs)), JobDefaults())
        assert needle in str(error.value) and str(jobs) in str(error.value)
