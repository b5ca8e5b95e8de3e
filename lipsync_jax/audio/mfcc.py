"""MFCCs as ``python_speech_features.mfcc`` computes them with its defaults (the features the
classic SyncNet of LSE-C / LSE-D was trained on), in numpy float64.

Steps (defaults: 16 kHz, 25 ms windows every 10 ms, 512-point FFT, 26 mel filters, 13 coefficients):
  1. pre-emphasis ``y[0] = x[0]``, ``y[n] = x[n] - 0.97 x[n-1]`` on the raw samples (the int16
     values as read from the WAV, not scaled to [-1, 1]: the scale shifts coefficient 0);
  2. framing: frame length ``round_half_up(0.025 * rate)``, step ``round_half_up(0.01 * rate)``;
     one frame when the signal is not longer than a frame, else
     ``1 + ceil((n - frame_len) / step)`` frames, the last one zero-padded; NO window
     (python_speech_features' ``winfunc`` default is all ones);
  3. power spectrum ``|rfft(frame, 512)|^2 / 512``; frame energy = its sum (0 -> float eps);
  4. 26 triangular mel filters between 0 Hz and rate / 2 (mel = 2595 log10(1 + hz / 700)), their
     corners on FFT bins ``floor((nfft + 1) * hz / rate)``; filterbank energies 0 -> float eps;
  5. natural log, DCT-II with orthonormal scaling, first 13 coefficients;
  6. sinusoidal lifter ``1 + (22 / 2) sin(pi n / 22)``;
  7. coefficient 0 replaced by the log frame energy.
Output: (num_frames, 13), one row per 10 ms; ``mfcc(...).T`` is the (13, T) SyncNet input.
"""

from __future__ import annotations

import decimal
import math

import numpy as np
import scipy.fft

EPS = np.finfo(float).eps


def _round_half_up(value: float) -> int:
    return int(decimal.Decimal(value).quantize(decimal.Decimal("1"), rounding=decimal.ROUND_HALF_UP))


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(num_filters: int = 26, nfft: int = 512, sample_rate: int = 16000, low_hz: float = 0.0,
                   high_hz: float | None = None) -> np.ndarray:
    """(num_filters, nfft // 2 + 1) triangular filters with corners on whole FFT bins."""
    high_hz = sample_rate / 2 if high_hz is None else high_hz
    if high_hz > sample_rate / 2:
        raise ValueError(f"high_hz {high_hz} is above the Nyquist frequency {sample_rate / 2}")
    mels = np.linspace(hz_to_mel(low_hz), hz_to_mel(high_hz), num_filters + 2)
    bins = np.floor((nfft + 1) * mel_to_hz(mels) / sample_rate)
    bank = np.zeros((num_filters, nfft // 2 + 1))
    for j in range(num_filters):
        left, centre, right = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        rising = np.arange(left, centre)
        bank[j, rising] = (rising - bins[j]) / (bins[j + 1] - bins[j])
        falling = np.arange(centre, right)
        bank[j, falling] = (bins[j + 2] - falling) / (bins[j + 2] - bins[j + 1])
    return bank


def frame_signal(signal: np.ndarray, frame_len: int, frame_step: int) -> np.ndarray:
    """(num_frames, frame_len) frames, zero-padding the end (see the module docstring)."""
    length = signal.shape[0]
    if length <= frame_len:
        num_frames = 1
    else:
        num_frames = 1 + int(math.ceil((length - frame_len) / frame_step))
    padded = np.concatenate([signal, np.zeros((num_frames - 1) * frame_step + frame_len - length)])
    index = np.arange(frame_len)[None, :] + frame_step * np.arange(num_frames)[:, None]
    return padded[index]


def num_mfcc_frames(num_samples: int, sample_rate: int = 16000, win_seconds: float = 0.025,
                    step_seconds: float = 0.01) -> int:
    frame_len, step = _round_half_up(win_seconds * sample_rate), _round_half_up(step_seconds * sample_rate)
    return 1 if num_samples <= frame_len else 1 + int(math.ceil((num_samples - frame_len) / step))


def mfcc(signal: np.ndarray, sample_rate: int = 16000, win_seconds: float = 0.025, step_seconds: float = 0.01,
         num_cep: int = 13, num_filters: int = 26, nfft: int = 512, preemphasis: float = 0.97,
         lifter: int = 22, append_energy: bool = True) -> np.ndarray:
    """(num_frames, num_cep) float64 MFCCs of a 1-D signal (pass int16-scale samples)."""
    x = np.asarray(signal, np.float64)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"mfcc expects a non-empty 1-D signal, got shape {x.shape}")
    x = np.concatenate([x[:1], x[1:] - preemphasis * x[:-1]])
    frames = frame_signal(x, _round_half_up(win_seconds * sample_rate), _round_half_up(step_seconds * sample_rate))
    if frames.shape[1] > nfft:
        raise ValueError(f"frame length {frames.shape[1]} exceeds nfft {nfft}")
    power = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = power.sum(axis=1)
    energy = np.where(energy == 0, EPS, energy)
    bank_energy = power @ mel_filterbank(num_filters, nfft, sample_rate).T
    bank_energy = np.where(bank_energy == 0, EPS, bank_energy)
    ceps = scipy.fft.dct(np.log(bank_energy), type=2, axis=1, norm="ortho")[:, :num_cep]
    if lifter > 0:
        ceps = ceps * (1.0 + (lifter / 2.0) * np.sin(np.pi * np.arange(num_cep) / lifter))
    if append_energy:
        ceps[:, 0] = np.log(energy)
    return ceps
