"""The streaming inference engine (lipsync_jax/pipeline/engine.py, job_runner.py, program.py).

- the engine equals the chunk-at-a-time reference (``ChunkGenerator`` on the whole-video face
  track, the pre-engine pipeline) on a looped clip with hidden faces: stand-ins, keys, loop;
- ``chunk_batch`` 1 == 2 == 4 (generated faces within float32 roundoff);
- 8 fake CPU devices == 1 device (subprocess with XLA_FLAGS);
- SIGTERM / Ctrl-C mid-run: exit 143 / 130, one line, nothing left in the output folder;
- the PNG frame store, the compile-cache location.

Tiny config, random weights, 2 DDIM steps with CFG; clips are 540x960 cuts of the demo video.
One module-scoped engine per chunk_batch (the compiled programs are shared).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lipsync_jax.media import read_frames
from tests.helpers.clips import make_clip
from tests.helpers.engine import GUIDANCE, ROUNDOFF, SEED, STEPS
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path


@pytest.fixture(scope="module")
def looped_clip(tmp_path_factory):
    """1.2 s (30 frames, faces hidden in 12..17) under 2.8 s of audio: 70 output frames, 5 chunks,
    ping-pong 0..29, 29..0, 0..9."""
    return make_clip(tmp_path_factory.mktemp("clip") / "hidden.mp4", seconds=1.2, black_frames=(12, 17))


def run_engine(models, clip, output, chunk_batch, devices=None):
    from lipsync_jax.pipeline import JobHooks, LipsyncEngine, RunOptions, Sampling, SyncJob

    engine = LipsyncEngine(models, RunOptions(chunk_batch=chunk_batch, devices=devices))
    chunks = {}
    hooks = JobHooks(on_chunk=lambda index, start, faces: chunks.__setitem__(index, (start, np.array(faces))))
    result = engine.run(SyncJob(clip, asset_path("demo2_audio.wav"), output, seed=SEED, max_seconds=2.8),
                        Sampling(steps=STEPS, guidance=GUIDANCE), hooks=hooks)
    return result, chunks


@pytest.fixture(scope="module")
def batch1_run(tiny_models, looped_clip, tmp_path_factory):
    output = str(tmp_path_factory.mktemp("out1") / "out.mp4")
    result, chunks = run_engine(tiny_models, looped_clip, output, 1)
    return result, chunks, output


@pytest.mark.integration
def test_engine_equals_chunk_at_a_time_reference(tiny_models, looped_clip, batch1_run):
    """Loop + frames without a face + stand-ins + per-chunk keys, against the old pipeline's pieces."""
    from lipsync_jax.audio import load_audio  # noqa: F401 - the plan below uses the pipeline's own audio code
    from lipsync_jax.face import FaceTracker
    from lipsync_jax.pipeline import ChunkGenerator, prepare_audio
    from lipsync_jax.pipeline.faces import track_faces
    from lipsync_jax.pipeline.timeline import chunk_bounds, pad_to_chunk, pingpong_indices

    result, chunks, output = batch1_run
    assert (result.num_frames, result.num_source_frames, result.looped) == (70, 30, True)
    assert result.frames_kept == 12  # source frames 12..17 appear twice in 0..29, 29..0
    assert result.store_bytes > 0 and result.chunk_batches == 5
    assert sorted(os.listdir(os.path.dirname(output))) == ["out.mp4"]  # no temp files, no frame store

    tracker = FaceTracker(tiny_models.resolution, source=looped_clip)
    track = track_faces(read_frames(looped_clip, 25.0), tracker, progress=False)
    tracker.close()
    audio = prepare_audio(tiny_models, asset_path("demo2_audio.wav"), 25.0, 2.8)
    mapping, stand_ins = pingpong_indices(track.num_frames, 70), track.stand_ins()
    reference = ChunkGenerator(tiny_models, num_steps=STEPS, guidance_scale=GUIDANCE, seed=SEED)
    bounds = chunk_bounds(70, tiny_models.num_frames)
    assert sorted(chunks) == list(range(len(bounds)))  # every chunk has a face
    for index, (start, stop) in enumerate(bounds):
        f = tiny_models.num_frames
        faces = track.chunk_faces(pad_to_chunk(mapping[start:stop], f), stand_ins)
        expected = reference(faces, audio.windows(pad_to_chunk(np.arange(start, stop), f)), index)[:stop - start]
        got_start, got = chunks[index]
        assert got_start == start and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=ROUNDOFF, err_msg=f"chunk {index}")

    outputs = [f.astype(np.float32) for f in read_frames(output)]
    sources = [f.astype(np.float32) for f in read_frames(looped_clip, 25.0)]
    diffs = np.array([np.abs(outputs[k] - sources[s]).mean() for k, s in enumerate(mapping)])
    hidden = np.isin(mapping, np.arange(12, 18))
    assert diffs[hidden].max() < 1.0 and diffs[~hidden].min() > diffs[hidden].max()


@pytest.mark.integration
@pytest.mark.parametrize("chunk_batch", [2, pytest.param(4, marks=pytest.mark.heavy)])
def test_chunk_batch_does_not_change_the_frames(chunk_batch, tiny_models, looped_clip, batch1_run, tmp_path):
    _, reference, _ = batch1_run
    result, chunks = run_engine(tiny_models, looped_clip, str(tmp_path / "out.mp4"), chunk_batch)
    assert result.chunk_batches == -(-5 // chunk_batch)  # 5 chunks, the last batch padded
    assert sorted(chunks) == sorted(reference)
    for index, (start, faces) in chunks.items():
        assert start == reference[index][0]
        np.testing.assert_allclose(faces, reference[index][1], atol=ROUNDOFF, err_msg=f"chunk {index}")


EIGHT_DEVICES = r"""
import json, sys
import numpy as np
import jax
from tests.pipeline.test_engine import run_engine
from lipsync_jax.config_utils import load_config
from lipsync_jax.pipeline import build_models
assert jax.device_count() == 8, jax.devices()
models = build_models(load_config({tiny!r}), random_init=True, seed=0)
one, one_chunks = run_engine(models, {clip!r}, {out1!r}, 1, devices=1)
eight, eight_chunks = run_engine(models, {clip!r}, {out8!r}, 1)
diff = max(float(np.abs(eight_chunks[i][1] - one_chunks[i][1]).max()) for i in one_chunks)
print(json.dumps(dict(chunks=sorted(eight_chunks) == sorted(one_chunks), diff=diff, batches=[one.chunk_batches,
                      eight.chunk_batches], kept=[one.frames_kept, eight.frames_kept])))
"""


@pytest.mark.heavy  # the engine compiled for 8 fake devices in a subprocess
def test_eight_fake_devices_equal_one_device(looped_clip, tmp_path):
    script = EIGHT_DEVICES.format(tiny=TINY_CONFIG, clip=looped_clip,
                                  out1=str(tmp_path / "one.mp4"), out8=str(tmp_path / "eight.mp4"))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["chunks"] and report["diff"] < ROUNDOFF, report
    assert report["batches"] == [5, 1]  # one call of 8 chunks (5 real) on 8 devices
    assert report["kept"] == [12, 12]


@pytest.mark.integration
@pytest.mark.parametrize("sig, code, name", [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")])
def test_signal_mid_run_leaves_nothing_behind(sig, code, name, tmp_path, looped_clip):
    """Stop infer.py while its frame store is filling (looped clip) or while it compiles."""
    work = tmp_path / "work"
    work.mkdir()
    output = work / "out.mp4"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # A shell's background job (`pytest ... &`) inherits SIGINT ignored, and Python then installs
    # no Ctrl-C handler: exec infer.py with SIGINT back at its default, as in a terminal.
    restore_sigint = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                      "os.execv(sys.executable, [sys.executable] + sys.argv[1:])")
    cmd = [sys.executable, "-c", restore_sigint, os.path.join(ROOT, "infer.py"), f"--config={TINY_CONFIG}",
           "--random_init", "--steps=2", "--noprogress", f"--video={looped_clip}",
           f"--audio={asset_path('demo2_audio.wav')}", f"--output={output}",
           "--max_seconds=2.8", f"--compile_cache={tmp_path / 'cache'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 600
    stored = []
    while time.time() < deadline and proc.poll() is None and not stored:
        stored = [os.path.join(d, f) for d, _, files in os.walk(work) for f in files if f.endswith(".png")]
        time.sleep(0.05)
    assert stored, "the run never started its frame store"
    proc.send_signal(sig)
    signalled = time.time()
    time.sleep(0.02)
    if proc.poll() is None:  # a second one right away (impatient Ctrl-C, a supervisor) must not cut the clean-up short
        proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert time.time() - signalled < 5.0  # the in-flight device work is abandoned, not awaited
    assert proc.returncode == code, (proc.returncode, stderr[-2000:])
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(f"interrupted ({name})") and "no output" in last, last
    assert os.listdir(work) == []  # no output, no hidden work folder, no partial video, no PNG store


def test_frame_store_is_lossless_and_removed(tmp_path):
    from lipsync_jax.face import AlignedFace
    from lipsync_jax.pipeline.store import FrameStore, SourceRecord

    rng = np.random.default_rng(0)
    store = FrameStore(str(tmp_path), threads=2, max_pending=1)
    frames = [rng.integers(0, 256, (20, 30, 3), dtype=np.uint8) for _ in range(3)]
    face = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    aligned = AlignedFace(face=face, affine=np.eye(2, 3, dtype=np.float32), box=(0, 0, 7, 9),
                          landmarks=np.zeros((3, 2)))
    for i, frame in enumerate(frames):
        store.put(SourceRecord(i, frame, aligned if i != 1 else None))
    np.testing.assert_array_equal(store.has_face(), [True, False, True])
    for i in (2, 0, 1):
        record = store.get(i)
        np.testing.assert_array_equal(record.frame, frames[i])
        assert (record.aligned is None) == (i == 1)
    np.testing.assert_array_equal(store.get(2).aligned.face, face)
    assert store.get(0).aligned.box == (0, 0, 7, 9) and store.bytes_written > 0
    with pytest.raises(IndexError):
        store.get(3)
    store.close()
    assert os.listdir(tmp_path) == []


def test_compile_cache_location(monkeypatch, tmp_path):
    from lipsync_jax.pipeline import default_compile_cache_dir

    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_compile_cache_dir() == str(tmp_path / "xdg" / "lipsync_jax" / "xla")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert default_compile_cache_dir() == str(tmp_path / "env")


@pytest.mark.heavy  # every bench of the GPU suite on the tiny config
def test_gpu_suite_dry_run(tmp_path):
    """bench/gpu_suite.sh --dry_run: the GPU suite's code path with the tiny config on CPU."""
    out = tmp_path / "suite"
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "gpu_suite.sh"), "--dry_run", "--out", str(out)],
                          cwd=ROOT, env=dict(os.environ, PYTHON=sys.executable), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    rows = [json.loads(line) for line in (tmp_path / "suite.jsonl").read_text().splitlines()]
    assert [r["chunk_batch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["frames"] == 16 and row["fps"] > 0 and 0 < row["device_busy"] <= 1.5
        assert row["flops_per_call"] and row["flops_per_call"] > 1e9  # the tiny program: tens of GFLOP
    assert rows[0]["ttff_cold_s"] > 0 and rows[0]["ttff_warm_s"] > 0
    assert "xla" in rows[0]["attention"]["spatial_256_d40"]
    table = (tmp_path / "suite.md").read_text()
    assert "| configs/unet/tiny.py |" in table and "attention check" in table
