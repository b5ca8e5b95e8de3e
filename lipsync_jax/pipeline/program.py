"""The device program: one jitted call per batch of chunks, sharded over all local devices.

``ChunkProgram(models, mesh, num_steps=..., guidance_scale=..., chunks_per_device=...)`` compiles
(ahead of time, once per shape) a function that takes, for a batch of ``B`` chunks of
``f`` (16) aligned faces,

    faces          (B, f, R, R, 3)  uint8     the UNet input faces (stand-ins already chosen)
    audio          (B, f, T, D)     float32   the frames' Whisper windows
    chunk_indices  (B,)             int32     each chunk's position in the video (for its keys)
    moments        (B, f, r, r, 16) float32   cached VAE posterior moments of the faces (optional)

and returns the generated faces (B, f, R, R, 3) float32 in [-1, 1]. Inside ONE compiled program:
masked + reference VAE encode, the whole DDIM ``lax.scan`` (CFG branches stacked on the batch
axis of every UNet call), VAE decode and the paste-back of the pixels the mask keeps. Nothing
returns to the host in between. This is exactly ``ChunkGenerator`` (chunk.py, the
chunk-at-a-time reference) applied to each chunk: per chunk the same start noise, VAE keys
``fold_in(vae_key, chunk_index)``, the same ops; the result does not depend on ``B`` (tested).
Scheduler lcm (a consistency student) adds fresh noise between steps: chunk c's comes from
``fold_in(fold_in(vae_key, c), FRESH_NOISE_STREAM)``, each chunk sampled on its own stream (the
sampler vmapped over the chunks), so it does not depend on ``B`` either.

Devices: the batch axis is sharded over the ``data`` axis of ``mesh`` (``data_mesh()``: all local
devices, or the engine's ``(data, fsdp)`` mesh, pipeline/placement.py);
``B = chunks_per_device * (size of data)``. Weights are replicated (``replicate``), or, on a mesh
with fsdp > 1, split over ``fsdp`` (``sharding.place_weights``; every fsdp group holds the same
chunks). The body runs per data shard under ``shard_map`` (each shard encodes/decodes its own
chunks; no collectives over ``data``); with fsdp > 1 the ``fsdp`` axis is left to the compiler.
A streaming mode calls ``ChunkProgram.__call__`` directly on its own chunk batches.

Cached VAE moments (an avatar cache entry, pipeline/moments.py): when a call passes ``moments``,
the SAME program skips the encoder and samples the masked and reference latents from them with
exactly the keys the encoder path uses (``split(fold_in(vae_key, chunk), 2f)``: masked frames
first, then reference frames), chosen by ``lax.cond`` on a scalar: one compiled program serves
both (no second compile for the first cache hit), and the result equals encoding again.

Overlapping windows (``overlap`` K > 0): the batch holds CONSECUTIVE 16-frame windows
of one video in order (stride 16 - K, ``diffusion.window_starts``) denoised by
``diffusion.sample_windows``; the call takes the previous batch's tail trajectory ``prev_tail``
(num_steps + 1, K, r, r, 4) and ``use_prev_tail`` (bool scalar) and returns ``(faces, tail)``,
the tail staying on the device for the next call (no host sync). Windows are linked inside one
device, so the mesh must have one device. K = 0 is the program above, unchanged. With lcm the
windows of one call share the fresh-noise stream of the call's first window.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lipsync_jax.diffusion import empty_tail, initial_latents, sample_chunk, sample_windows
from lipsync_jax.diffusion.conditioning import latent_mask
from lipsync_jax.face import load_fixed_mask
from lipsync_jax.models.vae import sample_posterior
from lipsync_jax.pipeline.chunk import decode_and_paste, encode_faces
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.placement import DATA_AXIS, axis_size, shard_chunks

MOMENT_CHANNELS = 16  # 4 latent channels x (masked mean, masked logvar, ref mean, ref logvar)
FRESH_NOISE_STREAM = 1  # fold_in(chunk's VAE key, this): the key of the fresh noise of scheduler lcm


def data_mesh(devices=None) -> Mesh:
    """A 1-D mesh with axis ``data`` over ``devices`` (default: all local devices)."""
    devices = list(jax.local_devices() if devices is None else devices)
    return Mesh(np.array(devices), (DATA_AXIS,))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` on every device of ``mesh`` (weights: one copy per device)."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def mask_arrays(models: LipsyncModels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pixel mask (R, R, 3), keep mask (R, R, 1), latent mask (r, r, 1)) float32; the latent mask is
    the pixel mask's first channel downsampled by nearest neighbour (pixel (8i, 8j))."""
    mask = load_fixed_mask(models.resolution, models.mask_path)
    latent = np.asarray(latent_mask(mask[..., :1], (models.latent_size, models.latent_size)), np.float32)
    latent = latent.reshape(models.latent_size, models.latent_size, 1)
    return mask, np.ascontiguousarray(mask[..., :1]), np.ascontiguousarray(latent)


def start_noise(models: LipsyncModels, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(start latents (1, f, r, r, c) float32, VAE key data) of a job, as ``ChunkGenerator``: the
    noise from ``split(key(seed))[0]``, the VAE keys from ``split(key(seed))[1]``."""
    noise_key, vae_key = jax.random.split(jax.random.key(seed))
    f, r, c = models.num_frames, models.latent_size, models.vae.config.latent_channels
    noise = initial_latents(noise_key, (1, f, r, r, c))
    return np.asarray(noise), np.asarray(jax.random.key_data(vae_key))


def _scaled_sample(vae, mean: jax.Array, logvar: jax.Array, keys: jax.Array) -> jax.Array:
    """As ``encode_frames``: one posterior sample per frame from its own key, then the scaling."""
    z = jax.vmap(lambda m, lv, k: sample_posterior(m[None], lv[None], k)[0])(mean, logvar, keys)
    return (z - vae.config.shift_factor) * vae.config.scaling_factor


def generate_chunks(models: LipsyncModels, unet_params: Any, vae_params: Any, faces: jax.Array,
                    moments: jax.Array, use_moments: jax.Array, audio: jax.Array, chunk_indices: jax.Array,
                    noise: jax.Array, vae_key_data: jax.Array, pixel_mask: jax.Array, keep_mask: jax.Array,
                    latent_mask: jax.Array, *, num_steps: int, guidance_scale: float,
                    sampler_options: Mapping[str, Any], vae_frames: int | None = None, overlap: int = 0,
                    prev_tail: jax.Array | None = None, use_prev_tail: jax.Array | None = None):
    """The per-device body: (b, f, R, R, 3) uint8 faces -> (b, f, R, R, 3) float32 generated faces
    (``vae_frames``: frames per VAE encode/decode step, default f; memory, not the result). With
    ``use_moments`` the latents come from ``moments`` (b, f, r, r, 16) instead of the encoder."""
    b, f = faces.shape[:2]
    vae_key = jax.random.wrap_key_data(vae_key_data)

    def encode(args):
        chunk_faces, index = args
        return encode_faces(models.vae, vae_params, chunk_faces, pixel_mask, jax.random.fold_in(vae_key, index),
                            vae_frames)

    def encode_all(_):
        return jax.lax.map(encode, (faces, chunk_indices))  # one chunk at a time

    encoded = jax.eval_shape(encode_all, None)

    def from_moments(_):
        def sample(args):
            m, index = args
            keys = jax.random.split(jax.random.fold_in(vae_key, index), 2 * f)
            m = m.astype(models.vae.dtype)
            return (_scaled_sample(models.vae, m[..., 0:4], m[..., 4:8], keys[:f]),
                    _scaled_sample(models.vae, m[..., 8:12], m[..., 12:16], keys[f:]))

        masked, ref = jax.lax.map(sample, (moments, chunk_indices))
        pixel_values = faces.astype(jnp.float32) / 127.5 - 1.0
        return tuple(x.astype(e.dtype) for x, e in zip((pixel_values, masked, ref), encoded))

    pixel_values, masked, ref = jax.lax.cond(use_moments, from_moments, encode_all, None)
    init = jnp.broadcast_to(noise, (b,) + noise.shape[1:])
    mask = jnp.broadcast_to(latent_mask, (b, f) + latent_mask.shape)
    noise_keys = None
    if sampler_options.get("solver") == "lcm":
        noise_keys = jax.vmap(lambda index: jax.random.fold_in(jax.random.fold_in(vae_key, index),
                                                               FRESH_NOISE_STREAM))(chunk_indices)
    latents, tail = denoise(models, unet_params, init, mask, masked, ref, audio, num_steps=num_steps,
                            guidance_scale=guidance_scale, sampler_options=sampler_options, overlap=overlap,
                            prev_tail=prev_tail, use_prev_tail=use_prev_tail, noise_keys=noise_keys)
    decode = lambda args: decode_and_paste(models.vae, vae_params, args[0], args[1], keep_mask,  # noqa: E731
                                           vae_frames)
    faces = jax.lax.map(decode, (latents, pixel_values))
    return faces if tail is None else (faces, tail)


def denoise(models: LipsyncModels, unet_params: Any, init: jax.Array, mask: jax.Array, masked: jax.Array,
            ref: jax.Array, audio: jax.Array, *, num_steps: int, guidance_scale: float,
            sampler_options: Mapping[str, Any], overlap: int = 0, prev_tail: jax.Array | None = None,
            use_prev_tail: jax.Array | None = None,
            noise_keys: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """(latents, tail): disjoint chunks (``sample_latents``, tail None), or with ``overlap`` K > 0
    consecutive windows sharing K frames (``diffusion.sample_windows``, module doc). ``noise_keys``
    (b,) typed keys: each chunk's fresh noise (scheduler lcm; None otherwise)."""
    if not overlap:
        return sample_latents(models, unet_params, init, mask, masked, ref, audio, num_steps=num_steps,
                              guidance_scale=guidance_scale, sampler_options=sampler_options,
                              noise_keys=noise_keys), None
    return sample_windows(models.unet_apply, unet_params, init, mask, masked, ref, audio.astype(jnp.float32),
                          scheduler=models.scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                          overlap=overlap, prev_tail=prev_tail, use_prev_tail=use_prev_tail,
                          noise_key=None if noise_keys is None else noise_keys[0], **dict(sampler_options))


def sample_latents(models: LipsyncModels, unet_params: Any, init: jax.Array, mask: jax.Array, masked: jax.Array,
                   ref: jax.Array, audio: jax.Array, *, num_steps: int, guidance_scale: float,
                   sampler_options: Mapping[str, Any], noise_keys: jax.Array | None = None) -> jax.Array:
    """THE sampler call of inference (one place: sampler options such as DeepCache or another
    solver are passed through ``sampler_options`` as keyword arguments of ``sample_chunk``).
    With ``noise_keys`` (b,) (scheduler lcm) each chunk is sampled on its own fresh-noise stream."""
    def sample(init, mask, masked, ref, audio, noise_key=None):
        return sample_chunk(models.unet_apply, unet_params, init, mask, masked, ref, audio.astype(jnp.float32),
                            scheduler=models.scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                            noise_key=noise_key, **dict(sampler_options))

    if noise_keys is None:
        return sample(init, mask, masked, ref, audio)
    one = lambda *chunk: sample(*(x[None] for x in chunk[:-1]), noise_key=chunk[-1])[0]  # noqa: E731
    return jax.vmap(one)(init, mask, masked, ref, audio, noise_keys)


class ChunkProgram:
    """The compiled program for ``chunks_per_device * (data size)`` chunks per call (see module doc).

    ``program(unet_params, vae_params, faces, audio, chunk_indices, noise, vae_key_data)`` returns
    the generated faces as a (sharded) device array without waiting for it; params must come
    from ``replicate(..., mesh)`` (or ``sharding.place_weights`` on an fsdp mesh: the program is
    compiled for the shardings the params carry); the other inputs may be numpy (``put_batch``
    places them).
    """

    def __init__(self, models: LipsyncModels, mesh: Mesh, *, num_steps: int, guidance_scale: float,
                 chunks_per_device: int = 1, sampler_options: Mapping[str, Any] | None = None,
                 vae_frames: int | None = None, overlap: int = 0):
        if chunks_per_device < 1:
            raise ValueError(f"chunks_per_device must be >= 1, got {chunks_per_device}")
        self.models, self.mesh = models, mesh
        self.num_steps, self.guidance_scale = int(num_steps), float(guidance_scale)
        self.chunks_per_device = int(chunks_per_device)
        self.batch = self.chunks_per_device * axis_size(mesh, DATA_AXIS)  # fsdp groups share chunks
        self.sampler_options = dict(sampler_options or {})
        self.vae_frames = int(vae_frames or models.num_frames)  # frames per VAE step (pipeline/memory.py)
        self.overlap = int(overlap)  # frames shared by consecutive windows (module doc; 0: disjoint chunks)
        if self.overlap and mesh.size != 1:
            raise ValueError(f"overlapping windows (overlap {self.overlap}) run on one device; "
                             f"the mesh has {mesh.size}")
        self.replicated = NamedSharding(mesh, P())
        self.sharded = NamedSharding(mesh, P(DATA_AXIS))
        self.host_masks = mask_arrays(models)  # placed on the devices at the first call (lower() needs no device)
        self._masks: tuple | None = None
        body = functools.partial(generate_chunks, models, num_steps=self.num_steps,
                                 guidance_scale=self.guidance_scale, sampler_options=self.sampler_options,
                                 vae_frames=self.vae_frames)
        rep, dat = P(), P(DATA_AXIS)
        inputs = (rep, rep, dat, dat, rep, dat, dat, rep, rep, rep, rep, rep)  # weights, faces .. masks
        if self.overlap:
            body = functools.partial(_windows_body, body, self.overlap)
            mapped = shard_chunks(body, mesh, in_specs=inputs + (rep, rep), out_specs=(dat, rep))
            self.tail_shape = (self.num_steps + 1, self.overlap, models.latent_size, models.latent_size,
                               models.vae.config.latent_channels)
        else:
            mapped = shard_chunks(body, mesh, in_specs=inputs, out_specs=dat)
        self._jitted = jax.jit(mapped)
        self._compiled = None
        self._empty_tail = None
        self._no_moments: tuple | None = None
        self._compile_lock = threading.Lock()
        self.compile_seconds: float | None = None

    # ------------------------------------------------------------------ shapes
    def input_shapes(self) -> dict[str, tuple[tuple[int, ...], Any]]:
        m = self.models
        f, res = m.num_frames, m.resolution
        rows = 2 * (m.audio_feat_length[0] + m.audio_feat_length[1] + 1)  # Whisper rows per frame (10)
        tokens = rows * (m.audio.config.n_audio_layer + 1)  # every encoder layer's output + the input
        noise_shape = (1, f, m.latent_size, m.latent_size, m.vae.config.latent_channels)
        key_shape = jax.random.key_data(jax.random.key(0)).shape
        r = m.latent_size
        return {"faces": ((self.batch, f, res, res, 3), np.uint8),
                "moments": ((self.batch, f, r, r, MOMENT_CHANNELS), np.float32),
                "audio": ((self.batch, f, tokens, m.audio.config.n_audio_state), np.float32),
                "chunk_indices": ((self.batch,), np.int32), "noise": (noise_shape, np.float32),
                "vae_key_data": (key_shape, np.uint32)}

    def _abstract(self, params: Any) -> Any:
        """Abstract params with the shardings they carry on this mesh (fsdp), else replicated."""
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self._param_sharding(x)), params)

    def _param_sharding(self, x: Any) -> NamedSharding:
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == self.mesh:
            return sharding
        return self.replicated

    def compile(self, unet_params: Any, vae_params: Any):
        """Compiles (or loads from the persistent cache) once; later calls return the same executable."""
        with self._compile_lock:
            return self._compile(unet_params, vae_params)

    def abstract_args(self, unet_params: Any, vae_params: Any) -> tuple:
        """Every argument of the program as a ``jax.ShapeDtypeStruct`` with its sharding on this mesh
        (no device needed: a compile-only client's devices work too)."""
        shapes = self.input_shapes()
        spec = lambda name, sharding: jax.ShapeDtypeStruct(*shapes[name], sharding=sharding)  # noqa: E731
        args = (self._abstract(unet_params), self._abstract(vae_params), spec("faces", self.sharded),
                spec("moments", self.sharded), jax.ShapeDtypeStruct((), np.bool_, sharding=self.replicated),
                spec("audio", self.sharded), spec("chunk_indices", self.sharded),
                spec("noise", self.replicated), spec("vae_key_data", self.replicated),
                *(jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=self.replicated) for m in self.host_masks))
        if self.overlap:
            args += (jax.ShapeDtypeStruct(self.tail_shape, np.float32, sharding=self.replicated),
                     jax.ShapeDtypeStruct((), np.bool_, sharding=self.replicated))
        return args

    def trace(self, unet_params: Any, vae_params: Any):
        """The program traced for abstract inputs (``jax.stages.Traced``: its jaxpr for cost counting,
        ``.lower()`` for compiling)."""
        return self._jitted.trace(*self.abstract_args(unet_params, vae_params))

    def lower(self, unet_params: Any, vae_params: Any):
        """The program lowered for abstract inputs of these parameters' shapes (``jax.stages.Lowered``;
        ``compile()`` compiles it once; pipeline/memory.py compiles it with its own options)."""
        return self._jitted.lower(*self.abstract_args(unet_params, vae_params))

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def _compile(self, unet_params: Any, vae_params: Any):
        if self._compiled is None:
            begin = time.perf_counter()
            self._compiled = self.lower(unet_params, vae_params).compile()
            self.compile_seconds = time.perf_counter() - begin
        return self._compiled

    def flops(self) -> float | None:
        """XLA's cost-analysis FLOPs of one call (all devices), when the backend reports them."""
        if self._compiled is None:
            return None
        try:
            cost = self._compiled.cost_analysis()
        except Exception:  # noqa: BLE001 - not every backend implements it
            return None
        if isinstance(cost, (list, tuple)):
            cost = cost[0] if cost else {}
        value = (cost or {}).get("flops")
        return None if value is None else float(value) * self.mesh.size  # the SPMD module is one device's share

    # ------------------------------------------------------------------ running
    @property
    def masks(self) -> tuple:
        """The (pixel, keep, latent) masks on the devices (placed once)."""
        if self._masks is None:
            self._masks = tuple(jax.device_put(m, self.replicated) for m in self.host_masks)
        return self._masks

    def empty_tail(self) -> jax.Array:
        """A placeholder ``prev_tail`` for a first window (every call runs the same program)."""
        if self._empty_tail is None:
            self._empty_tail = jax.device_put(empty_tail(self.num_steps, self.overlap, self.tail_shape[2:]),
                                              self.replicated)
        return self._empty_tail

    def put_moments(self, moments: np.ndarray | None) -> tuple:
        """(moments, use_moments) on the devices; None: placeholder zeros (placed once) and False."""
        if moments is None:
            if self._no_moments is None:
                shape, dtype = self.input_shapes()["moments"]
                self._no_moments = (jax.device_put(np.zeros(shape, dtype), self.sharded),
                                    jax.device_put(np.bool_(False), self.replicated))
            return self._no_moments
        return (jax.device_put(np.ascontiguousarray(moments, np.float32), self.sharded),
                jax.device_put(np.bool_(True), self.replicated))

    def put_batch(self, faces: np.ndarray, audio: np.ndarray, chunk_indices: np.ndarray) -> tuple:
        """Host arrays -> device arrays sharded over ``data`` (starts the transfers)."""
        return (jax.device_put(np.ascontiguousarray(faces, np.uint8), self.sharded),
                jax.device_put(np.ascontiguousarray(audio, np.float32), self.sharded),
                jax.device_put(np.ascontiguousarray(chunk_indices, np.int32), self.sharded))

    def put_job(self, noise: np.ndarray, vae_key_data: np.ndarray) -> tuple:
        return (jax.device_put(np.asarray(noise, np.float32), self.replicated),
                jax.device_put(np.asarray(vae_key_data, np.uint32), self.replicated))

    def __call__(self, unet_params: Any, vae_params: Any, faces, audio, chunk_indices, noise, vae_key_data,
                 prev_tail=None, use_prev_tail: bool = False, moments: np.ndarray | None = None):
        """The generated faces; with ``overlap`` > 0 ``(faces, tail)``: pass ``tail`` as the next
        call's ``prev_tail`` with ``use_prev_tail=True`` when its first window follows this call's
        last one (None / False: the first window is not linked). ``moments``: the faces' cached VAE
        moments (B, f, r, r, 16), which replace the encoder (module doc)."""
        compiled = self.compile(unet_params, vae_params)
        if not isinstance(faces, jax.Array):
            faces, audio, chunk_indices = self.put_batch(faces, audio, chunk_indices)
        if not isinstance(noise, jax.Array):
            noise, vae_key_data = self.put_job(noise, vae_key_data)
        args = (unet_params, vae_params, faces, *self.put_moments(moments), audio, chunk_indices, noise, vae_key_data,
                *self.masks)
        if not self.overlap:
            return compiled(*args)
        use = bool(use_prev_tail) and prev_tail is not None
        tail = prev_tail if use else self.empty_tail()
        return compiled(*args, tail, jax.device_put(np.bool_(use), self.replicated))


def _windows_body(body, overlap, *args):
    *inputs, prev_tail, use_prev_tail = args
    return body(*inputs, overlap=overlap, prev_tail=prev_tail, use_prev_tail=use_prev_tail)
