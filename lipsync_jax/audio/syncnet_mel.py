"""LatentSync's SyncNet mel spectrogram (configs/audio.yaml, the Wav2Lip recipe) and its crops.

wav (16 kHz) -> preemphasis y[n] = x[n] - 0.97 x[n-1] -> |STFT| (n_fft 800, hop 200, win 800,
periodic Hann, centred, zero padding as librosa >= 0.10's ``stft`` default) -> 80 Slaney mel bands
55-7600 Hz (magnitude, not power) -> 20 log10(max(1e-5, x)) - ref_level_db 20 -> symmetric
normalisation 2 * 4 * (S + 100) / 100 - 4, clipped to [-4, 4]. 80 columns per second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lipsync_jax.audio.spectral import mel_filterbank, stft_magnitude

# configs/audio.yaml (also stored as the fixture's config["audio"])
DEFAULT_AUDIO_CONFIG: dict[str, Any] = {
    "num_mels": 80, "n_fft": 800, "hop_size": 200, "win_size": 800, "sample_rate": 16000,
    "preemphasize": True, "preemphasis": 0.97, "min_level_db": -100, "ref_level_db": 20,
    "fmin": 55, "fmax": 7600, "signal_normalization": True, "allow_clipping_in_normalization": True,
    "symmetric_mels": True, "max_abs_value": 4.0,
}


def _config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    cfg = dict(DEFAULT_AUDIO_CONFIG)
    if config is not None:
        cfg.update(config.get("audio", config))
    return cfg


def syncnet_mel(wav: np.ndarray, config: Mapping[str, Any] | None = None) -> np.ndarray:
    """16 kHz mono wav (n,) -> normalised mel (num_mels, 1 + n // hop_size), float32."""
    cfg = _config(config)
    wav = np.asarray(wav, np.float64)
    if wav.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n,), got {wav.shape}")
    if cfg["preemphasize"] and wav.size:
        wav = np.concatenate([wav[:1], wav[1:] - cfg["preemphasis"] * wav[:-1]])
    magnitude = stft_magnitude(wav, cfg["n_fft"], cfg["hop_size"], cfg["win_size"], pad_mode="constant")
    mel = mel_filterbank(cfg["sample_rate"], cfg["n_fft"], cfg["num_mels"], cfg["fmin"], cfg["fmax"]) @ magnitude
    min_level = 10.0 ** (cfg["min_level_db"] / 20.0)
    spec_db = 20.0 * np.log10(np.maximum(min_level, mel)) - cfg["ref_level_db"]
    if cfg["signal_normalization"]:
        spec_db = _normalize(spec_db, cfg)
    return spec_db.astype(np.float32)


def _normalize(spec_db: np.ndarray, cfg: Mapping[str, Any]) -> np.ndarray:
    max_abs, min_db = cfg["max_abs_value"], cfg["min_level_db"]
    unit = (spec_db - min_db) / -min_db  # [0, 1] for spec_db in [min_db, 0]
    if cfg["symmetric_mels"]:
        out, low = 2.0 * max_abs * unit - max_abs, -max_abs
    else:
        out, low = max_abs * unit, 0.0
    return np.clip(out, low, max_abs) if cfg["allow_clipping_in_normalization"] else out


def mel_window_length(num_frames: int = 16) -> int:
    """Mel columns for ``num_frames`` video frames at 25 fps: ceil(num_frames / 5 * 16) (52 for 16)."""
    return math.ceil(num_frames / 5 * 16)


def syncnet_mel_crop(mel: np.ndarray, start_frame: int, num_frames: int = 16, fps: float = 25.0) -> np.ndarray:
    """The (1, num_mels, mel_window_length) slice SyncNet sees for ``num_frames`` video frames
    starting at ``start_frame``: first column int(80 * start_frame / fps), 80 columns per second.
    Raises ValueError when the window runs past the end of the mel (LatentSync skips such clips)."""
    start = int(80.0 * (start_frame / float(fps)))
    length = mel_window_length(num_frames)
    if start < 0 or start + length > mel.shape[-1]:
        raise ValueError(f"mel crop [{start}, {start + length}) for frames "
                         f"{start_frame}..{start_frame + num_frames - 1} is outside the mel's "
                         f"{mel.shape[-1]} columns (audio too short for these frames)")
    return np.asarray(mel[None, :, start:start + length], np.float32)
