"""Pure helpers that cut one training sample out of a clip, as LatentSync's datasets do.

UNet (``latentsync/data/unet_dataset.py``, 1.5/1.6):
- target window start ~ uniform{0 .. n - f}; reference window start ~ uniform{0 .. n - f},
  redrawn while it lies in (start - f, start + f), so the two windows never share a frame;
  clips shorter than 3 f frames are not used,
- pixels: uint8 / 255, normalised with mean 0.5, std 0.5 -> [-1, 1],
- masked pixels = pixels * mask (mask.png resized to the resolution, 3 channels in [0, 1]:
  1 keeps a pixel, 0 blanks the lower face); the UNet's mask is the mask's first channel,
- SyncNet mel crop: 52 columns from int(80 * start / fps) (``syncnet_mel_crop``),
- audio embeddings (LatentSync's ``crop_overlap_audio_window``, called in its training loop):
  frame i takes Whisper rows 2i - 4 .. 2i + 5 (centre int(i * 50 / fps), clamped to the rows).
SyncNet (``syncnet_dataset.py``): positive = frames at ``start`` with the mel at ``start``;
negative = frames at another start (any start != ``start``) with the mel at ``start``, so the
audio is shifted against the picture; label 1 / 0 with probability 1/2 each; clips shorter than
2 f frames are not used.

One difference, for determinism without retries: the target start is drawn only among
starts whose mel crop fits in the clip's audio (LatentSync draws from all starts and retries
another clip when the crop falls short, which with full-length audio never happens).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lipsync_jax.audio.features import DEFAULT_FEAT_LENGTH
from lipsync_jax.audio.syncnet_mel import mel_window_length


class ClipTooShortError(ValueError):
    """A clip without room for the requested windows."""


def max_mel_start(num_mel_columns: int, num_frames: int, fps: float = 25.0) -> int:
    """Largest start frame whose SyncNet mel crop fits in ``num_mel_columns`` (-1: none)."""
    length = mel_window_length(num_frames)
    start = -1
    while int(80.0 * ((start + 1) / float(fps))) + length <= num_mel_columns:
        start += 1
    return start


def _target_start(rng: np.random.Generator, total_frames: int, num_frames: int, max_start: int | None,
                  min_windows: int, what: str) -> int:
    """A uniformly drawn window start whose window (and mel crop, via ``max_start``) fits the clip."""
    if total_frames < min_windows * num_frames:
        raise ClipTooShortError(f"clip has {total_frames} frames; the {what} sample needs >= "
                                f"{min_windows * num_frames}")
    last = total_frames - num_frames
    if max_start is not None:
        if max_start < 0:
            raise ClipTooShortError("the clip's audio is too short for any SyncNet mel window")
        last = min(last, max_start)
    return int(rng.integers(0, last + 1))


def sample_target_and_reference(rng: np.random.Generator, total_frames: int, num_frames: int,
                                max_start: int | None = None) -> tuple[int, int]:
    """(target start, reference start) with non-overlapping windows (see the module docstring)."""
    start = _target_start(rng, total_frames, num_frames, max_start, min_windows=3, what="UNet")
    while True:
        ref_start = int(rng.integers(0, total_frames - num_frames + 1))
        if not start - num_frames < ref_start < start + num_frames:
            return start, ref_start


def sample_syncnet_windows(rng: np.random.Generator, total_frames: int, num_frames: int,
                           max_start: int | None = None) -> tuple[int, int, bool]:
    """(audio start, frames start, in_sync): frames start == audio start when in sync."""
    start = _target_start(rng, total_frames, num_frames, max_start, min_windows=2, what="SyncNet")
    while True:
        wrong = int(rng.integers(0, total_frames - num_frames + 1))
        if wrong != start:
            break
    in_sync = bool(rng.integers(0, 2))
    return start, start if in_sync else wrong, in_sync


def audio_row_indices(frame_indices: Sequence[int] | np.ndarray, num_rows: int, fps: float = 25.0,
                      audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH) -> np.ndarray:
    """(len(frame_indices), rows) Whisper rows per frame: centre int(i * 50 / fps), offsets
    -2 * left .. 2 * right + 1, clamped to [0, num_rows - 1] (``frame_chunk_indices`` rows)."""
    left, right = int(audio_feat_length[0]), int(audio_feat_length[1])
    offsets = np.arange(-left * 2, (right + 1) * 2)
    centres = np.array([int(int(i) * 50 / fps) for i in frame_indices])
    return np.clip(centres[:, None] + offsets[None, :], 0, num_rows - 1)


def to_pixels(frames: np.ndarray) -> np.ndarray:
    """uint8 (..., 3) -> float32 in [-1, 1]: (x / 255 - 0.5) / 0.5."""
    return (frames.astype(np.float32) / 255.0 - 0.5) / 0.5


def apply_mask(pixels: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(f, h, w, 3) pixels and the (h, w, 3) mask -> masked pixels (f, h, w, 3), masks (f, h, w, 1)."""
    masked = pixels * mask[None]
    masks = np.broadcast_to(mask[None, :, :, :1], pixels.shape[:-1] + (1,)).astype(np.float32)
    return masked.astype(np.float32), masks
