"""Whisper's log-mel spectrogram and its 30 s encoder windows (LatentSync's bundled Whisper).

16 kHz audio -> |STFT|^2 (n_fft 400, hop 160, periodic Hann, centred with reflect padding, the
last frame dropped) -> 80 Slaney mel bands -> log10 (floor 1e-10) -> clamp to (max - 8) ->
(x + 4) / 4. The max is taken over the WHOLE clip, then the clip's mel is cut into 3000-frame
(30 s) windows, the last one zero-padded in log-mel space (``pad_or_trim`` of the mel, as
LatentSync's transcribe loop does; newer openai-whisper pads the audio instead).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipsync_jax.audio.spectral import mel_filterbank, stft_magnitude

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
N_MELS = 80
WINDOW_FRAMES = 3000  # 30 s of mel frames: one encoder input
FRAMES_PER_EMBEDDING = 2  # conv2 has stride 2: 100 mel frames/s -> 50 embeddings/s


def log_mel_spectrogram(audio: np.ndarray, n_mels: int = N_MELS) -> np.ndarray:
    """16 kHz mono audio (n,) -> log-mel (n_mels, n // 160), float32."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio of shape (n,), got {audio.shape}")
    power = stft_magnitude(audio, N_FFT, HOP_LENGTH, pad_mode="reflect")[:, :-1] ** 2  # (201, t)
    mel = mel_filterbank(SAMPLE_RATE, N_FFT, n_mels) @ power  # (n_mels, t)
    log_spec = np.log10(np.maximum(mel, 1e-10))
    if log_spec.size:
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def mel_windows(log_mel: np.ndarray, window_frames: int = WINDOW_FRAMES,
                starts: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cut a clip's log-mel (n_mels, t) into encoder windows.

    Returns ``windows`` (w, window_frames, n_mels), channels-last, each zero-padded to full
    length, and ``valid_frames`` (w,): how many mel frames of each window are real audio.
    ``starts``: the windows' first mel frames (default: disjoint windows every ``window_frames``,
    LatentSync's). A clip with no frames still yields one (all-padding) window with 0 valid frames.
    """
    n_mels, total = log_mel.shape
    if starts is None:
        starts = list(range(0, total, window_frames)) or [0]
    windows = np.zeros((len(starts), window_frames, n_mels), np.float32)
    valid = np.zeros(len(starts), np.int64)
    for w, start in enumerate(starts):
        chunk = log_mel[:, start:start + window_frames]  # (n_mels, <= window_frames)
        windows[w, :chunk.shape[1]] = chunk.T
        valid[w] = chunk.shape[1]
    return windows, valid
