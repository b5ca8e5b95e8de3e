"""Loading audio: sample rates, channels, containers, and clear errors for bad files."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest
import scipy.io.wavfile

from lipsync_jax.audio.load import AudioLoadError, load_audio
from tests.helpers.paths import asset_path

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def _ffmpeg(*args):
    subprocess.run([FFMPEG, "-nostdin", "-loglevel", "error", "-y", *args], check=True)


def _tone(rate, seconds, freq=440.0, amp=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def _dominant_frequency(audio, rate=16000):
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(len(audio))))
    return np.argmax(spectrum) * rate / len(audio)


@pytest.mark.parametrize("rate", [44100, 48000])
@pytest.mark.parametrize("pcm", ["int16", "float32"])
def test_stereo_wav_is_downmixed_and_resampled(tmp_path, rate, pcm):
    left, right = _tone(rate, 1.5, amp=0.6), _tone(rate, 1.5, amp=0.2)
    stereo = np.stack([left, right], axis=1)
    data = np.round(stereo * 32767).astype(np.int16) if pcm == "int16" else stereo.astype(np.float32)
    path = tmp_path / f"tone_{rate}.wav"
    scipy.io.wavfile.write(path, rate, data)

    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert len(audio) == int(np.ceil(len(left) * 16000 / rate))
    expected = _tone(16000, len(audio) / 16000, amp=0.4)  # mean of the channels, resampled exactly
    middle = slice(800, len(audio) - 800)  # away from the filter's edge effects
    assert np.max(np.abs(audio[middle] - expected[middle])) < 2e-3


def test_16k_wav_is_returned_untouched():
    audio = load_audio(asset_path("demo1_audio.wav"))
    rate, raw = scipy.io.wavfile.read(asset_path("demo1_audio.wav"))
    assert rate == 16000 and audio.shape == (raw.shape[0],)
    scale = 32768.0 if raw.dtype == np.int16 else 1.0
    np.testing.assert_array_equal(audio, raw.astype(np.float32) / np.float32(scale))


@pytest.mark.parametrize("suffix,codec,rate", [(".mp3", "libmp3lame", 44100), (".m4a", "aac", 48000)])
def test_compressed_audio_via_ffmpeg(tmp_path, suffix, codec, rate):
    wav = tmp_path / "src.wav"
    scipy.io.wavfile.write(wav, rate, np.stack([_tone(rate, 2.0)] * 2, axis=1).astype(np.float32))
    path = tmp_path / f"tone{suffix}"
    _ffmpeg("-i", str(wav), "-c:a", codec, "-b:a", "128k", str(path))

    audio = load_audio(path)
    assert audio.dtype == np.float32
    assert abs(len(audio) - 32000) < 2400  # codec priming/padding adds a little
    assert abs(_dominant_frequency(audio) - 440.0) < 2.0
    assert 0.3 < np.max(np.abs(audio)) < 0.7


def test_audio_track_of_a_video():
    audio = load_audio(asset_path("demo1_video.mp4"))
    assert audio.dtype == np.float32 and len(audio) > 16000 * 9
    assert np.all(np.isfinite(audio)) and np.std(audio) > 1e-3


def test_short_and_silent_wav(tmp_path):
    path = tmp_path / "short_silence.wav"
    scipy.io.wavfile.write(path, 22050, np.zeros((11025, 2), np.int16))  # 0.5 s stereo
    audio = load_audio(path)
    assert audio.shape == (8000,) and np.all(audio == 0)


def test_missing_file():
    with pytest.raises(AudioLoadError, match="no_such_file.wav: no such file"):
        load_audio("/nonexistent/no_such_file.wav")


def test_video_without_audio_stream(tmp_path):
    path = tmp_path / "silent_video.mp4"
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x64:rate=25", "-t", "0.4", "-pix_fmt", "yuv420p",
            "-c:v", "libx264", str(path))
    with pytest.raises(AudioLoadError, match=r"silent_video\.mp4: has no audio stream"):
        load_audio(path)


@pytest.mark.parametrize("name", ["corrupt.mp3", "corrupt.wav", "corrupt.mp4"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioLoadError, match=rf"{name}: cannot be decoded"):
        load_audio(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioLoadError, match="empty.wav"):
        load_audio(path)


@pytest.mark.parametrize("codec,tol", [("pcm_s24le", 1e-6), ("pcm_s32le", 1e-6), ("pcm_u8", 1e-2)])
def test_integer_pcm_depths_are_scaled_to_full_range(tmp_path, codec, tol):
    reference = tmp_path / "ref.wav"
    scipy.io.wavfile.write(reference, 16000, (_tone(16000, 0.5) * 32767).astype(np.int16))
    path = tmp_path / f"{codec}.wav"
    _ffmpeg("-i", str(reference), "-c:a", codec, str(path))
    np.testing.assert_allclose(load_audio(path), load_audio(reference), atol=tol)
