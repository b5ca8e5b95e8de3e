"""Streaming video I/O through ffmpeg: probing, reading (rotation, 25 fps resampling), writing,
muxing AAC audio, and clear errors for bad files."""

import os
import subprocess

import numpy as np
import pytest

from lipsync_jax.media import (
    MediaError,
    VideoWriter,
    count_frames,
    ffmpeg_exe,
    mux_audio,
    probe_audio_duration,
    probe_video,
    read_frames,
)
from lipsync_jax.media.probe import parse_ffmpeg_info
from tests.helpers.paths import asset_path

DEMO = asset_path("demo1_video.mp4")


def _synthetic_clip(path, *, rate, seconds=1.0, size="64x48", extra=()):
    """An ffmpeg test pattern clip (moving, asymmetric content)."""
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate={rate}", "-t", str(seconds), *extra, "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(path)], check=True)
    return str(path)


def _ramp_frames(n, h, w):
    """Frames that differ strongly from each other: a moving gradient."""
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([(x * 4 + 9 * i) % 256, (y * 4) % 256, np.full_like(x, 20 * i % 256)],
                     -1).astype(np.uint8) for i in range(n)]


def test_probe_and_read_demo_video():
    info = probe_video(DEMO)
    first = list(read_frames(DEMO, max_frames=3, info=info))
    assert info.fps > 0 and info.frames_counted
    assert info.num_frames == pytest.approx(info.duration * info.fps, abs=1)
    assert len(first) == 3
    assert first[0].shape == (info.height, info.width, 3) and first[0].dtype == np.uint8
    assert first[0].std() > 5  # real picture content, not a blank frame


def test_reader_stops_early_without_decoding_everything():
    frames = read_frames(DEMO)
    next(frames)
    frames.close()  # kills ffmpeg; must not hang or raise


def test_rotation_metadata_is_applied(tmp_path):
    plain = _synthetic_clip(tmp_path / "plain.mp4", rate=25, seconds=0.4)
    rotated = str(tmp_path / "rotated.mp4")
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-display_rotation", "90",
                    "-i", plain, "-c", "copy", rotated], check=True)
    info = probe_video(rotated)
    assert info.rotation == 90 and (info.width, info.height) == (48, 64)
    upright = next(read_frames(plain))
    shown = next(read_frames(rotated))
    assert shown.shape == (64, 48, 3)
    np.testing.assert_array_equal(shown, np.rot90(upright, 1))  # display matrix 90 = counter-clockwise


def test_resample_30_to_25_fps(tmp_path):
    clip = _synthetic_clip(tmp_path / "thirty.mp4", rate=30, seconds=2.0)
    info = probe_video(clip)
    assert info.fps == 30 and info.num_frames == 60
    assert sum(1 for _ in read_frames(clip, fps=25)) == 50 == info.frame_count_at(25)
    assert sum(1 for _ in read_frames(clip)) == 60  # no resampling by default


def test_write_mux_and_read_back(tmp_path):
    n, h, w = 30, 48, 64
    frames = _ramp_frames(n, h, w)
    silent = str(tmp_path / "silent.mp4")
    with VideoWriter(silent, w, h, fps=25) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == n
    info = probe_video(silent)
    assert (info.width, info.height, info.num_frames, info.fps) == (w, h, n, 25)
    assert info.video_codec == "h264" and not info.has_audio
    back = list(read_frames(silent))
    assert len(back) == n
    assert np.abs(back[10].astype(int) - frames[10]).mean() < 6  # codec error only

    audio = asset_path("demo1_audio.wav")  # 9.6 s: longer than the 1.2 s video
    out = str(tmp_path / "final.mp4")
    used = mux_audio(silent, audio, out)
    assert used == pytest.approx(n / 25, abs=0.05)
    final = probe_video(out)
    assert final.has_audio and final.audio_codec == "aac"
    assert final.num_frames == n and final.duration == pytest.approx(n / 25, abs=0.1)
    assert sorted(os.listdir(tmp_path)) == ["final.mp4", "silent.mp4"]  # no temp files left


def test_odd_sizes_are_padded_to_even(tmp_path):
    path = str(tmp_path / "odd.mp4")
    with VideoWriter(path, 33, 21) as writer:
        for frame in _ramp_frames(3, 21, 33):
            writer.write(frame)
    info = probe_video(path)
    assert (info.width, info.height) == (34, 22)


def test_failed_write_leaves_nothing(tmp_path):
    path = str(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match="expected uint8 frames"):
        with VideoWriter(path, 32, 32) as writer:
            writer.write(np.zeros((32, 32, 3), np.uint8))
            writer.write(np.zeros((16, 32, 3), np.uint8))
    with pytest.raises(MediaError, match="no frames"):
        with VideoWriter(path, 32, 32):
            pass
    assert os.listdir(tmp_path) == []


def test_missing_corrupt_and_streamless_files(tmp_path):
    missing = str(tmp_path / "missing.mp4")
    with pytest.raises(MediaError, match="missing.mp4: media file not found"):
        probe_video(missing)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"this is not a video" * 100)
    with pytest.raises(MediaError, match="corrupt.mp4: not a readable media file"):
        probe_video(str(corrupt))
    with pytest.raises(MediaError, match="corrupt.mp4"):
        next(read_frames(str(corrupt)))
    audio_only = asset_path("demo1_audio.wav")
    with pytest.raises(MediaError, match="no video stream"):
        probe_video(audio_only)
    with pytest.raises(MediaError, match="no audio stream"):
        probe_audio_duration(_synthetic_clip(tmp_path / "silent.mp4", rate=25, seconds=0.2))
    with pytest.raises(MediaError, match="missing.mp4"):
        mux_audio(missing, audio_only, str(tmp_path / "out.mp4"))
    assert not os.path.exists(tmp_path / "out.mp4")


def test_truncated_file_is_a_media_error(tmp_path):
    clip = _synthetic_clip(tmp_path / "whole.mp4", rate=25, seconds=1.0,
                           extra=("-movflags", "+faststart"))
    data = open(clip, "rb").read()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])  # header kept, most frame data gone
    with pytest.raises(MediaError, match="cut.mp4: the video stream has no frames"):
        probe_video(str(cut))
    with pytest.raises(MediaError, match="cut.mp4: decoding failed"):
        list(read_frames(str(cut)))
    assert count_frames(clip) == 25


def test_parse_rotation_and_rates():
    text = """Input #0, mov,mp4,m4a,3gp,3g2,mj2, from 'x.mov':
  Duration: 00:01:02.50, start: 0.000000, bitrate: 991 kb/s
  Stream #0:0[0x1](und): Video: h264 (avc1 / 0x31637661), yuv420p, 1920x1080, 29.97 fps, 29.97 tbr, 30k tbn
    Side data:
      displaymatrix: rotation of -90.00 degrees
  Stream #0:1[0x2](und): Audio: aac (LC) (mp4a / 0x6134706D), 48000 Hz, stereo, fltp
"""
    info = parse_ffmpeg_info(text, "x.mov")
    assert info["duration"] == pytest.approx(62.5)
    assert info["video"] == {"codec": "h264", "width": 1920, "height": 1080, "fps": 29.97}
    assert info["rotation"] == -90
    assert info["audio"] == {"codec": "aac", "sample_rate": 48000}


def test_atomic_output_gets_the_umask_mode_not_0600(tmp_path):
    from lipsync_jax.media.atomic import atomic_output

    old = os.umask(0o022)
    try:
        with atomic_output(str(tmp_path / "out.txt")) as tmp:
            with open(tmp, "w") as f:
                f.write("done")
    finally:
        os.umask(old)
    assert (tmp_path / "out.txt").read_text() == "done"
    assert oct((tmp_path / "out.txt").stat().st_mode & 0o777) == oct(0o644)
    assert os.listdir(tmp_path) == ["out.txt"]
