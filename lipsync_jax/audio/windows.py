"""Which 30 s Whisper windows encode a clip, and from which window(s) each embedding row is taken.

Whisper's encoder sees W = 1500 embedding rows (30 s, 50 rows per second) at a time. Two layouts,
both giving the same T = (mel frames) // 2 rows, so the per-frame window rows
(``features.frame_chunk_indices``) and everything after them stay the same:

- ``latentsync`` (LatentSync's ``audio2feat``): disjoint windows starting every 30 s. The last row
  of a window sees no audio after it and the next row none before it, and the rows' positions
  jump from 1499 to 0: the features jump at every 30 s boundary (a lip glitch every 30 s).
- ``sliding``: windows start every H = 950 rows (19 s). Window k supplies the rows from C = 250
  rows (5 s) after its start to C rows before its end, so every row it supplies has at least 5 s
  of audio on both sides where the clip has them (the clip's first 5 s have less before them, its
  last rows less after them). Consecutive windows' supplies overlap by B = 50 rows (1 s), and
  there the row is a linear cross-fade from the earlier window to the later one. The cross-fade
  matters: the same audio at another position in another window gives rows about as different as
  two unrelated rows (Whisper adds a position table), so a hard switch between two well-placed
  windows still jumps; faded over 50 rows the change per row stays that of an ordinary row.
  Windows are added only while the clip extends past the previous one: a clip of at most 30 s
  has the one window LatentSync encodes and identical rows; longer clips need
  1 + ceil((T - 1500) / 950) windows instead of ceil(T / 1500), i.e. 3.2 per minute of audio
  instead of 2 (1.6x the Whisper encoder's work, bounded by that).

A row's source is ``(window, fade)``: its features are ``(1 - fade) * rows of window`` plus
``fade * rows of window + 1`` (fade = 0 outside the cross-fades and always for ``latentsync``).
Online (live mode) the clip's length is unknown and the sliding grid goes on past the end
(``num_windows=None``); a row still lands where it has >= 5 s of audio before it.

``seam_ratios`` measures the seam without trained weights: at each pair of neighbouring frames
whose rows come from other sources, the change of the features between them divided by the
median neighbour change over the clip.
"""

from __future__ import annotations

import numpy as np

AUDIO_WINDOWS = ("latentsync", "sliding")


def check_audio_windows(name: str) -> str:
    """``name`` if it is one of ``AUDIO_WINDOWS``, else a one-line ValueError."""
    if name not in AUDIO_WINDOWS:
        raise ValueError(f"audio windows {name!r}: must be one of {', '.join(AUDIO_WINDOWS)}")
    return name


def sliding_layout(window_rows: int) -> tuple[int, int, int]:
    """(context C, cross-fade B, hop H) in rows for windows of ``window_rows``: (250, 50, 950)."""
    context, fade = window_rows // 6, window_rows // 30
    return context, fade, window_rows - 2 * context - fade


def window_count(num_rows: int, windows: str, window_rows: int = 1500) -> int:
    """Encoder windows the layout needs for a clip of ``num_rows`` rows (at least 1)."""
    check_audio_windows(windows)
    if num_rows <= window_rows:
        return 1
    if windows == "latentsync":
        return -(-num_rows // window_rows)
    return 1 + -(-(num_rows - window_rows) // sliding_layout(window_rows)[2])


def window_start_rows(count: int, windows: str, window_rows: int = 1500) -> np.ndarray:
    """(count,) first row of each window (its first mel frame is 2 * row)."""
    step = window_rows if check_audio_windows(windows) == "latentsync" else sliding_layout(window_rows)[2]
    return np.arange(count, dtype=np.int64) * step


def row_sources(rows: np.ndarray, windows: str, window_rows: int = 1500,
                num_windows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(window, fade) of each embedding row (global row indices, any shape; see the module doc).

    ``num_windows``: the clip's ``window_count``; None for an open-ended stream (live mode)."""
    rows = np.asarray(rows, np.int64)
    if check_audio_windows(windows) == "latentsync":
        owner = rows // window_rows
        if num_windows is not None:
            owner = np.minimum(owner, num_windows - 1)
        return owner, np.zeros(rows.shape, np.float32)
    context, fade_rows, hop = sliding_layout(window_rows)
    latest = np.maximum(rows - context, 0) // hop  # the last window whose supply has begun
    if num_windows is not None:
        latest = np.minimum(latest, num_windows - 1)
    into = rows - (latest * hop + context)  # rows since that window's supply began
    fading = (latest > 0) & (into < fade_rows)
    fade = np.where(fading, (into + 0.5) / fade_rows, 0.0).astype(np.float32)
    return np.where(fading, latest - 1, latest), fade


def source_ids(rows: np.ndarray, windows: str, window_rows: int = 1500,
               num_windows: int | None = None) -> np.ndarray:
    """One float per row naming its source (window + fade): equal ids = the same source."""
    window, fade = row_sources(rows, windows, window_rows, num_windows)
    return window + fade.astype(np.float64)


def seam_ratios(frame_features: np.ndarray, frame_sources: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Seam metric of per-frame features.

    ``frame_features`` (N, ...) per-frame audio windows; ``frame_sources`` (N, rows) the source of
    each of a frame's rows (``source_ids`` of ``frame_chunk_indices``). Returns ``(pairs, ratios)``:
    the frames i whose sources differ from frame i + 1's, and ||f[i+1] - f[i]|| divided by the
    median of ||f[j+1] - f[j]|| over all j (1 = an ordinary step from one frame to the next)."""
    flat = np.asarray(frame_features, np.float64).reshape(len(frame_features), -1)
    steps = np.linalg.norm(np.diff(flat, axis=0), axis=1)  # (N - 1,)
    sources = np.asarray(frame_sources)
    pairs = np.flatnonzero(np.any(sources[1:] != sources[:-1], axis=tuple(range(1, sources.ndim))))
    return pairs, steps[pairs] / max(float(np.median(steps)), 1e-12)
