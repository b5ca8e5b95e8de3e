"""The device work for one chunk of ``num_frames`` (16) aligned faces, as LatentSync does it.

For each face (uint8, resolution R): pixel values ``x = face / 127.5 - 1``; the masked face
``x * mask`` (mask.png resized to R, 1 keeps a pixel, 0 hides the mouth region); the reference
face is the SAME frame's unmasked face (LatentSync 1.5/1.6 ``prepare_masks_and_masked_images``).
Both are VAE-encoded as posterior samples times the scaling factor. The UNet's mask channel is
the mask's first channel downsampled by nearest-neighbour to the latent size (torch
``interpolate``'s default: pixel (8i, 8j)). Sampling starts from one Gaussian latent frame
repeated over all frames, the SAME start for every chunk of the video (LatentSync draws it once
for the whole video). After decoding, the pixels the mask keeps are pasted back from the input
face (``paste_surrounding_pixels_back``): ``decoded * (1 - m) + x * m``.

Random keys: the start noise comes from ``split(key(seed))[0]``; chunk c's VAE samples from
``fold_in(split(key(seed))[1], c)``, so results do not depend on how chunks are scheduled.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.diffusion import initial_latents, sample_chunk
from lipsync_jax.face import load_fixed_mask
from lipsync_jax.models.vae import AutoencoderKL, decode_frames, encode_frames
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.timing import StageTimer


@functools.partial(jax.jit, static_argnames=("vae", "vae_frames"))
def encode_faces(vae: AutoencoderKL, vae_params: Any, faces: jax.Array, pixel_mask: jax.Array,
                 key: jax.Array, vae_frames: int | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """faces (f, R, R, 3) uint8, pixel_mask (R, R, 3) -> pixel values (f, R, R, 3) float32 in
    [-1, 1], masked latents and reference latents (f, R/8, R/8, 4). ``vae_frames``: frames per
    encoder step (default f; smaller needs less memory, same result)."""
    pixel_values = faces.astype(jnp.float32) / 127.5 - 1.0
    masked = pixel_values * pixel_mask
    f = faces.shape[0]
    latents = encode_frames(vae, vae_params, jnp.concatenate([masked, pixel_values]), key,
                            chunk_size=vae_frames or f)
    return pixel_values, latents[:f], latents[f:]


@functools.partial(jax.jit, static_argnames=("vae", "vae_frames"))
def decode_and_paste(vae: AutoencoderKL, vae_params: Any, latents: jax.Array, pixel_values: jax.Array,
                     keep_mask: jax.Array, vae_frames: int | None = None) -> jax.Array:
    """latents (f, r, r, 4) -> faces (f, R, R, 3) float32: decoded where ``keep_mask``
    (R, R, 1) is 0, the input pixels where it is 1 (``vae_frames`` frames per decoder step)."""
    decoded = decode_frames(vae, vae_params, latents, chunk_size=vae_frames or latents.shape[0]).astype(jnp.float32)
    return decoded * (1.0 - keep_mask) + pixel_values * keep_mask


class ChunkGenerator:
    """``generator(faces, audio_windows, chunk_index) -> (f, R, R, 3) float32`` faces in [-1, 1]."""

    def __init__(self, models: LipsyncModels, *, num_steps: int = 20, guidance_scale: float = 1.5,
                 seed: int = 0):
        if num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {num_steps}")
        self.models = models
        self.num_steps = int(num_steps)
        self.guidance_scale = float(guidance_scale)
        mask = load_fixed_mask(models.resolution, models.mask_path)  # (R, R, 3) float32
        factor = models.vae.downsample_factor
        self.pixel_mask = jnp.asarray(mask)
        self.keep_mask = jnp.asarray(mask[..., :1])
        latent_mask = jnp.asarray(mask[::factor, ::factor, :1])  # (r, r, 1), nearest neighbour
        f, r = models.num_frames, models.latent_size
        self.latent_mask = jnp.broadcast_to(latent_mask, (1, f, r, r, 1))
        noise_key, self.vae_key = jax.random.split(jax.random.key(seed))
        channels = models.vae.config.latent_channels
        self.init_latents = initial_latents(noise_key, (1, f, r, r, channels))

    def encode(self, faces: np.ndarray, chunk_index: int):
        key = jax.random.fold_in(self.vae_key, chunk_index)
        return encode_faces(self.models.vae, self.models.vae_params, jnp.asarray(faces), self.pixel_mask, key)

    def sample(self, masked_latents: jax.Array, ref_latents: jax.Array, audio_windows: np.ndarray) -> jax.Array:
        m = self.models
        audio = jnp.asarray(audio_windows, jnp.float32)[None]  # (1, f, 50, 384)
        latents = sample_chunk(m.unet_apply, m.unet_params, self.init_latents, self.latent_mask,
                               masked_latents[None], ref_latents[None], audio, scheduler=m.scheduler,
                               num_steps=self.num_steps, guidance_scale=self.guidance_scale)
        return latents[0]

    def decode(self, latents: jax.Array, pixel_values: jax.Array) -> jax.Array:
        return decode_and_paste(self.models.vae, self.models.vae_params, latents, pixel_values, self.keep_mask)

    def __call__(self, faces: np.ndarray, audio_windows: np.ndarray, chunk_index: int, *,
                 timer: StageTimer | None = None, real_frames: int | None = None) -> np.ndarray:
        timer = timer or StageTimer()
        n = len(faces) if real_frames is None else real_frames
        with timer.stage("vae_encode", n):
            pixel_values, masked, ref = timer.ready(self.encode(faces, chunk_index))
        with timer.stage("sampling", n):
            latents = timer.ready(self.sample(masked, ref, audio_windows))
        with timer.stage("vae_decode", n):
            out = np.asarray(self.decode(latents, pixel_values))
        return out
