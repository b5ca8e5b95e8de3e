"""Whisper log-mel and SyncNet mel: shapes, silence, short audio, the filterbank, crops."""

import numpy as np
import pytest

from lipsync_jax.audio.spectral import mel_filterbank, stft_magnitude
from lipsync_jax.audio.syncnet_mel import mel_window_length, syncnet_mel, syncnet_mel_crop
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram, mel_windows
from lipsync_jax.golden.core import load_fixture
from tests.helpers.paths import golden_path


def _noise(n, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n", [160 * 7, 16000, 16000 * 3 + 57])
def test_whisper_log_mel_shape_and_range(n):
    mel = log_mel_spectrogram(_noise(n))
    assert mel.shape == (80, n // 160) and mel.dtype == np.float32
    assert np.all(np.isfinite(mel))
    assert mel.max() - mel.min() <= 2.0 + 1e-6  # the max - 8 floor, scaled by 1/4


def test_silence_gives_finite_constant_mels():
    silence = np.zeros(16000 // 2, np.float32)
    whisper = log_mel_spectrogram(silence)
    np.testing.assert_allclose(whisper, (-10.0 + 4.0) / 4.0)  # log10 floor 1e-10
    sync = syncnet_mel(silence)
    assert sync.shape == (80, 41)
    np.testing.assert_array_equal(sync, -4.0)  # the bottom of the symmetric range


def test_mel_windows_pad_with_zeros_and_count_valid_frames():
    mel = np.random.default_rng(1).standard_normal((80, 7000)).astype(np.float32)
    windows, valid = mel_windows(mel)
    assert windows.shape == (3, 3000, 80)
    np.testing.assert_array_equal(valid, [3000, 3000, 1000])
    np.testing.assert_array_equal(windows[1], mel[:, 3000:6000].T)
    np.testing.assert_array_equal(windows[2, :1000], mel[:, 6000:].T)
    assert np.all(windows[2, 1000:] == 0)


def test_whisper_mel_max_floor_is_over_the_whole_clip():
    quiet_then_loud = np.concatenate([_noise(16000) * 1e-4, _noise(16000, seed=2)])
    mel = log_mel_spectrogram(quiet_then_loud)
    alone = log_mel_spectrogram(quiet_then_loud[:16000])
    assert not np.allclose(mel[:, :50], alone[:, :50])  # the loud half sets the floor of the quiet half
    np.testing.assert_allclose(mel.min(), mel.max() - 2.0, atol=1e-6)


def test_slaney_filterbank_properties():
    bank = mel_filterbank(16000, 400, 80)
    assert bank.shape == (80, 201) and np.all(bank >= 0)
    peaks = np.argmax(bank, axis=1)
    assert np.all(np.diff(peaks) >= 0)  # bands ordered by frequency
    # Slaney normalisation: every triangle has area ~1 in Hz-weighted terms (2 / width * width / 2)
    df = 16000 / 400
    areas = bank.sum(axis=1) * df
    np.testing.assert_allclose(areas[20:], 1.0, rtol=0.1)
    sync_bank = mel_filterbank(16000, 800, 80, 55, 7600)
    freqs = np.linspace(0, 8000, 401)
    assert np.all(sync_bank[:, freqs < 55] == 0) and np.all(sync_bank[:, freqs > 7600] == 0)


def test_stft_matches_a_direct_dft():
    x = _noise(1000).astype(np.float64)
    mag = stft_magnitude(x, 64, 16, pad_mode="constant")
    padded = np.pad(x, 32)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(64) / 64)
    frame = padded[5 * 16:5 * 16 + 64] * window
    direct = np.abs(np.exp(-2j * np.pi * np.outer(np.arange(33), np.arange(64)) / 64) @ frame)
    np.testing.assert_allclose(mag[:, 5], direct, rtol=1e-9, atol=1e-9)


def test_syncnet_crop_position_and_length():
    fixture = load_fixture(golden_path("syncnet_mel.npz"))
    mel = syncnet_mel(fixture.inputs["wav"], fixture.config)
    assert mel.shape == (80, len(fixture.inputs["wav"]) // 200 + 1)
    assert mel_window_length(16) == 52
    crop = syncnet_mel_crop(mel, 10)
    np.testing.assert_array_equal(crop[0], mel[:, 32:84])  # int(80 * 10 / 25) = 32
    with pytest.raises(ValueError, match="outside the mel"):
        syncnet_mel_crop(mel, mel.shape[1] * 25 // 80)


def test_syncnet_mel_short_audio():
    mel = syncnet_mel(_noise(3000))
    assert mel.shape == (80, 16) and np.all(np.isfinite(mel))
    assert mel.min() >= -4.0 and mel.max() <= 4.0
