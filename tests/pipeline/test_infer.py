"""End-to-end inference: infer.py on the demo media (tiny config, random weights) and the
pipeline's behaviour on edited clips (hidden faces, no face, wrong inputs, 30 fps).

The infer.py runs use ``--steps 2`` (the sampler's cost is linear in the steps; 20 are covered
by the sampler tests) and a JAX compilation cache shared by the test session's subprocesses.
Clips are made with ffmpeg in tmp_path from the real demo video.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_jax.audio import load_audio
from lipsync_jax.media import ffmpeg_exe, probe_video, read_frames
from lipsync_jax.pipeline import InputError, LipsyncEngine, Sampling, SyncJob, check_inputs
from lipsync_jax.pipeline.faces import nearest_face_indices
from lipsync_jax.pipeline.frames import FrameSpill
from lipsync_jax.pipeline.timeline import chunk_bounds, output_frame_count, pad_to_chunk, pingpong_indices
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

INFER = os.path.join(ROOT, "infer.py")
TOP = 0.15  # the top 15% of the frame is far from the face in the demo clips
CODEC_TOLERANCE = 3.0  # mean absolute difference (0..255) allowed for re-encoding


# ---------------------------------------------------------------- helpers

@pytest.fixture(scope="session")
def jax_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("jax_cache"))


def run_infer(args, jax_cache, cwd):
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=jax_cache, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, INFER, f"--config={TINY_CONFIG}", "--random_init", "--steps=2", "--noprogress", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def top_region(frame, step=4):
    rows = int(frame.shape[0] * TOP)
    return frame[:rows:step, ::step].astype(np.float32)


def check_output(output, video, audio_seconds, expected_sources):
    """Size, frame count, AAC stream length, and the top of every frame equal to its source frame."""
    source_info, info = probe_video(video), probe_video(output)
    assert (info.width, info.height) == (source_info.width, source_info.height)
    assert info.fps == 25.0
    assert abs(info.num_frames - audio_seconds * 25) <= 1, (info.num_frames, audio_seconds)
    assert info.audio_codec == "aac"
    out_audio = load_audio(output)
    assert abs(len(out_audio) / 16000 - audio_seconds) < 0.06, (len(out_audio) / 16000, audio_seconds)
    sources = [top_region(f) for f in read_frames(video, 25.0, max_frames=int(expected_sources.max()) + 1)]
    errors = [np.abs(top_region(frame) - sources[expected_sources[k]]).mean()
              for k, frame in enumerate(read_frames(output))]
    assert len(errors) == info.num_frames
    assert max(errors) < CODEC_TOLERANCE, (int(np.argmax(errors)), max(errors))
    return info


def assert_clean_error(proc, *needles):
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for needle in needles:
        assert needle in last, (needle, last)


# ---------------------------------------------------------------- infer.py on the demo media

@pytest.mark.integration
def test_demo_video_with_equal_length_audio(tmp_path, jax_cache):
    video, audio = asset_path("demo1_video.mp4"), asset_path("demo1_audio.wav")
    output = str(tmp_path / "synced.mp4")
    proc = run_infer([f"--video={video}", f"--audio={audio}", f"--output={output}"], jax_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "meaningless" in proc.stderr  # the --random_init warning
    audio_seconds = len(load_audio(audio)) / 16000  # 9.6 s: the video (10 s) is cut
    check_output(output, video, audio_seconds, pingpong_indices(250, round(audio_seconds * 25)))
    assert sorted(os.listdir(tmp_path)) == ["synced.mp4"]  # no temp files left


@pytest.mark.heavy  # over CI's time budget
@pytest.mark.slow
def test_demo_video_with_longer_audio_loops(tmp_path, jax_cache):
    video, audio = asset_path("demo1_video.mp4"), asset_path("demo2_audio.wav")
    output = str(tmp_path / "looped.mp4")
    proc = run_infer([f"--video={video}", f"--audio={audio}", f"--output={output}"], jax_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ping-pong" in proc.stdout
    audio_seconds = len(load_audio(audio)) / 16000  # 19.84 s > 10 s of video
    check_output(output, video, audio_seconds, pingpong_indices(250, round(audio_seconds * 25)))


@pytest.mark.integration
def test_avatar_cache_path_says_random_weights_and_reports_like_the_plain_path(tmp_path, jax_cache):
    video = make_clip(tmp_path / "clip.mp4", seconds=0.8, size="270:480")
    args = [f"--video={video}", f"--audio={asset_path('demo1_audio.wav')}", "--max_seconds=0.6",
            f"--avatar_cache={tmp_path / 'avatars'}"]
    first = run_infer([*args, f"--output={tmp_path / 'a.mp4'}"], jax_cache, tmp_path)
    second = run_infer([*args, f"--output={tmp_path / 'b.mp4'}"], jax_cache, tmp_path)
    for proc, avatar in ((first, "stored"), (second, "hit")):
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "random weights" in proc.stderr and "meaningless" in proc.stderr
        assert f"avatar cache {avatar}" in proc.stdout and "time to first frame" in proc.stdout, proc.stdout


@pytest.mark.integration
def test_short_clip_with_longer_audio_loops_pingpong(tmp_path, jax_cache):
    """The fast variant of the loop test: a 1.2 s downscaled demo clip with 2.8 s of audio."""
    video = make_clip(tmp_path / "clip.mp4", seconds=1.2)
    output = str(tmp_path / "looped.mp4")
    proc = run_infer([f"--video={video}", f"--audio={asset_path('demo2_audio.wav')}", f"--output={output}",
                      "--max_seconds=2.8"], jax_cache, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ping-pong (30 source frames)" in proc.stdout
    check_output(output, video, 2.8, pingpong_indices(30, 70))  # 0..29, 29..0, 0..9


# ---------------------------------------------------------------- clear errors from infer.py

@pytest.fixture(scope="module")
def video_without_audio(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clips") / "silent.mp4", seconds=0.5, size="270:480")


@pytest.mark.integration
@pytest.mark.parametrize("case", ["audio_as_video", "silent_video_as_audio", "missing_video", "corrupt_audio"])
def test_bad_inputs_fail_with_one_line(case, tmp_path, jax_cache, video_without_audio):
    audio, video = asset_path("demo1_audio.wav"), video_without_audio
    corrupt = tmp_path / "broken.wav"
    corrupt.write_bytes(b"RIFF not really a wave file" * 10)
    args, needles = {
        "audio_as_video": ([audio, audio], [audio, "no video stream", "--audio"]),
        "silent_video_as_audio": ([video, video], [video, "no audio stream"]),
        "missing_video": ([str(tmp_path / "nope.mp4"), audio], ["nope.mp4", "no such file"]),
        "corrupt_audio": ([video, str(corrupt)], ["broken.wav"]),
    }[case]
    output = tmp_path / "out.mp4"
    proc = run_infer([f"--video={args[0]}", f"--audio={args[1]}", f"--output={output}"], jax_cache, tmp_path)
    assert_clean_error(proc, *needles)
    assert not output.exists()


@pytest.mark.integration
def test_video_without_any_face_fails_cleanly(tmp_path, jax_cache):
    video = str(tmp_path / "testsrc.mp4")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                    "-t", "1", "-pix_fmt", "yuv420p", video], check=True)
    output = tmp_path / "out.mp4"
    proc = run_infer([f"--video={video}", f"--audio={asset_path('demo1_audio.wav')}", f"--output={output}"],
                     jax_cache, tmp_path)
    assert_clean_error(proc, "testsrc.mp4", "no face")
    assert sorted(os.listdir(tmp_path)) == ["testsrc.mp4"]  # no output, no temp files


# ---------------------------------------------------------------- the pipeline in-process

@pytest.fixture(scope="module")
def tiny_engine(tiny_models):
    return LipsyncEngine(tiny_models)


@pytest.mark.integration
def test_frames_with_hidden_face_are_kept(tmp_path, tiny_engine):
    video = make_clip(tmp_path / "hidden.mp4", seconds=1.6, black_frames=(12, 17))
    output = str(tmp_path / "out.mp4")
    result = tiny_engine.run(SyncJob(video, asset_path("demo1_audio.wav"), output, max_seconds=1.6), Sampling(steps=2))
    assert (result.num_frames, result.frames_kept, result.looped) == (40, 6, False)
    inputs = [f.astype(np.float32) for f in read_frames(video, 25.0)]
    outputs = [f.astype(np.float32) for f in read_frames(output)]
    diffs = np.array([np.abs(o - i).mean() for o, i in zip(outputs, inputs)])
    assert len(outputs) == 40
    hidden = np.arange(12, 18)
    assert diffs[hidden].max() < 1.0  # black frames written unchanged
    shown = np.setdiff1d(np.arange(40), hidden)
    assert diffs[shown].min() > diffs[hidden].max()  # a (random) mouth was pasted into every face frame
    assert max(np.abs(top_region(o) - top_region(i)).mean() for o, i in zip(outputs, inputs)) < CODEC_TOLERANCE


@pytest.mark.integration
def test_30_fps_input_gives_25_fps_output(tmp_path, tiny_engine):
    video = make_clip(tmp_path / "clip30.mp4", seconds=1.2, fps=30)
    assert probe_video(video).fps == 30.0
    output = str(tmp_path / "out.mp4")
    result = tiny_engine.run(SyncJob(video, asset_path("demo1_audio.wav"), output, max_seconds=1.0), Sampling(steps=2))
    assert result.num_frames == 25 and not result.looped
    info = probe_video(output)
    assert info.fps == 25.0 and info.num_frames == 25
    resampled = [top_region(f) for f in read_frames(video, 25.0)]
    errors = [np.abs(top_region(f) - resampled[k]).mean() for k, f in enumerate(read_frames(output))]
    assert max(errors) < CODEC_TOLERANCE


@pytest.mark.integration
def test_chunk_generator_pastes_kept_pixels_and_repeats_noise(tiny_models):
    import jax.numpy as jnp

    from lipsync_jax.face import load_fixed_mask
    from lipsync_jax.pipeline import ChunkGenerator

    gen = ChunkGenerator(tiny_models, num_steps=1, guidance_scale=1.0, seed=3)
    f, res = tiny_models.num_frames, tiny_models.resolution
    mask = load_fixed_mask(res)
    np.testing.assert_array_equal(np.asarray(gen.latent_mask[0, 0]), mask[::8, ::8, :1])  # nearest downsample
    noise = np.asarray(gen.init_latents)
    np.testing.assert_array_equal(noise[:, 1:], np.repeat(noise[:, :1], f - 1, axis=1))  # one frame repeated
    faces = np.random.default_rng(0).integers(0, 256, (f, res, res, 3), dtype=np.uint8)
    pixel_values, masked, ref = gen.encode(faces, 0)
    out = np.asarray(gen.decode(masked, pixel_values))  # any latents: the kept pixels come from the input
    keep = mask[..., 0] == 1.0
    np.testing.assert_allclose(out[:, keep], faces[:, keep].astype(np.float32) / 127.5 - 1, atol=1e-6)
    assert np.abs(out[:, mask[..., 0] == 0.0] - (faces[:, mask[..., 0] == 0.0] / 127.5 - 1)).mean() > 0.05
    _, masked_again, _ = gen.encode(faces, 0)
    _, masked_next, _ = gen.encode(faces, 1)
    np.testing.assert_array_equal(np.asarray(masked), np.asarray(masked_again))  # keyed by chunk index
    assert not np.array_equal(np.asarray(masked), np.asarray(masked_next))
    assert jnp.asarray(ref).shape == (f, res // 8, res // 8, 4)


# ---------------------------------------------------------------- pure pieces

def test_pingpong_matches_latentsync_loop():
    np.testing.assert_array_equal(pingpong_indices(3, 8), [0, 1, 2, 2, 1, 0, 0, 1])
    np.testing.assert_array_equal(pingpong_indices(5, 3), [0, 1, 2])
    np.testing.assert_array_equal(pingpong_indices(1, 3), [0, 0, 0])
    with pytest.raises(ValueError):
        pingpong_indices(0, 3)


def test_output_frames_chunks_and_padding():
    assert output_frame_count(153600, 16000, 25.0, 242) == 240  # 9.6 s of audio
    assert output_frame_count(153600, 16000, 25.0, 200) == 200  # at most one frame per window
    assert chunk_bounds(40, 16) == [(0, 16), (16, 32), (32, 40)]
    np.testing.assert_array_equal(pad_to_chunk(np.array([7, 8]), 4), [7, 8, 8, 8])
    with pytest.raises(ValueError):
        pad_to_chunk(np.array([], int), 4)


def test_nearest_face_stand_ins():
    has_face = np.array([False, True, False, False, False, True, False])
    np.testing.assert_array_equal(nearest_face_indices(has_face), [1, 1, 1, 1, 5, 5, 5])
    with pytest.raises(ValueError):
        nearest_face_indices(np.zeros(3, bool))


def test_frame_spill_round_trip(tmp_path):
    spill = FrameSpill(width=5, height=4, folder=str(tmp_path))
    frames = [np.full((4, 5, 3), i, np.uint8) for i in range(3)]
    for frame in frames:
        spill.append(frame)
    for i in (2, 0, 1):
        np.testing.assert_array_equal(spill.get(i), frames[i])
    with pytest.raises(IndexError):
        spill.get(3)
    spill.close()
    assert os.listdir(tmp_path) == []


def test_check_inputs_names_the_file(tmp_path, video_without_audio):
    with pytest.raises(InputError, match="no audio stream"):
        check_inputs(video_without_audio, video_without_audio, str(tmp_path / "o.mp4"))
    check_inputs(video_without_audio, asset_path("demo1_audio.wav"), str(tmp_path / "new" / "sub" / "o.mp4"))
    assert os.path.isdir(tmp_path / "new" / "sub")  # a missing output folder is created
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match="cannot create folder"):
        check_inputs(video_without_audio, asset_path("demo1_audio.wav"), str(tmp_path / "a_file" / "o.mp4"))
    with pytest.raises(InputError, match=r"\.mp4"):
        check_inputs(video_without_audio, asset_path("demo1_audio.wav"), str(tmp_path / "o.avi"))
    checked = check_inputs(video_without_audio, asset_path("demo1_audio.wav"), str(tmp_path / "o.mp4"))
    assert checked.video.num_frames == 13 and abs(checked.audio_duration - 9.6) < 0.05


@pytest.mark.integration
def test_models_load_from_converted_checkpoints(tmp_path, tiny_models):
    import dataclasses

    import jax

    from lipsync_jax.checkpoints import save_params
    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import CheckpointMismatchError, build_models

    unet_dir, vae_dir, whisper_dir = (str(tmp_path / name) for name in ("unet", "vae", "whisper"))
    save_params(unet_dir, tiny_models.unet_params, None)
    save_params(vae_dir, tiny_models.vae_params, None)
    save_params(whisper_dir, tiny_models.audio.params, {"dims": dataclasses.asdict(tiny_models.audio.config)})
    config = load_config(TINY_CONFIG)
    loaded = build_models(config, unet_checkpoint=unet_dir, vae_checkpoint=vae_dir, whisper_checkpoint=whisper_dir)
    for ours, theirs in ((loaded.unet_params, tiny_models.unet_params), (loaded.vae_params, tiny_models.vae_params),
                         (loaded.audio.params, tiny_models.audio.params)):
        assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), ours, theirs))

    broken = dict(tiny_models.unet_params)
    broken.pop("conv_in")
    save_params(unet_dir, broken, None)
    with pytest.raises(CheckpointMismatchError, match="2 missing.*conv_in"):
        build_models(config, unet_checkpoint=unet_dir, vae_checkpoint=vae_dir, whisper_checkpoint=whisper_dir)
