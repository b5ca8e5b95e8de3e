"""Audio-visual sync score with a SyncNet: slide 16-frame windows over a face track, compare
each visual window with the audio windows around it, and report the mean cosine similarity at
offset 0 and the audio offset (in video frames) that maximises it.

Windows follow LatentSync's SyncNet data: visual window i = frames i..i+15 (lower half of the
aligned face, RGB stacked on channels in ``(f c)`` order), audio window j = the 52 SyncNet-mel
columns starting at column ``int(80 * j / fps)`` (80 mel columns per second).

Offset convention: at offset ``d`` visual window i is paired with audio window ``i + d``; a
positive best offset means the matching sound comes ``d`` frames AFTER the picture (the audio
track lags the video). Only pairs that exist for a given offset are averaged.

Confidence: ``best mean similarity - median over all tested offsets`` (the similarity form of
SyncNet's "median distance - min distance" AV confidence): near 0 when no offset stands out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models.syncnet import stack_frames

FRAMES_PER_WINDOW = 16
MEL_STEPS_PER_WINDOW = 52
MEL_STEPS_PER_SECOND = 80

Embed = Callable[[Any, jax.Array], jax.Array]  # (params, batch of windows) -> (b, c) embeddings


class SyncScoreError(ValueError):
    """Inputs too short or malformed for sync scoring."""


@dataclasses.dataclass(frozen=True)
class SyncScore:
    offsets: np.ndarray  # (k,) tested audio offsets in frames
    mean_similarity: np.ndarray  # (k,) mean cosine similarity per offset (NaN: no pairs)
    similarity_at_zero: float  # mean cosine similarity at offset 0
    best_offset: int  # offset with the highest mean similarity
    best_similarity: float
    confidence: float  # best_similarity - median(mean_similarity)
    num_windows: int  # visual windows scored
    # (num_windows, k) similarity of visual window i with audio window i + offsets[k] (NaN: none)
    window_similarity: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class SyncNetTower:
    """``(params, windows) -> embeddings`` for one tower of a ``StableSyncNet`` (hashable, so
    it can be a static argument of the jitted window embedding)."""

    model: Any  # lipsync_jax.models.syncnet.StableSyncNet
    tower: str  # "visual" or "audio"

    def __call__(self, params: Any, windows: jax.Array) -> jax.Array:
        method = type(self.model).embed_visual if self.tower == "visual" else type(self.model).embed_audio
        return self.model.apply({"params": params}, windows, method=method)


def audio_window_starts(num_windows: int, fps: float = 25.0) -> np.ndarray:
    """Mel column where audio window j starts: ``int(80 * j / fps)``."""
    return np.array([int(MEL_STEPS_PER_SECOND * j / fps) for j in range(num_windows)], np.int32)


def _map_batches(fn, starts: jax.Array, batch_size: int) -> jax.Array:
    """``fn(batch_of_starts)`` over ``starts`` in fixed batches (tail padded with the last
    start and dropped): one compiled body, memory bounded by one batch."""
    n = starts.shape[0]
    num_batches = -(-n // batch_size)
    padded = jnp.concatenate([starts, jnp.full((num_batches * batch_size - n,), starts[-1], starts.dtype)])
    out = jax.lax.map(fn, padded.reshape(num_batches, batch_size))
    return out.reshape((num_batches * batch_size,) + out.shape[2:])[:n]


@functools.partial(jax.jit, static_argnames=("embed", "batch_size"))
def visual_window_embeddings(embed: Embed, params: Any, frames: jax.Array, starts: jax.Array,
                             batch_size: int = 16) -> jax.Array:
    """Embeddings (len(starts), c) of the 16-frame windows of ``frames`` (n, h, w, 3) starting
    at ``starts``; each window is (h, w, 48) with channel = 3 * frame + rgb."""
    _, h, w, c = frames.shape

    def window(start):
        clip = jax.lax.dynamic_slice(frames, (start, 0, 0, 0), (FRAMES_PER_WINDOW, h, w, c))
        return stack_frames(clip)  # (h, w, (f c))

    return _map_batches(lambda s: embed(params, jax.vmap(window)(s)), starts, batch_size)


@functools.partial(jax.jit, static_argnames=("embed", "batch_size"))
def audio_window_embeddings(embed: Embed, params: Any, mel: jax.Array, starts: jax.Array,
                            batch_size: int = 16) -> jax.Array:
    """Embeddings (len(starts), c) of the (80, 52, 1) SyncNet-mel windows of ``mel`` (80, T)
    starting at the mel columns ``starts``."""
    bins = mel.shape[0]

    def window(start):
        return jax.lax.dynamic_slice(mel, (0, start), (bins, MEL_STEPS_PER_WINDOW))[..., None]

    return _map_batches(lambda s: embed(params, jax.vmap(window)(s)), starts, batch_size)


def score_from_embeddings(vision_embeds: np.ndarray, audio_embeds: np.ndarray,
                          max_offset: int = 15) -> SyncScore:
    """Offset search on precomputed unit embeddings: ``vision_embeds`` (nv, c) for visual
    windows 0..nv-1 and ``audio_embeds`` (na, c) for audio windows 0..na-1."""
    vision_embeds = np.asarray(vision_embeds, np.float64)
    audio_embeds = np.asarray(audio_embeds, np.float64)
    sims = vision_embeds @ audio_embeds.T  # (nv, na): window i vs audio window j
    offsets = np.arange(-max_offset, max_offset + 1)
    mean_similarity = np.full(len(offsets), np.nan)
    window_similarity = np.full((sims.shape[0], len(offsets)), np.nan)
    for k, d in enumerate(offsets):
        pairs = np.diagonal(sims, offset=d)  # sims[i, i + d] for every i where both exist
        if pairs.size:
            mean_similarity[k] = pairs.mean()
            first = max(0, -d)  # visual window of pairs[0]
            window_similarity[first:first + pairs.size, k] = pairs
    if np.all(np.isnan(mean_similarity)):
        raise SyncScoreError("no visual/audio window pairs within the offset range")
    best = int(np.nanargmax(mean_similarity))
    zero = mean_similarity[max_offset]
    return SyncScore(offsets=offsets, mean_similarity=mean_similarity, similarity_at_zero=float(zero),
                     best_offset=int(offsets[best]), best_similarity=float(mean_similarity[best]),
                     confidence=float(mean_similarity[best] - np.nanmedian(mean_similarity)),
                     num_windows=int(vision_embeds.shape[0]), window_similarity=window_similarity)


def sync_score_with(embed_visual: Embed, embed_audio: Embed, params: Any, frames: Any, mel: Any,
                    fps: float = 25.0, max_offset: int = 15, batch_size: int = 16) -> SyncScore:
    """Sync score with arbitrary window embedders (``embed(params, windows) -> (b, c)`` unit
    vectors). ``frames`` (n, h, w, 3) exactly as the visual embedder takes them per frame;
    ``mel`` (80, T) SyncNet mel of the whole audio."""
    frames = jnp.asarray(frames)
    mel = jnp.asarray(mel)
    if frames.ndim != 4:
        raise SyncScoreError(f"frames must be (n, h, w, c), got shape {frames.shape}")
    if mel.ndim != 2:
        raise SyncScoreError(f"mel must be (mel_bins, time), got shape {mel.shape}")
    num_visual = frames.shape[0] - FRAMES_PER_WINDOW + 1
    if num_visual < 1:
        raise SyncScoreError(f"need at least {FRAMES_PER_WINDOW} frames, got {frames.shape[0]}")
    # audio windows that exist and that some visual window can be paired with
    candidates = audio_window_starts(num_visual + max_offset, fps)
    audio_starts = candidates[candidates + MEL_STEPS_PER_WINDOW <= mel.shape[1]]
    if audio_starts.size == 0:
        raise SyncScoreError(f"mel has {mel.shape[1]} columns; one window needs {MEL_STEPS_PER_WINDOW}")
    vision_embeds = visual_window_embeddings(embed_visual, params, frames, jnp.arange(num_visual), batch_size)
    audio_embeds = audio_window_embeddings(embed_audio, params, mel, jnp.asarray(audio_starts), batch_size)
    return score_from_embeddings(np.asarray(vision_embeds), np.asarray(audio_embeds), max_offset)


def sync_score(model: Any, params: Any, frames: Any, mel: Any, fps: float = 25.0, max_offset: int = 15,
               batch_size: int = 16, lower_half: bool = True) -> SyncScore:
    """Sync score of aligned faces ``frames`` (n, h, w, 3) in [-1, 1] (256x256 for the pixel
    SyncNets) against ``mel`` (80, T), the SyncNet mel of the audio, with a ``StableSyncNet``.
    ``lower_half`` crops each face to its lower half first, as LatentSync feeds the SyncNet."""
    frames = jnp.asarray(frames, jnp.float32)
    if lower_half:
        frames = frames[:, frames.shape[1] // 2:]
    return sync_score_with(SyncNetTower(model, "visual"), SyncNetTower(model, "audio"), params, frames,
                           jnp.asarray(mel, jnp.float32), fps, max_offset, batch_size)
