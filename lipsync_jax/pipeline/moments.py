"""Reusing an avatar's VAE encodes: the chunk program fed with cached posterior moments.

The device program (program.py) VAE-encodes, for every chunk, the masked and the reference
(unmasked) face of each frame, then samples the latents with the job's keys. The encoder's
output, the posterior mean and log-variance, depends only on the aligned face, so an avatar
cache (avatar_cache.py) stores it once per face: ``encode_moments`` -> (n, r, r, 16) float32 =
[masked mean | masked logvar | reference mean | reference logvar].

A job that has them passes ``FaceMoments(faces, moments)`` to the engine; the chunk dispatcher
(dispatch.py) looks each batch's faces up by a digest of their bytes (so stand-ins and padding
need no bookkeeping) and, when all are known, hands them to the chunk program, which then samples
the latents from them with exactly the keys the encoder path uses and skips the encoder
(program.py; the same compiled program). Same results, no encoder FLOPs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models.vae import AutoencoderKL
from lipsync_jax.pipeline.avatar_cache import tree_fingerprint
from lipsync_jax.pipeline.program import mask_arrays


def face_digest(face: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(face).tobytes(), digest_size=16).digest()


@functools.partial(jax.jit, static_argnames=("vae",))
def _encode_moments(vae: AutoencoderKL, vae_params: Any, faces: jax.Array, pixel_mask: jax.Array) -> jax.Array:
    pixel_values = faces.astype(jnp.float32) / 127.5 - 1.0
    images = jnp.concatenate([pixel_values * pixel_mask, pixel_values])
    mean, logvar = vae.apply({"params": vae_params}, images, method=AutoencoderKL.encode)
    n = faces.shape[0]
    parts = (mean[:n], logvar[:n], mean[n:], logvar[n:])
    return jnp.concatenate([p.astype(jnp.float32) for p in parts], axis=-1)


def encode_moments(models, faces: np.ndarray, batch: int | None = None) -> np.ndarray:
    """(n, R, R, 3) uint8 aligned faces -> (n, r, r, 16) float32 posterior moments (see module doc),
    ``batch`` faces per call (default: the chunk length, as the engine encodes them)."""
    batch = int(batch or models.num_frames)
    pixel_mask = jnp.asarray(mask_arrays(models)[0])
    out = []
    for start in range(0, len(faces), batch):
        part = np.asarray(faces[start:start + batch], np.uint8)
        real = len(part)
        if real < batch:  # one compiled shape: pad with the last face
            part = np.concatenate([part, np.repeat(part[-1:], batch - real, axis=0)])
        out.append(np.asarray(_encode_moments(models.vae, models.vae_params, jnp.asarray(part), pixel_mask))[:real])
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def vae_fingerprint(models) -> str:
    """Which VAE (weights, dtype, resolution) made an avatar entry's moments."""
    return f"{tree_fingerprint(models.vae_params)}-{models.dtype}-{models.resolution}"


def add_moments(models, track):
    """``track`` (an ``AvatarTrack``) with its faces' VAE moments, tagged with the VAE's fingerprint."""
    return dataclasses.replace(track, latents=encode_moments(models, track.faces),
                               vae_fingerprint=vae_fingerprint(models))


def track_moments(models, track, fingerprint: str | None = None) -> FaceMoments | None:
    """The track's cached moments when they were made by this VAE (``fingerprint``: its
    ``vae_fingerprint``, computed when not given), else None."""
    if track.latents is None:
        return None
    if track.vae_fingerprint != (fingerprint or vae_fingerprint(models)):
        return None
    return FaceMoments(track.faces, track.latents)


class FaceMoments:
    """A job's cached VAE moments by face: ``lookup(faces)`` gives (B, f, r, r, 16) moments of a
    (B, f, R, R, 3) face batch, or None if any face is unknown."""

    def __init__(self, faces: np.ndarray, moments: np.ndarray):
        if len(faces) != len(moments):
            raise ValueError(f"{len(faces)} faces but {len(moments)} moments")
        self._by_digest = {face_digest(face): m for face, m in zip(faces, moments)}

    def __len__(self) -> int:
        return len(self._by_digest)

    def lookup(self, faces: np.ndarray) -> np.ndarray | None:
        flat = faces.reshape((-1,) + faces.shape[2:])
        found = [self._by_digest.get(face_digest(face)) for face in flat]
        if any(m is None for m in found):
            return None
        return np.stack(found).reshape(faces.shape[:2] + found[0].shape)
