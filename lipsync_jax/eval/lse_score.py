"""LSE-C / LSE-D of one face track, as syncnet_python's ``SyncNetInstance.evaluate`` (LatentSync's
eval/syncnet) computes them with the classic SyncNet.

Inputs: 224x224 BGR uint8 face crops at 25 fps and 16 kHz mono audio at int16 scale.
- MFCC (``lipsync_jax.audio.mfcc``): 100 columns per second, 4 per video frame.
- ``min_length = min(num_frames, num_samples // 640)``; windows ``v = 0 .. min_length - 6``
  (``lastframe = min_length - 5``, exclusive): lip window = frames v..v+4, audio window = MFCC
  columns 4v..4v+19. At least 6 frames of both are needed.
- distances: for every window i and shift j in 0..2*vshift, ``||lip_i - aud_pad[i + j] + 1e-6||``
  (torch's ``pairwise_distance``) where ``aud_pad`` is the audio embeddings with vshift ZERO
  rows on both ends (windows near the ends are compared with zeros, as the original does).
- ``mean_dists[j]`` = mean over windows; ``av_offset = vshift - argmin``; LSE-D ``min_dist`` =
  the minimum; LSE-C ``conf = median(mean_dists) - min_dist``. Per window:
  ``window_conf = median(mean_dists) - dists[:, argmin]`` (and its 9-tap median filter, the
  original's framewise confidence).
The SyncNet runs jitted on fixed-size batches (the last one padded), so one compilation serves
every video.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from lipsync_jax.audio.mfcc import mfcc
from lipsync_jax.models.lse_syncnet import LIP_FRAMES, MFCC_STEPS, LSESyncNet

SAMPLES_PER_FRAME = 640  # 16 kHz / 25 fps
MFCC_PER_FRAME = 4
DEFAULT_VSHIFT = 15
PAIRWISE_EPS = 1e-6


class LSEInputError(ValueError):
    """Too little video or audio for one 5-frame window (message says which)."""


@dataclasses.dataclass(frozen=True)
class LSEScore:
    offsets: np.ndarray  # (2 * vshift + 1,) audio shift in frames, -vshift..vshift
    mean_dists: np.ndarray  # (2 * vshift + 1,) mean distance per shift (index j <-> offset vshift - j)
    dists: np.ndarray  # (num_windows, 2 * vshift + 1) per-window distance per shift
    av_offset: int  # vshift - argmin(mean_dists)
    min_dist: float  # LSE-D
    conf: float  # LSE-C
    window_conf: np.ndarray  # (num_windows,) median(mean_dists) - dists[:, argmin]
    window_conf_smoothed: np.ndarray  # 9-tap median filter of window_conf (the original's framewise conf)
    num_windows: int

    @property
    def lse_d(self) -> float:
        return self.min_dist

    @property
    def lse_c(self) -> float:
        return self.conf

    def dists_by_offset(self) -> tuple[np.ndarray, np.ndarray]:
        """(offsets ascending, mean distance at each) for plotting distance vs offset."""
        order = np.argsort(self.offsets)
        return self.offsets[order], self.mean_dists[order]


def num_windows(num_frames: int, num_samples: int) -> int:
    return min(num_frames, num_samples // SAMPLES_PER_FRAME) - LIP_FRAMES


def check_lengths(num_frames: int, num_samples: int, what: str = "input") -> int:
    """Number of windows; ``LSEInputError`` naming what is too short when there are none."""
    count = num_windows(num_frames, num_samples)
    if count >= 1:
        return count
    if num_samples // SAMPLES_PER_FRAME <= LIP_FRAMES:
        raise LSEInputError(f"{what}: audio too short ({num_samples / 16000:.3f} s; LSE needs more than "
                            f"{LIP_FRAMES} frames = {(LIP_FRAMES + 1) * SAMPLES_PER_FRAME / 16000:.2f} s)")
    raise LSEInputError(f"{what}: only {num_frames} face frames; LSE needs at least {LIP_FRAMES + 1}")


def mfcc_columns(audio_int16_scale: np.ndarray) -> np.ndarray:
    """(13, T) float32 MFCCs of 16 kHz audio given at int16 scale."""
    return mfcc(np.asarray(audio_int16_scale, np.float64), 16000).T.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _embed_fns(model: LSESyncNet, batch_size: int):
    @jax.jit
    def lip(params, slab):  # slab: (batch + 4, 224, 224, 3) -> (batch, d) and (batch, 512)
        windows = jnp.stack([slab[k:k + batch_size] for k in range(LIP_FRAMES)], axis=1).astype(jnp.float32)
        return model.apply({"params": params}, windows, method=LSESyncNet.embed_lip_with_features)

    @jax.jit
    def audio(params, columns):  # columns: (13, 4 * (batch - 1) + 20)
        windows = jnp.stack([columns[:, MFCC_PER_FRAME * v:MFCC_PER_FRAME * v + MFCC_STEPS]
                             for v in range(batch_size)])[..., None]
        return model.apply({"params": params}, windows, method=LSESyncNet.embed_audio)

    return lip, audio


def embed_windows(model: LSESyncNet, params: Any, faces_bgr: np.ndarray, mfcc_13xT: np.ndarray, count: int,
                  batch_size: int = 16, progress: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Embeddings of windows 0..count-1: (lip (count, d), audio (count, d), lip conv features
    (count, 512)). ``faces_bgr`` (n, 224, 224, 3) uint8; batches padded to ``batch_size``."""
    lip_fn, audio_fn = _embed_fns(model, int(batch_size))
    lips, feats, auds = [], [], []
    span = MFCC_PER_FRAME * (batch_size - 1) + MFCC_STEPS
    for start in range(0, count, batch_size):
        valid = min(batch_size, count - start)
        slab = faces_bgr[start:start + batch_size + LIP_FRAMES - 1]
        slab = np.concatenate([slab, np.zeros((batch_size + LIP_FRAMES - 1 - slab.shape[0], *slab.shape[1:]),
                                              slab.dtype)]) if slab.shape[0] < batch_size + LIP_FRAMES - 1 else slab
        cols = mfcc_13xT[:, MFCC_PER_FRAME * start:MFCC_PER_FRAME * start + span]
        if cols.shape[1] < span:
            cols = np.pad(cols, ((0, 0), (0, span - cols.shape[1])))
        lip, feat = lip_fn(params, slab)
        aud = audio_fn(params, cols)
        lips.append(np.asarray(lip)[:valid])
        feats.append(np.asarray(feat)[:valid])
        auds.append(np.asarray(aud)[:valid])
        if progress is not None:
            progress.update(valid)
    return np.concatenate(lips), np.concatenate(auds), np.concatenate(feats)


def sync_distances(lip: np.ndarray, audio: np.ndarray, vshift: int = DEFAULT_VSHIFT) -> LSEScore:
    """The offset search on window embeddings (see the module docstring)."""
    lip, audio = np.asarray(lip, np.float32), np.asarray(audio, np.float32)
    count, width = lip.shape[0], 2 * vshift + 1
    padded = np.concatenate([np.zeros((vshift, audio.shape[1]), np.float32), audio,
                             np.zeros((vshift, audio.shape[1]), np.float32)])
    index = np.arange(count)[:, None] + np.arange(width)[None, :]
    dists = np.linalg.norm(lip[:, None, :] - padded[index] + PAIRWISE_EPS, axis=-1)  # (count, width)
    mean_dists = dists.mean(axis=0)
    best = int(np.argmin(mean_dists))
    median = float(np.median(mean_dists))
    window_conf = (median - dists[:, best]).astype(np.float32)
    return LSEScore(offsets=vshift - np.arange(width), mean_dists=mean_dists.astype(np.float32),
                    dists=dists.astype(np.float32), av_offset=vshift - best, min_dist=float(mean_dists[best]),
                    conf=median - float(mean_dists[best]), window_conf=window_conf,
                    window_conf_smoothed=scipy.signal.medfilt(window_conf, kernel_size=9).astype(np.float32),
                    num_windows=count)


def lse_score(model: LSESyncNet, params: Any, faces_bgr: np.ndarray, audio_int16_scale: np.ndarray,
              vshift: int = DEFAULT_VSHIFT, batch_size: int = 16, what: str = "input",
              progress: Any = None) -> LSEScore:
    """LSE of one track: 224x224 BGR uint8 faces at 25 fps and the matching 16 kHz audio.
    ``progress``: a tqdm-like object updated with the number of windows done."""
    count = check_lengths(faces_bgr.shape[0], np.asarray(audio_int16_scale).shape[0], what)
    columns = mfcc_columns(audio_int16_scale)
    if progress is not None and getattr(progress, "total", None) is None:
        progress.total = count
    lip, aud, _ = embed_windows(model, params, faces_bgr, columns, count, batch_size, progress)
    return sync_distances(lip, aud, vshift)
