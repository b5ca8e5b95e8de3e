"""Whole-clip Whisper embeddings and the per-video-frame audio windows LatentSync feeds the UNet.

Whole clip (LatentSync's ``audio2feat``): the clip's log-mel is cut into 30 s windows, each window
(zero-padded to 3000 frames) goes through the encoder, and window w keeps its first
``valid_frames[w] // 2`` rows (the rows that cover real audio); the kept rows are concatenated:
(T, n_layer + 1, d), 50 rows per second, T = sum(valid // 2). Each window is encoded on its own
(positions restart at 0), exactly as LatentSync does; only the log-mel's max-8 floor is shared.

Per-frame windows (LatentSync's ``feature2chunks``/``get_sliced_feature``): video frame i at
``fps`` is centred on row c = int(i * 50 / fps) and takes rows c - 4 .. c + 5 (for the default
``audio_feat_length`` (2, 2)), each clamped to [0, T - 1]; the 10 rows' 5 layers are flattened
row by row into (50, d). Frames are produced while int(i * 50 / fps) <= T, plus that first frame
past T (the loop appends before it tests), so N = 242 for T = 480 at 25 fps.

Window layouts (``windows=``, audio/windows.py): ``"latentsync"`` is the above, golden-exact;
``"sliding"`` encodes overlapping 30 s windows every 19 s and takes each row from a window in
which it has >= 5 s of audio on both sides (a 1 s cross-fade where one window hands over to the
next), so no frame sits at a window's edge; same T, and for clips of at most 30 s the same rows.

Which one a job should use: ``sliding`` (``DEFAULT_INFERENCE_WINDOWS``). It is LatentSync's
result wherever LatentSync has a single window (audio up to 30 s: every golden fixture and parity
test), and beyond 30 s it removes the jump LatentSync's users see as a lip glitch every 30 s
(bench/bench_audio_seam.py: the worst step at a window change falls from 1.6x an ordinary
frame-to-frame step to 1.05x, i.e. no larger than ordinary steps), for 1.6x the Whisper-tiny
encoder work (3.2 windows per minute instead of 2; the encoder is a small part of a job next to
the UNet). ``latentsync`` stays selectable for bit-parity with LatentSync on long audio, and is
the default of ``clip_embeddings`` itself (training data, fixtures).

Other frame rates: windows are computed for the REAL fps with the same formula (it is the one
LatentSync's code takes an fps for). Each window still spans 10 rows = 0.2 s of audio centred on
the frame's time, the same context the model was trained with at 25 fps, so a 30 fps video can be
processed without resampling it. LatentSync's own pipeline instead re-encodes video to 25 fps
first; with fps=25 (the default) this module reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.audio.cache import FeatureCache, params_fingerprint
from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.audio.whisper_mel import FRAMES_PER_EMBEDDING, log_mel_spectrogram, mel_windows
from lipsync_jax.audio.windows import check_audio_windows, row_sources, window_count, window_start_rows

EMBEDDINGS_PER_SECOND = 50
DEFAULT_FEAT_LENGTH = (2, 2)
DEFAULT_INFERENCE_WINDOWS = "sliding"  # see the module docstring


def stitch_windows(window_embeddings: np.ndarray, valid_frames: Sequence[int]) -> np.ndarray:
    """(w, n_ctx, layers, d) per-window embeddings -> (T, layers, d): window w trimmed to its
    ``valid_frames[w] // 2`` real rows, then concatenated."""
    kept = [window_embeddings[w, :int(v) // FRAMES_PER_EMBEDDING] for w, v in enumerate(valid_frames)]
    return np.concatenate(kept, axis=0)


def frame_chunk_indices(num_rows: int, fps: float = 25.0,
                        audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH) -> np.ndarray:
    """(N, rows_per_frame) embedding rows for each video frame (see the module docstring)."""
    if num_rows < 1:
        raise ValueError("no audio embeddings: the audio is shorter than one Whisper frame (20 ms)")
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    left, right = int(audio_feat_length[0]), int(audio_feat_length[1])
    offsets = np.arange(-left * 2, (right + 1) * 2)  # (rows_per_frame,)
    multiplier = 50.0 / fps
    centres, i = [], 0
    while True:  # the same float arithmetic as LatentSync, frame by frame
        start = int(i * multiplier)
        centres.append(int(i * 50 / fps))
        i += 1
        if start > num_rows:
            break
    return np.clip(np.asarray(centres)[:, None] + offsets[None, :], 0, num_rows - 1)


def gather_frame_windows(embeddings: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """(T, layers, d) and (N, rows) -> (N, rows * layers, d), flattened row-major (row, layer)."""
    n, rows = indices.shape
    return embeddings[indices].reshape(n, rows * embeddings.shape[1], embeddings.shape[2])


def add_window_rows(out: np.ndarray, window_embeddings: np.ndarray, start_row: int, window: int,
                    rows: np.ndarray, source: np.ndarray, fade: np.ndarray) -> None:
    """Add window ``window``'s share to ``out`` (rows.shape + (layers, d)): ``rows`` are global row
    indices, ``source``/``fade`` their ``windows.row_sources``; ``window_embeddings`` (rows, layers,
    d) start at global row ``start_row``. A row wholly from this window is copied (the encoder's
    values, bit for bit); a cross-faded row gets its weight times the window's row."""
    whole = (source == window) & (fade == 0)
    out[whole] = window_embeddings[rows[whole] - start_row]
    for share, weight in (((source == window) & (fade > 0), 1.0 - fade), ((source == window - 1) & (fade > 0), fade)):
        out[share] += weight[share][:, None, None] * window_embeddings[rows[share] - start_row]


def _bucket(n: int, max_batch: int) -> int:
    """Batch size to pad ``n`` windows to: the next power of two, at most ``max_batch``."""
    size = 1
    while size < n:
        size *= 2
    return min(size, max_batch)


class AudioFeatureExtractor:
    """Whisper-encoder features for LatentSync.

    ``params``: encoder params (a bare tree, e.g. from ``lipsync_jax.convert.whisper``); ``dims``: a
    ``WhisperEncoderConfig`` or a config mapping (OpenAI ``dims``, optionally under "dims").
    Windows are encoded by one jitted call per batch of up to ``max_batch`` 30 s windows
    (batches padded to a power of two, so few shapes compile).
    ``cache``: optional ``FeatureCache`` for ``clip_embeddings``.
    """

    def __init__(self, params: Mapping[str, Any], dims: WhisperEncoderConfig | Mapping[str, Any], *,
                 dtype: Any = jnp.float32, max_batch: int = 8, cache: FeatureCache | None = None,
                 attention_backend: str = "auto"):
        self.config = dims if isinstance(dims, WhisperEncoderConfig) else WhisperEncoderConfig.from_config(dims)
        self.params = params
        self.model = WhisperEncoder(self.config, dtype=dtype, attention_backend=attention_backend)
        self.max_batch = int(max_batch)
        self.cache = cache
        self._identity: str | None = None
        self._dtype_name = jnp.dtype(dtype).name
        self._encode = jax.jit(lambda p, mel: self.model.apply({"params": p}, mel)[0])

    @property
    def identity(self) -> str:
        """Cache identity: encoder dims, compute dtype and a fingerprint of the params."""
        if self._identity is None:
            extra = f"whisper_encoder|{self.config}|{self._dtype_name}"
            self._identity = f"whisper-{params_fingerprint(self.params, extra)}"
        return self._identity

    def log_mel(self, audio: np.ndarray) -> np.ndarray:
        return log_mel_spectrogram(audio, self.config.n_mels)

    def encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """(w, 3000, n_mels) mel windows -> (w, n_ctx, n_layer + 1, d) float32."""
        outputs = []
        for start in range(0, windows.shape[0], self.max_batch):
            batch = windows[start:start + self.max_batch]
            size = _bucket(batch.shape[0], self.max_batch)
            padded = np.zeros((size,) + batch.shape[1:], np.float32)
            padded[:batch.shape[0]] = batch
            out = self._encode(self.params, jnp.asarray(padded))
            outputs.append(np.asarray(out[:batch.shape[0]], np.float32))
        return np.concatenate(outputs, axis=0)

    def _clip_embeddings(self, audio: np.ndarray) -> np.ndarray:
        windows, valid = mel_windows(self.log_mel(audio), self.config.n_frames)
        return stitch_windows(self.encode_windows(windows), valid)

    def _sliding_embeddings(self, audio: np.ndarray) -> np.ndarray:
        """Overlapping windows, each row from the window(s) it is central in (audio/windows.py);
        only the rows a window supplies are kept, batch by batch."""
        log_mel = self.log_mel(audio)
        window_rows = self.config.n_audio_ctx
        num_rows = log_mel.shape[1] // FRAMES_PER_EMBEDDING
        count = window_count(num_rows, "sliding", window_rows)
        starts = window_start_rows(count, "sliding", window_rows)
        all_rows = np.arange(num_rows)
        source, fade = row_sources(all_rows, "sliding", window_rows, count)  # (T,), (T,)
        embeddings = None
        for first in range(0, count, self.max_batch):
            batch = range(first, min(first + self.max_batch, count))
            windows, _ = mel_windows(log_mel, self.config.n_frames,
                                     [int(starts[w]) * FRAMES_PER_EMBEDDING for w in batch])
            encoded = self.encode_windows(windows)  # (b, n_ctx, layers, d)
            if embeddings is None:
                embeddings = np.zeros((num_rows,) + encoded.shape[2:], np.float32)
            for k, w in enumerate(batch):
                add_window_rows(embeddings, encoded[k], int(starts[w]), w, all_rows, source, fade)
        return embeddings

    def clip_embeddings(self, audio: np.ndarray, windows: str = "latentsync") -> np.ndarray:
        """16 kHz mono audio (n,) -> (T, n_layer + 1, d) float32, 50 rows per second.

        ``windows``: ``"latentsync"`` (disjoint 30 s windows, LatentSync's) or ``"sliding"``
        (overlapping windows, no seam every 30 s); same T (see the module docstring)."""
        audio = np.asarray(audio, np.float32)
        if check_audio_windows(windows) == "latentsync":
            compute, identity = (lambda: self._clip_embeddings(audio)), self.identity
        else:
            compute, identity = (lambda: self._sliding_embeddings(audio)), f"{self.identity}-{windows}"
        if self.cache is None:
            return compute()
        return self.cache.get_or_compute(audio, identity, compute)

    def frame_windows(self, audio: np.ndarray, fps: float = 25.0,
                      audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH,
                      windows: str = "latentsync") -> np.ndarray:
        """16 kHz mono audio -> (N, 10 * (n_layer + 1), d) per-video-frame windows ((N, 50, 384)
        for tiny), N as LatentSync counts frames (see the module docstring); ``windows`` as in
        ``clip_embeddings``."""
        embeddings = self.clip_embeddings(audio, windows)
        return gather_frame_windows(embeddings, frame_chunk_indices(len(embeddings), fps, audio_feat_length))
