"""Reusing an avatar's VAE encodes: the chunk program fed with cached posterior moments.

The device program (program.py) VAE-encodes, for every chunk, the masked and the reference
(unmasked) face of each frame, then samples the latents with the job's keys. The encoder's
output, the posterior mean and log-variance, depends only on the aligned face, so an avatar
cache (avatar_cache.py) stores it once per face: ``encode_moments`` -> (n, r, r, 16) float32 =
[masked mean | masked logvar | reference mean | reference logvar].

A job that has them passes ``FaceMoments(faces, moments)`` to the engine; the chunk dispatcher
(dispatch.py) looks each batch's faces up by a digest of their bytes (so stand-ins and padding
need no bookkeeping) and runs ``MomentsChunkProgram`` when all are known: it samples the latents
from the moments with exactly the keys the encoding program uses (``split(fold_in(vae_key,
chunk), 2f)``: masked frames first, then reference frames) and skips the encoder; any other
batch runs the usual program. Same results, no encoder FLOPs. Overlapping windows (``overlap`` K
> 0: program.py's module doc) too: the twin then takes and returns the tail trajectory like the
encoding program, so a chain of windows may switch between the two programs.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import threading
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from lipsync_jax.models.vae import AutoencoderKL, sample_posterior
from lipsync_jax.pipeline.avatar_cache import tree_fingerprint
from lipsync_jax.pipeline.chunk import decode_and_paste
from lipsync_jax.pipeline.placement import DATA_AXIS, shard_chunks
from lipsync_jax.pipeline.program import denoise, mask_arrays

MOMENT_CHANNELS = 16  # 4 latent channels x (masked mean, masked logvar, ref mean, ref logvar)


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


def _scaled_sample(vae: AutoencoderKL, mean: jax.Array, logvar: jax.Array, keys: jax.Array) -> jax.Array:
    """As ``encode_frames``: one posterior sample per frame from its own key, then the scaling."""
    z = jax.vmap(lambda m, lv, k: sample_posterior(m[None], lv[None], k)[0])(mean, logvar, keys)
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def generate_from_moments(models, unet_params, vae_params, faces, moments, audio, chunk_indices, noise,
                          vae_key_data, keep_mask, latent_mask, prev_tail=None, use_prev_tail=None, *, num_steps,
                          guidance_scale, sampler_options, overlap=0):
    """The per-device body: like program.generate_chunks with the encoder replaced by sampling
    from ``moments`` (b, f, r, r, 16); with ``overlap`` it returns (faces, tail) as that does."""
    b, f = faces.shape[:2]
    vae_key = jax.random.wrap_key_data(vae_key_data)
    dtype = models.vae.dtype

    def sample(args):
        m, index = args
        keys = jax.random.split(jax.random.fold_in(vae_key, index), 2 * f)
        m = m.astype(dtype)
        return (_scaled_sample(models.vae, m[..., 0:4], m[..., 4:8], keys[:f]),
                _scaled_sample(models.vae, m[..., 8:12], m[..., 12:16], keys[f:]))

    masked, ref = jax.lax.map(sample, (moments, chunk_indices))
    pixel_values = faces.astype(jnp.float32) / 127.5 - 1.0
    init = jnp.broadcast_to(noise, (b,) + noise.shape[1:])
    mask = jnp.broadcast_to(latent_mask, (b, f) + latent_mask.shape)
    latents, tail = denoise(models, unet_params, init, mask, masked, ref, audio, num_steps=num_steps,
                            guidance_scale=guidance_scale, sampler_options=sampler_options, overlap=overlap,
                            prev_tail=prev_tail, use_prev_tail=use_prev_tail)
    decode = lambda args: decode_and_paste(models.vae, vae_params, args[0], args[1], keep_mask)  # noqa: E731
    faces = jax.lax.map(decode, (latents, pixel_values))
    return faces if tail is None else (faces, tail)


class MomentsChunkProgram:
    """``ChunkProgram``'s twin taking (B, f, r, r, 16) moments next to the faces (jit, compiled on
    first use; same mesh, shardings, batch and overlap: with overlap it takes ``prev_tail`` /
    ``use_prev_tail`` and returns ``(faces, tail)`` as ``ChunkProgram`` does)."""

    def __init__(self, inner):
        self.inner = inner
        models, mesh = inner.models, inner.mesh
        self.batch = inner.batch
        self.sharded = NamedSharding(mesh, P(DATA_AXIS))
        _pixel, keep, latent = mask_arrays(models)
        self.host_masks = (keep, latent)
        self._masks: tuple | None = None
        self.overlap = inner.overlap
        body = functools.partial(generate_from_moments, models, num_steps=inner.num_steps,
                                 guidance_scale=inner.guidance_scale, sampler_options=inner.sampler_options,
                                 overlap=self.overlap)
        rep, dat = P(), P(DATA_AXIS)
        specs = (rep, rep, dat, dat, dat, dat, rep, rep, rep, rep)
        if self.overlap:
            mapped = shard_chunks(body, mesh, in_specs=specs + (rep, rep), out_specs=(dat, rep))
        else:
            mapped = shard_chunks(body, mesh, in_specs=specs, out_specs=dat)
        self._jitted = jax.jit(mapped)
        self._compiled = None
        self._compile_lock = threading.Lock()

    def compile(self, unet_params, vae_params):
        """Compiles once (ahead of time, as ``ChunkProgram``); later calls return the same executable."""
        with self._compile_lock:
            if self._compiled is None:
                self._compiled = self._lower(unet_params, vae_params).compile()
            return self._compiled

    def _lower(self, unet_params, vae_params):
        m, f = self.inner.models, self.inner.models.num_frames
        shapes = self.inner.input_shapes()
        r = m.latent_size
        spec = lambda shape, dtype, sharding: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)  # noqa: E731
        abstract = self.inner._abstract  # the params' own shardings (replicated, or split over fsdp)
        rep = self.inner.replicated
        args = (abstract(unet_params), abstract(vae_params), spec(*shapes["faces"], self.sharded),
                spec((self.batch, f, r, r, MOMENT_CHANNELS), np.float32, self.sharded),
                spec(*shapes["audio"], self.sharded), spec(*shapes["chunk_indices"], self.sharded),
                spec(*shapes["noise"], rep), spec(*shapes["vae_key_data"], rep),
                *(jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep) for x in self.host_masks))
        if self.overlap:
            args += (spec(self.inner.tail_shape, np.float32, rep), spec((), np.bool_, rep))
        return self._jitted.lower(*args)

    @property
    def masks(self) -> tuple:
        if self._masks is None:
            self._masks = tuple(jax.device_put(m, self.inner.replicated) for m in self.host_masks)
        return self._masks

    def __call__(self, unet_params, vae_params, faces, moments, audio, chunk_indices, noise, vae_key_data,
                 prev_tail=None, use_prev_tail: bool = False):
        compiled = self.compile(unet_params, vae_params)
        faces, audio, chunk_indices = self.inner.put_batch(faces, audio, chunk_indices)
        moments = jax.device_put(np.ascontiguousarray(moments, np.float32), self.sharded)
        if not isinstance(noise, jax.Array):
            noise, vae_key_data = self.inner.put_job(noise, vae_key_data)
        args = (unet_params, vae_params, faces, moments, audio, chunk_indices, noise, vae_key_data, *self.masks)
        if not self.overlap:
            return compiled(*args)
        use = bool(use_prev_tail) and prev_tail is not None
        return compiled(*args, prev_tail if use else self.inner.empty_tail(),
                        jax.device_put(np.bool_(use), self.inner.replicated))


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
