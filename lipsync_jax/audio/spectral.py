"""Shared spectral building blocks: a centred STFT and the Slaney-style mel filterbank.

Both Whisper's log-mel and LatentSync's SyncNet mel are "|STFT| -> mel filterbank -> log"; they
differ only in constants, the padding mode and the log/normalisation that follows. Computed in
float64 numpy (these are preprocessing, not model code) and returned as float32.
"""

from __future__ import annotations

import functools

import numpy as np


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default, scipy's ``get_window('hann', n)``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_magnitude(audio: np.ndarray, n_fft: int, hop: int, win: int | None = None,
                   pad_mode: str = "reflect") -> np.ndarray:
    """|STFT| of a 1-D signal, centred frames (the signal is padded by n_fft // 2 on both sides).

    audio: (n,) -> (n_fft // 2 + 1, 1 + n // hop), float64. ``pad_mode`` is numpy's mode
    ("reflect" as torch.stft, "constant" as librosa >= 0.10). A window shorter than n_fft is
    zero-padded to n_fft, centred, as torch/librosa do.
    """
    audio = np.asarray(audio, np.float64)
    win = n_fft if win is None else win
    window = hann_window(win)
    if win < n_fft:
        left = (n_fft - win) // 2
        window = np.pad(window, (left, n_fft - win - left))
    pad = n_fft // 2
    if pad_mode == "reflect" and audio.shape[0] <= pad:
        pad_mode = "constant"  # reflection needs more samples than the pad; clips this short are silence-like
    padded = np.pad(audio, (pad, pad), mode=pad_mode)
    n_frames = 1 + (padded.shape[0] - n_fft) // hop
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop][:n_frames]  # (t, n_fft)
    return np.abs(np.fft.rfft(frames * window, axis=-1)).T  # (freq, t)


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    mel = hz / f_sp
    above = hz >= min_log_hz
    return np.where(above, min_log_mel + np.log(np.maximum(hz, 1e-12) / min_log_hz) / logstep, mel)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, np.float64)
    f_sp = 200.0 / 3
    min_log_hz, min_log_mel, logstep = 1000.0, 1000.0 / f_sp, np.log(6.4) / 27.0
    return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)), f_sp * mel)


@functools.lru_cache(maxsize=16)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0,
                   fmax: float | None = None) -> np.ndarray:
    """Triangular mel filters on the Slaney scale with Slaney area normalisation
    (the formula of ``librosa.filters.mel(htk=False, norm='slaney')``). -> (n_mels, n_fft // 2 + 1)."""
    fmax = sample_rate / 2.0 if fmax is None else float(fmax)
    fft_freqs = np.linspace(0.0, sample_rate / 2.0, 1 + n_fft // 2)
    mel_points = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))  # band edges, Hz
    widths = np.diff(mel_points)
    ramps = mel_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, freq)
    weights *= (2.0 / (mel_points[2:] - mel_points[:-2]))[:, None]  # equal area per band
    weights.setflags(write=False)
    return weights
