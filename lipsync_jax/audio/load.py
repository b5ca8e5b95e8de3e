"""Load any common audio (or the audio track of a video) as 16 kHz mono float32.

- ``.wav``: read with ``scipy.io.wavfile`` (PCM 8/16/24/32-bit and float). Integer PCM is scaled
  to [-1, 1) by its full scale (int16 / 32768, int32 / 2**31, uint8 (x - 128) / 128), as
  soundfile/librosa do. WAV codecs scipy cannot read fall through to ffmpeg.
- everything else (mp3, m4a/aac, flac, ogg, the first audio stream of mp4/mov/mkv, ...): decoded to
  32-bit float PCM at the file's own rate and channel count by the ffmpeg binary bundled with
  imageio-ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``), through a temporary WAV file.
- channels are averaged to mono (librosa's ``to_mono``).
- resampling: ``scipy.signal.resample_poly(x, up, down)`` with up/down the reduced ratio
  16000 / rate (44.1 kHz: 160/441, 48 kHz: 1/3). It is a polyphase FIR: scipy's default
  Kaiser-windowed sinc (beta 5.0, 2 * 10 * max(up, down) + 1 taps), cutoff at the lower of the two
  Nyquist frequencies (8 kHz), zero phase (the output is aligned with the input, no delay).
  16 kHz input is returned untouched (LatentSync's fixtures use 16 kHz WAVs).
Every failure raises ``AudioLoadError`` naming the file: missing, no audio stream, undecodable.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
import warnings

import numpy as np
import scipy.io.wavfile
import scipy.signal

from lipsync_jax.cleanup import run_tracked, tracked_path

TARGET_RATE = 16000


class AudioLoadError(ValueError):
    """An audio file is missing, has no audio stream, or cannot be decoded."""


def load_audio(path: str | os.PathLike, sample_rate: int = TARGET_RATE) -> np.ndarray:
    """``path`` -> mono float32 samples at ``sample_rate`` (16 kHz by default), shape (n,)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioLoadError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioLoadError(f"{path}: is a directory, not an audio file")
    samples, rate = None, None
    if path.lower().endswith(".wav"):
        samples, rate = _read_wav(path)  # None when scipy cannot parse it: try ffmpeg
    if samples is None:
        samples, rate = _decode_with_ffmpeg(path)
    if samples.shape[0] == 0:
        raise AudioLoadError(f"{path}: the audio stream decoded to no samples")
    mono = to_mono(samples)
    if not np.all(np.isfinite(mono)):
        raise AudioLoadError(f"{path}: decoded audio contains NaN or infinite samples")
    return resample(mono, rate, sample_rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(n,) or (n, channels) -> (n,) float32, the mean over channels."""
    samples = np.asarray(samples, np.float32)
    return samples if samples.ndim == 1 else samples.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, rate: int, target_rate: int = TARGET_RATE) -> np.ndarray:
    """Polyphase resampling (see the module docstring for the filter); float32 out."""
    rate, target_rate = int(rate), int(target_rate)
    if rate == target_rate:
        return np.asarray(audio, np.float32)
    gcd = math.gcd(rate, target_rate)
    out = scipy.signal.resample_poly(np.asarray(audio, np.float64), target_rate // gcd, rate // gcd)
    return out.astype(np.float32)


def _pcm_to_float(data: np.ndarray) -> np.ndarray:
    if data.dtype == np.uint8:
        return (data.astype(np.float32) - 128.0) / 128.0
    if data.dtype == np.int16:
        return data.astype(np.float32) / 32768.0
    if data.dtype == np.int32:  # 32-bit, and 24-bit (scipy left-justifies it into int32)
        return (data.astype(np.float64) / 2147483648.0).astype(np.float32)
    if data.dtype == np.int64:
        return (data.astype(np.float64) / 9223372036854775808.0).astype(np.float32)
    return data.astype(np.float32)


def _read_wav(path: str) -> tuple[np.ndarray | None, int | None]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.io.wavfile.WavFileWarning)  # e.g. unknown LIST chunks
            rate, data = scipy.io.wavfile.read(path, mmap=False)
    except (ValueError, EOFError, OSError, NotImplementedError):
        return None, None
    return _pcm_to_float(data), int(rate)


def _ffmpeg_exe() -> str:
    try:
        import imageio_ffmpeg
        return imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as e:  # ImportError, or no binary for this platform
        raise AudioLoadError(f"decoding non-WAV audio needs the ffmpeg binary from imageio-ffmpeg: {e}") from None


def _decode_with_ffmpeg(path: str) -> tuple[np.ndarray, int]:
    """First audio stream -> float32 (n, channels) at its native rate."""
    with tracked_path(tempfile.mkdtemp(prefix="lipsync_audio_")) as tmp:
        out_path = os.path.join(tmp, "decoded.wav")
        cmd = [_ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-i", path,
               "-map", "0:a:0", "-vn", "-sn", "-dn", "-c:a", "pcm_f32le", "-f", "wav", "-y", out_path]
        proc = run_tracked(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        message = proc.stderr.decode("utf-8", "replace").strip()
        if proc.returncode != 0 or not os.path.isfile(out_path):
            if "matches no streams" in message or "does not contain any stream" in message:
                raise AudioLoadError(f"{path}: has no audio stream")
            last = message.splitlines()[-1] if message else f"ffmpeg exit status {proc.returncode}"
            raise AudioLoadError(f"{path}: cannot be decoded as audio ({last})")
        samples, rate = _read_wav(out_path)
    if samples is None:
        raise AudioLoadError(f"{path}: ffmpeg produced unreadable audio")
    return samples, rate
