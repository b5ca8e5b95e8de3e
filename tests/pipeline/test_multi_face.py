"""Multi-person videos through the inference engine (pipeline/face_choice.py).

On the two-person clip built from the demos (demo1 | demo2 side by side, the session fixture
``demo_clips`` of conftest.py): the default lip-syncs exactly one person in every frame (where the
output differs from the input: left half vs right half), ``face="left"/"right"`` pick one side
consistently, ``face="all"`` modifies both with both faces in one device-program call,
``face_audio`` gives each person their own audio; ``infer.py --list_faces`` prints two tracks.
A one-person clip gives exactly the output of the engine without the track pre-pass.

Tiny config, random weights, 2 DDIM steps, 16 output frames (one chunk per face); one engine
(chunk_batch 2) shared by every test of the module, runs cached per setting.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_jax.media import read_frames
from tests.helpers.paths import ROOT, TINY_CONFIG, TWO_PEOPLE_HALF_WIDTH, asset_path

pytestmark = pytest.mark.integration

INFER = os.path.join(ROOT, "infer.py")
STEPS, SEED = 2, 5
SECONDS = 0.64  # 16 frames at 25 fps: one chunk per face
ROUNDOFF = 2e-4  # generated faces, float32, different batch compositions
CHANGED = 40  # a pixel "changed" when a channel moved more than this (codec noise stays under ~20 at crf 10)
MODIFIED, UNTOUCHED = 200, 10  # changed pixels in a half: a lip-synced face / nothing done there


@pytest.fixture(scope="module")
def engine(tiny_models):
    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling

    engine = LipsyncEngine(tiny_models, RunOptions(chunk_batch=2))
    engine.compile(Sampling(steps=STEPS))  # the one program every test's jobs share
    return engine


@pytest.fixture(scope="module")
def run_job(engine, demo_clips, tmp_path_factory):
    """run_job(clip, **job options) -> (result, [(chunk index, faces)] in call order, output frames,
    input frames); cached per setting."""
    from lipsync_jax.pipeline import JobHooks, Sampling, SyncJob

    folder = tmp_path_factory.mktemp("multi_face")
    cache = {}

    def run(clip="two", **options):
        key = (clip, repr(sorted(options.items())))
        if key not in cache:
            chunks = []
            output = str(folder / f"out_{len(cache)}.mp4")
            job = SyncJob(demo_clips[clip], asset_path("demo2_audio.wav"), output, seed=SEED, max_seconds=SECONDS,
                          crf=10, **options)
            hooks = JobHooks(on_chunk=lambda index, start, faces: chunks.append((index, np.array(faces))))
            result = engine.run(job, Sampling(steps=STEPS), hooks=hooks)
            frames = np.stack(list(read_frames(output, 25.0)))
            source = np.stack(list(read_frames(demo_clips[clip], 25.0, max_frames=len(frames))))
            cache[key] = result, chunks, frames, source
        return cache[key]
    return run


def changed_per_half(frames, source):
    """(n, 2) changed-pixel counts per frame in the left and right halves."""
    changed = np.abs(frames.astype(np.int16) - source.astype(np.int16)).max(-1) > CHANGED
    return np.stack([changed[:, :, :TWO_PEOPLE_HALF_WIDTH].sum((1, 2)),
                     changed[:, :, TWO_PEOPLE_HALF_WIDTH:].sum((1, 2))], axis=1)


def modified_side(run):
    """"left" / "right": the one half modified in EVERY frame (fails if both, neither, or it switches)."""
    result, _, frames, source = run
    counts = changed_per_half(frames, source)
    assert len(frames) == 16 and result.frames_kept == 0
    left = (counts[:, 0] > MODIFIED) & (counts[:, 1] < UNTOUCHED)
    right = (counts[:, 1] > MODIFIED) & (counts[:, 0] < UNTOUCHED)
    assert left.all() or right.all(), counts
    return "left" if left.all() else "right"


def test_default_modifies_exactly_one_person_the_largest(run_job, demo_clips):
    from lipsync_jax.face import find_face_tracks

    default = run_job()
    tracks = find_face_tracks(demo_clips["two"], max_frames=16, progress=False).tracks
    assert len(tracks) == 2
    largest = max(tracks, key=lambda t: t.mean_area)
    expected = "left" if largest.mean_centre_x < TWO_PEOPLE_HALF_WIDTH else "right"
    assert modified_side(default) == expected
    assert default[0].face_tracks == (largest.track_id,)


@pytest.mark.parametrize("side", ["left", "right"])
def test_face_left_right_pick_that_person_in_every_frame(run_job, side):
    run = run_job(face=side)
    assert modified_side(run) == side
    other = "right" if side == "left" else "left"
    assert modified_side(run_job(face=other)) == other
    # a track id names the same person as its side
    assert np.array_equal(run_job(face=str(run[0].face_tracks[0]))[2], run[2])


def test_all_faces_in_one_program_call_each_as_alone(run_job):
    both = run_job(face="all")
    result, chunks, frames, source = both
    counts = changed_per_half(frames, source)
    assert (counts > MODIFIED).all(), counts
    assert result.face_tracks == (0, 1) and result.frames_kept == 0
    assert result.chunk_batches == 1  # both faces' chunks stacked on the batch axis of one call
    assert [index for index, _ in chunks] == [0, 0]  # one chunk, lane by lane
    for lane, track_id in enumerate(result.face_tracks):
        alone = run_job(face=str(track_id))[1]
        np.testing.assert_allclose(chunks[lane][1], alone[0][1], atol=ROUNDOFF)
    # pasted back in order, each with its own mask: each half equals that person's run alone
    left, right = run_job(face="left")[2], run_job(face="right")[2]
    half = TWO_PEOPLE_HALF_WIDTH
    for mine, alone in ((frames[:, :, :half], left[:, :, :half]), (frames[:, :, half:], right[:, :, half:])):
        assert np.abs(mine.astype(np.int16) - alone.astype(np.int16)).mean() < 1.0


def test_face_audio_gives_each_person_their_own_audio(run_job):
    dubbed = run_job(face_audio={"left": asset_path("demo1_audio.wav"), "right": asset_path("demo2_audio.wav")})
    result, chunks, frames, source = dubbed
    assert (changed_per_half(frames, source) > MODIFIED).all()
    assert result.chunk_batches == 1 and len(chunks) == 2
    left_id, right_id = run_job(face="left")[0].face_tracks[0], run_job(face="right")[0].face_tracks[0]
    assert result.face_tracks == (left_id, right_id)  # lanes in the order given
    # the right person speaks the soundtrack (demo2) as when alone; the left one their own audio
    np.testing.assert_allclose(chunks[1][1], run_job(face="right")[1][0][1], atol=ROUNDOFF)
    assert np.abs(chunks[0][1] - run_job(face="left")[1][0][1]).max() > 100 * ROUNDOFF


def test_one_person_clip_is_exactly_the_engine_without_tracks(run_job):
    tracked = run_job("one")  # default: the pre-pass finds one track, the single-face FaceTracker follows it
    plain = run_job("one", face=None)  # no pre-pass at all (the engine before face tracks)
    assert tracked[0].face_tracks == (0,) and plain[0].face_tracks == ()
    assert len(tracked[1]) == len(plain[1]) == 1
    np.testing.assert_array_equal(tracked[1][0][1], plain[1][0][1])
    np.testing.assert_array_equal(tracked[2], plain[2])
    assert np.array_equal(run_job("one", face="all")[2], plain[2])  # one face: "all" is that face


def test_bad_face_choices_fail_with_one_clear_error(engine, demo_clips, tmp_path):
    from lipsync_jax.face import FaceSelectionError
    from lipsync_jax.pipeline import InputError, JobHooks, OptionError, Sampling, SyncJob

    def job(**options):
        return SyncJob(demo_clips["two"], asset_path("demo2_audio.wav"), str(tmp_path / "o.mp4"), max_seconds=SECONDS,
                       **options)

    sampling = Sampling(steps=STEPS)
    with pytest.raises(InputError, match="missing.wav: no such file"):  # before any heavy work
        engine.run(job(face_audio={"0": str(tmp_path / "missing.wav")}), sampling)
    with pytest.raises(OptionError, match="each entry is ID=path"):
        job(face_audio="0:a.wav")
    with pytest.raises(FaceSelectionError, match="no face track with id 7; the video has ids 0, 1"):
        engine.run(job(face="7"), sampling)
    with pytest.raises(FaceSelectionError, match="already chosen"):
        engine.run(job(face_audio={"left": asset_path("demo1_audio.wav"), "0": asset_path("demo2_audio.wav")}),
                   sampling)

    class SingleFacePass:  # e.g. the service's avatar-cache replay: one face per frame
        closed = False

        def close(self):
            SingleFacePass.closed = True

    hooks = JobHooks(face_pass=lambda resolution, backend, source: SingleFacePass())
    with pytest.raises(ValueError, match="several faces .* need the engine's own face pass"):
        engine.run(job(face="all"), sampling, hooks=hooks)
    assert SingleFacePass.closed
    assert not os.listdir(tmp_path)  # no output, no temp folder left


def test_frame_store_keeps_every_lane(tmp_path):
    from lipsync_jax.face import AlignedFace
    from lipsync_jax.pipeline.store import FrameStore, SourceRecord

    rng = np.random.default_rng(0)

    def aligned(seed):
        return AlignedFace(face=np.full((8, 8, 3), seed, np.uint8), affine=np.eye(2, 3) * seed,
                           box=(0, 0, 8, 8), landmarks=np.zeros((3, 2)))

    store = FrameStore(str(tmp_path))
    frame = rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)
    store.put(SourceRecord(0, frame, (aligned(1), None, aligned(3))))
    store.put(SourceRecord(1, frame, (None, None, aligned(4))))
    back = store.get(0)
    assert back.aligned[1] is None and back.aligned[0].face[0, 0, 0] == 1 and back.aligned[2].face[0, 0, 0] == 3
    np.testing.assert_array_equal(back.frame, frame)
    assert store.get(1).aligned[2].face[0, 0, 0] == 4 and store.get(1).aligned[:2] == (None, None)
    assert [store.has_face_at(0, lane) for lane in range(3)] == [True, False, True]
    assert store.has_face(1).tolist() == [False, False] and store.has_face(2).tolist() == [True, True]
    single = FrameStore(str(tmp_path))  # one face per frame: as before
    single.put(SourceRecord(0, frame, aligned(5)))
    assert single.get(0).aligned.face[0, 0, 0] == 5 and single.has_face().tolist() == [True]
    single.close()
    store.close()
    assert not os.listdir(tmp_path)


def _infer(args, cwd):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, INFER, f"--config={TINY_CONFIG}", "--random_init", "--noprogress", *args],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_infer_list_faces_prints_two_tracks_and_generates_nothing(demo_clips, tmp_path):
    proc = _infer(["--list_faces", f"--video={demo_clips['two']}", f"--output={tmp_path / 'out.mp4'}",
                   "--max_seconds=0.64"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("face ")]
    assert len(lines) == 2 and lines[0].startswith("face 0: frames 0-15") and lines[1].startswith("face 1: frames")
    for track_id, line in enumerate(lines):
        thumb = str(tmp_path / "two_people_faces" / f"face_{track_id}.jpg")
        assert f"thumbnail {thumb}" in line and os.path.exists(thumb) and "mean box (" in line
    assert "--face largest|left|right|ID" in proc.stdout and not (tmp_path / "out.mp4").exists()
    mixed = _infer([f"--video={demo_clips['two']}", f"--audio={asset_path('demo2_audio.wav')}",
                    f"--output={tmp_path / 'out.mp4'}", "--face=left", "--faces=all"], tmp_path)
    assert mixed.returncode == 1
    assert (mixed.stderr.strip().splitlines()[-1]
            == "error: use one of --face, --faces, --face_audio (got --face, --faces)")


@pytest.mark.slow
def test_infer_face_audio_dubs_two_people_over_a_ping_pong_loop(demo_clips, tmp_path):
    """The CLI end to end: two audios, the 2 s clip looped ping-pong under 2.4 s of soundtrack
    (the frame store keeps both faces' alignments), both halves modified in every frame."""
    output = tmp_path / "dubbed.mp4"
    proc = _infer([f"--video={demo_clips['two']}", f"--audio={asset_path('demo2_audio.wav')}", f"--output={output}",
                   f"--face_audio=left={asset_path('demo1_audio.wav')},right={asset_path('demo2_audio.wav')}",
                   "--steps=2", "--max_seconds=2.4", "--crf=10", "--nocompile_cache"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "face tracks 0, 1" in proc.stdout and "ping-pong (50 source frames)" in proc.stdout
    frames = np.stack(list(read_frames(str(output), 25.0)))
    source = np.stack(list(read_frames(demo_clips["two"], 25.0)))
    source = np.concatenate([source, source[::-1]])[:len(frames)]
    assert len(frames) == 60
    assert (changed_per_half(frames, source) > MODIFIED).all()
