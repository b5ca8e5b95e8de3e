"""Which source frame goes to which output frame, and how output frames are cut into chunks.

Pure functions of frame counts, no I/O. LatentSync's rules:
- the output has one frame per audio window; when the audio is longer than the video the video
  is looped ping-pong (forward, backward, forward, ...; ``loop_video``: each backward pass is the
  reversed video, so the turning frames appear twice), when it is shorter the video is cut;
- the UNet sees ``num_frames`` (16) frames at a time; here the last chunk is padded to full
  length by repeating its last frame (static shapes: one compiled sampler), and the padding is
  dropped after decoding.
"""

from __future__ import annotations

import math

import numpy as np

from lipsync_jax.diffusion.overlap import window_starts


def output_frame_count(num_samples: int, sample_rate: int, fps: float, num_windows: int) -> int:
    """Frames in the output: the audio duration times ``fps``, rounded, at most ``num_windows``
    (LatentSync writes one frame per audio window, i.e. up to two frames more than the audio
    lasts; we stop at the audio's end so the video and audio durations match)."""
    frames = int(round(num_samples * fps / sample_rate))
    return max(0, min(frames, int(num_windows)))


def pingpong_indices(num_source: int, num_output: int) -> np.ndarray:
    """(num_output,) int64: the source frame shown at each output frame (LatentSync's
    ``loop_video``): 0..n-1, n-1..0, 0..n-1, ... cut to ``num_output``."""
    if num_source < 1:
        raise ValueError(f"need at least one source frame, got {num_source}")
    if num_output <= num_source:
        return np.arange(num_output, dtype=np.int64)
    forward = np.arange(num_source, dtype=np.int64)
    loops = math.ceil(num_output / num_source)
    passes = [forward if i % 2 == 0 else forward[::-1] for i in range(loops)]
    return np.concatenate(passes)[:num_output]


def chunk_bounds(num_output: int, chunk_size: int = 16) -> list[tuple[int, int]]:
    """[(start, stop), ...] of consecutive output chunks; the last may be short."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(start, min(start + chunk_size, num_output)) for start in range(0, num_output, chunk_size)]


def pad_to_chunk(indices: np.ndarray, chunk_size: int) -> np.ndarray:
    """``indices`` (k,) with k <= chunk_size, padded to (chunk_size,) by repeating the last."""
    indices = np.asarray(indices)
    if not 0 < len(indices) <= chunk_size:
        raise ValueError(f"a chunk needs 1..{chunk_size} frames, got {len(indices)}")
    return np.concatenate([indices, np.repeat(indices[-1:], chunk_size - len(indices))])


def window_bounds(num_output: int, chunk_size: int = 16, overlap: int = 0,
                  lead_in: bool = False) -> list[tuple[int, int, int]]:
    """[(first, start, stop), ...] of overlapping windows (stride ``chunk_size - overlap``,
    ``diffusion.window_starts``): the window covers output frames first..stop (the last may be
    short, padded like a chunk) and writes start..stop (all of the first window, frames
    ``overlap``.. of the others), so the written ranges tile 0..num_output. ``overlap`` 0 gives
    ``chunk_bounds``.

    ``lead_in``: the windows END at multiples of the stride S instead (window j covers
    (j + 1) S - chunk_size .. (j + 1) S and writes its last S frames), so the first window needs
    only S frames; its positions before frame 0 show frame 0 (``window_frames``). Live sessions
    use this layout: a window can start as soon as the audio of its S new frames is there."""
    if num_output < 1:
        return []
    if lead_in:
        stride = chunk_size - overlap
        return [(start + stride - chunk_size, start, min(start + stride, num_output))
                for start in range(0, num_output, stride)]
    starts = window_starts(num_output, chunk_size, overlap)
    return [(s, s if j == 0 else s + overlap, min(s + chunk_size, num_output)) for j, s in enumerate(starts)]


def window_frames(first: int, stop: int) -> np.ndarray:
    """The output frame at each position of the window first..stop (a lead-in window's positions
    before frame 0 repeat frame 0)."""
    return np.maximum(np.arange(first, stop), 0)


def window_at(index: int, chunk_size: int = 16, overlap: int = 0, lead_in: bool = False) -> tuple[int, int, int]:
    """(first, start, stop) of window ``index`` of an output of unknown length (a live stream):
    ``window_bounds``' entry before the last window is cut to the output's end."""
    stride = chunk_size - overlap
    if lead_in:
        return (index + 1) * stride - chunk_size, index * stride, (index + 1) * stride
    first = index * stride
    return first, first if index == 0 else first + overlap, first + chunk_size
