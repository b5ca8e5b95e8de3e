"""Whisper audio windows computed online, as the audio arrives.

Offline (audio/features.py) the whole clip's log-mel is cut into 30 s encoder windows, each
encoded on its own, and video frame i takes embedding rows c - 4 .. c + 5 around
c = int(i * 50 / fps). Online we keep the SAME windows (same boundaries, so the same positions;
audio/windows.py): ``windows="sliding"`` (the default for live sessions: overlapping windows every
19 s, each row taken where it has >= 5 s of audio before it, cross-faded between windows, so a
session longer than 30 s has no seam) or ``"latentsync"`` (disjoint windows every 30 s, as
offline LatentSync). A window is encoded with only the audio received so far, zero-padded in
log-mel space as Whisper pads a short clip:

- frame i is *ready* when every mel frame under its rows is computed from real audio:
  row r covers mel frames 2r, 2r + 1; mel frame j is centred on sample 160 j and spans +-200
  samples, so frame i needs ``160 * (2 * (c + 5) + 1) + 200`` samples: 1960 + 640 i at 25 fps,
  i.e. 82.5 ms of look-ahead past the end of a 16-frame chunk;
- the windows the asked frames' rows come from are re-encoded (one encoder call each, 30 s
  input; two only while a chunk's rows cross a sliding cross-fade) when frames are asked for and
  new audio arrived; a window whose audio is complete is encoded once more and frozen;
- log-mel floor: offline clamps to (max over the whole clip) - 8; online the max is a running max
  over the mel frames computed from real audio (at the end of the stream: the clip's max);
- at ``finish()`` the clip's length is known: the frame count (``output_frame_count``) and the
  clamping of the last rows to T - 1 are the offline ones, and the last window sees all its audio.

So the online windows differ from the offline ones only by the attention context the encoder
misses (audio after the current end) and the running floor (and, for sliding windows, in the
last ~20 s of a stream: offline adds no window the clip's length does not need, online the grid
goes on); ``window_error`` measures it per
layer (bench/bench_stream.py, bench/RESULTS.md). Memory: the audio of the current window (+ the
rows the next frames still need from the previous window), whatever the stream's length.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np

from lipsync_jax.audio.features import DEFAULT_FEAT_LENGTH, add_window_rows, frame_chunk_indices
from lipsync_jax.audio.spectral import mel_filterbank, stft_magnitude
from lipsync_jax.audio.whisper_mel import FRAMES_PER_EMBEDDING, HOP_LENGTH, N_FFT, SAMPLE_RATE
from lipsync_jax.audio.windows import check_audio_windows, row_sources, window_start_rows
from lipsync_jax.pipeline.timeline import output_frame_count

CONTEXT = 3 * HOP_LENGTH  # samples kept before a window's start (its first mel frames' STFT span)


def to_float_audio(samples: np.ndarray | bytes, dtype: str | None = None) -> np.ndarray:
    """16 kHz mono chunk (float32 in [-1, 1] or int16, an array or raw little-endian bytes) -> float32;
    a byte count that is not a whole number of samples and NaN / infinite samples are refused
    (ValueError naming the problem)."""
    if isinstance(samples, (bytes, bytearray, memoryview)):
        kind = dtype or "int16"
        if kind not in ("int16", "float32"):
            raise ValueError(f"audio bytes must be int16 or float32, got {kind!r}")
        width = 2 if kind == "int16" else 4
        if len(samples) % width:
            raise ValueError(f"audio message of {len(samples)} bytes: {kind} audio needs a multiple of {width} "
                             f"bytes (whole samples)")
        samples = np.frombuffer(bytes(samples), "<i2" if kind == "int16" else "<f4")
    samples = np.asarray(samples)
    if samples.ndim != 1:
        raise ValueError(f"audio chunks must be mono (n,), got shape {samples.shape}")
    if samples.dtype == np.int16:
        return samples.astype(np.float32) / 32768.0
    if not np.issubdtype(samples.dtype, np.floating):
        raise ValueError(f"audio chunks must be float32 or int16, got {samples.dtype}")
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        raise ValueError(f"audio: {bad} of {len(samples)} samples are NaN or infinite (audio must be finite)")
    return samples.astype(np.float32)


def samples_needed(frame: int, fps: float = 25.0, right: int = DEFAULT_FEAT_LENGTH[1]) -> int:
    """Samples that must have arrived before frame ``frame``'s audio window is final (module doc)."""
    last_row = int(frame * 50 / fps) + 2 * right + 1
    return HOP_LENGTH * (2 * last_row + 1) + N_FFT // 2


def look_ahead_seconds(fps: float = 25.0, right: int = DEFAULT_FEAT_LENGTH[1]) -> float:
    """Audio needed past the end of a frame before its window is final (82.5 ms at 25 fps)."""
    return (samples_needed(0, fps, right) - SAMPLE_RATE / fps) / SAMPLE_RATE


class OnlineAudioFeatures:
    """Per-frame audio windows of a stream (see the module docstring).

        online = OnlineAudioFeatures(models.audio, fps=25.0)   # windows="sliding" | "latentsync"
        online.push(chunk)                 # any length, float32 or int16
        online.ready_frames()              # frames whose windows can be computed now
        online.windows(np.arange(0, 16))   # (16, 10 * layers, d)
        online.finish()                    # end of audio: num_frames is known
    """

    def __init__(self, extractor, fps: float = 25.0, audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH,
                 windows: str = "sliding"):
        self.extractor = extractor
        self.layout = check_audio_windows(windows)
        self.fps = float(fps)
        self.left, self.right = int(audio_feat_length[0]), int(audio_feat_length[1])
        self.window_frames = int(extractor.config.n_frames)  # mel frames per encoder window (3000)
        self.window_rows = self.window_frames // 2
        self.filters = mel_filterbank(SAMPLE_RATE, N_FFT, extractor.config.n_mels)
        self._audio = np.zeros(0, np.float32)  # samples [audio_start, received)
        self.audio_start = 0
        self.received = 0  # samples pushed so far
        self.ended = False
        self.max_log = -np.inf  # running max of the log10 mel over frames from real audio
        self._frozen: dict[int, np.ndarray] = {}  # window -> (rows, layers, d) final embeddings
        self._current: tuple[tuple, np.ndarray] | None = None  # (state key, embeddings) of the last encode
        self.encoder_calls = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ input
    def push(self, samples) -> None:
        samples = to_float_audio(samples)
        with self._lock:
            if self.ended:
                raise ValueError("audio pushed after the end of the stream")
            self._audio = np.concatenate([self._audio, samples])
            self.received += len(samples)

    def finish(self) -> None:
        with self._lock:
            self.ended = True

    # ------------------------------------------------------------------ frame bookkeeping
    def centre_row(self, frame: int) -> int:
        return int(frame * 50 / self.fps)

    def samples_needed(self, frame: int) -> int:
        """Samples that must have arrived before frame ``frame``'s window is final (see module doc)."""
        return samples_needed(frame, self.fps, self.right)

    @property
    def total_rows(self) -> int:
        """Embedding rows of the audio so far (offline: T for a clip of this length)."""
        mel = self.received // HOP_LENGTH
        full, rest = divmod(mel, self.window_frames)
        return full * self.window_rows + rest // 2

    @property
    def num_frames(self) -> int | None:
        """Output frames of the whole stream (known after ``finish``; 0 for no usable audio)."""
        if not self.ended:
            return None
        rows = self.total_rows
        if rows < 1:
            return 0
        windows = len(frame_chunk_indices(rows, self.fps, (self.left, self.right)))
        return output_frame_count(self.received, SAMPLE_RATE, self.fps, windows)

    def ready_frames(self) -> int:
        """How many frames (from 0) have their windows computable now."""
        if self.ended:
            return int(self.num_frames)
        # samples_needed is increasing in the frame: find the first frame not ready
        per_frame = SAMPLE_RATE / self.fps
        guess = max(0, int((self.received - self.samples_needed(0)) / per_frame) + 2)
        while guess > 0 and self.samples_needed(guess - 1) > self.received:
            guess -= 1
        while self.samples_needed(guess) <= self.received:
            guess += 1
        return guess

    def frame_rows(self, frames: np.ndarray) -> np.ndarray:
        offsets = np.arange(-2 * self.left, 2 * (self.right + 1))
        rows = np.array([self.centre_row(int(i)) for i in frames])[:, None] + offsets[None, :]
        upper = self.total_rows - 1 if self.ended else np.iinfo(np.int64).max
        return np.clip(rows, 0, upper)

    # ------------------------------------------------------------------ encoding
    def window_start(self, window: int) -> int:
        """First mel frame of ``window``."""
        return int(window_start_rows(window + 1, self.layout, self.window_rows)[-1]) * FRAMES_PER_EMBEDDING

    def _window_log_mel(self, window: int) -> tuple[np.ndarray, int]:
        """Log10 mel (n_mels, frames) of the received audio of ``window`` (before the floor) and the
        number of its frames computed from real audio only."""
        first = self.window_start(window)  # global mel frame
        total = self.received // HOP_LENGTH  # mel frames of the audio so far (the last is dropped, as offline)
        last = min(first + self.window_frames, total)
        if last <= first:
            return np.zeros((self.filters.shape[0], 0), np.float32), 0
        seg_start = max(0, first * HOP_LENGTH - CONTEXT)
        if seg_start < self.audio_start:
            raise RuntimeError(f"window {window}'s audio was already released")
        segment = self._audio[seg_start - self.audio_start:self.received - self.audio_start]
        power = stft_magnitude(segment, N_FFT, HOP_LENGTH, pad_mode="reflect")[:, :-1] ** 2
        skip = first - seg_start // HOP_LENGTH
        log_mel = np.log10(np.maximum(self.filters @ power[:, skip:skip + last - first], 1e-10))
        real = log_mel.shape[1] if self.ended else sum(
            1 for j in range(first, last) if HOP_LENGTH * j + N_FFT // 2 <= self.received)
        return log_mel.astype(np.float32), real

    def _encode(self, window: int) -> np.ndarray:
        """(rows, layers, d) embeddings of ``window`` from the audio so far (rows = valid // 2)."""
        key = (window, self.received, self.ended)
        if self._current is not None and self._current[0] == key:
            return self._current[1]
        log_mel, real = self._window_log_mel(window)
        if real:
            self.max_log = max(self.max_log, float(log_mel[:, :real].max()))
        floor = self.max_log - 8.0 if np.isfinite(self.max_log) else -np.inf
        mel = (np.maximum(log_mel, floor) + 4.0) / 4.0
        padded = np.zeros((1, self.window_frames, mel.shape[0]), np.float32)
        padded[0, :mel.shape[1]] = mel.T
        self.encoder_calls += 1
        rows = self.extractor.encode_windows(padded)[0, :mel.shape[1] // 2]
        self._current = (key, rows)
        return rows

    def _window_complete(self, window: int) -> bool:
        end = self.window_start(window) + self.window_frames  # first mel frame after the window
        return self.ended or self.received >= HOP_LENGTH * (end - 1) + N_FFT // 2

    def _rows_of(self, window: int) -> np.ndarray:
        if window in self._frozen:
            return self._frozen[window]
        rows = self._encode(window)
        if self._window_complete(window):
            self._frozen[window] = rows
        return rows

    def windows(self, frames: np.ndarray) -> np.ndarray:
        """(k, rows * layers, d) windows of these frames (each must be ready), from the audio so far."""
        frames = np.asarray(frames)
        with self._lock:
            ready = self.ready_frames()
            if len(frames) and int(frames.max()) >= ready and not self.ended:
                raise ValueError(f"frame {int(frames.max())} is not ready ({ready} frames are)")
            rows = self.frame_rows(frames)  # (k, rows_per_frame)
            source, fade = row_sources(rows, self.layout, self.window_rows)
            needed = sorted(set(source.ravel().tolist()) | set((source[fade > 0] + 1).tolist()))
            out = None
            for w in needed:
                part = self._rows_of(w)  # (rows, layers, d) from the window's first row
                if out is None:
                    out = np.zeros(rows.shape + part.shape[1:], np.float32)
                add_window_rows(out, part, self.window_start(w) // FRAMES_PER_EMBEDDING, w, rows, source, fade)
            k, per_frame = rows.shape
            return out.reshape(k, per_frame * out.shape[2], out.shape[3])

    def release_before(self, frame: int) -> None:
        """Frames before ``frame`` are done: drop audio and frozen rows no later frame needs."""
        with self._lock:
            row = max(0, self.centre_row(frame) - 2 * self.left)
            window = int(row_sources(np.array([row]), self.layout, self.window_rows)[0][0])  # the earliest still needed
            for old in [w for w in self._frozen if w < window]:
                del self._frozen[old]
            keep = max(0, self.window_start(window) * HOP_LENGTH - CONTEXT)
            if keep > self.audio_start:
                self._audio = self._audio[keep - self.audio_start:]
                self.audio_start = keep

    @property
    def buffered_seconds(self) -> float:
        return len(self._audio) / SAMPLE_RATE


def window_error(online: np.ndarray, offline: np.ndarray, layers: int) -> list[float]:
    """Relative error ||online - offline|| / ||offline|| per Whisper layer of (N, rows * layers, d) windows."""
    n, flat, d = offline.shape
    on = online.reshape(n, flat // layers, layers, d)
    off = offline.reshape(n, flat // layers, layers, d)
    return [float(np.linalg.norm(on[:, :, k] - off[:, :, k]) / max(np.linalg.norm(off[:, :, k]), 1e-12))
            for k in range(layers)]


def stream_windows(extractor, audio: np.ndarray, *, piece: int = 640, chunk: int = 16, fps: float = 25.0,
                   audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH, windows: str = "sliding") -> np.ndarray:
    """The windows a live session computes for ``audio`` fed in ``piece``-sample pieces, chunk by
    chunk (each chunk's windows computed as soon as its last frame is ready) -> (N, rows * layers, d)."""
    online = OnlineAudioFeatures(extractor, fps, audio_feat_length, windows)
    out, done = [], 0
    for start in range(0, len(audio), piece):
        online.push(audio[start:start + piece])
        while online.ready_frames() >= done + chunk:
            out.append(online.windows(np.arange(done, done + chunk)))
            done += chunk
            online.release_before(done)
    online.finish()
    total = online.num_frames
    while done < total:
        stop = min(done + chunk, total)
        out.append(online.windows(np.arange(done, stop)))
        done = stop
    return np.concatenate(out) if out else np.zeros((0,), np.float32)
