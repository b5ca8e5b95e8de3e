"""LatentSync's denoising loop for one chunk of frames, compiled as a single jitted call.

All tensors are channels-last video latents (b, f, h, w, c). The UNet is passed in as
``unet_apply(params, sample, timesteps, audio_embeds) -> noise_pred`` with
``sample`` (n, f, h, w, 13) = [noisy latents 4, mask 1, masked latents 4, reference latents 4],
``timesteps`` (n,) int32 and ``audio_embeds`` (n, f, tokens, dim).

Classifier-free guidance (``guidance_scale > 1``, LatentSync's rule): the unconditional branch
uses all-zero audio embeds and runs in the same UNet call as the conditional one, batch order
[uncond, cond]; ``noise = uncond + g * (cond - uncond)``. With ``guidance_scale <= 1`` the UNet
runs once per step on the conditional input only (the scale is then not applied, as in LatentSync).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from lipsync_jax.diffusion.ddim import DDIMScheduler

UNetApply = Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """A hashable ``unet_apply`` for a Flax UNet module (``sample_chunk`` takes ``unet_apply`` as
    a static argument: build this once and reuse it, so the loop compiles once)."""

    module: Any  # a flax.linen Module called as module(sample, timesteps, audio_embeds)

    def __call__(self, params: Any, sample: jax.Array, timesteps: jax.Array,
                 audio_embeds: jax.Array) -> jax.Array:
        return self.module.apply({"params": params}, sample, timesteps, audio_embeds)


def initial_latents(key: jax.Array, shape: tuple[int, ...], *, dtype=jnp.float32,
                    init_noise_sigma: float = 1.0) -> jax.Array:
    """Starting noise (b, f, h, w, c): ONE Gaussian frame per sample repeated over all f frames
    (LatentSync's ``prepare_latents``), times the scheduler's ``init_noise_sigma`` (1 for DDIM)."""
    b, f, *rest = shape
    frame = jax.random.normal(key, (b, 1, *rest), dtype)  # (b, 1, h, w, c)
    return jnp.repeat(frame, f, axis=1) * jnp.asarray(init_noise_sigma, dtype)


def uses_guidance(guidance_scale: float) -> bool:
    """Whether a second (zero-audio) UNet branch runs: LatentSync's ``guidance_scale > 1``."""
    return guidance_scale > 1.0


def guided_noise_pred(unet_apply: UNetApply, params: Any, model_input: jax.Array, t: jax.Array,
                      audio_embeds: jax.Array, guidance_scale: float) -> jax.Array:
    """One (possibly guided) noise prediction for ``model_input`` (b, f, h, w, 13), float32."""
    b = model_input.shape[0]
    if not uses_guidance(guidance_scale):
        timesteps = jnp.full((b,), t, jnp.int32)
        return unet_apply(params, model_input, timesteps, audio_embeds).astype(jnp.float32)
    both_inputs = jnp.concatenate([model_input, model_input], axis=0)  # (2b, f, h, w, 13)
    both_audio = jnp.concatenate([jnp.zeros_like(audio_embeds), audio_embeds], axis=0)
    timesteps = jnp.full((2 * b,), t, jnp.int32)
    noise = unet_apply(params, both_inputs, timesteps, both_audio).astype(jnp.float32)
    uncond, cond = noise[:b], noise[b:]
    return uncond + guidance_scale * (cond - uncond)


@functools.partial(jax.jit, static_argnames=("unet_apply", "num_steps", "guidance_scale"))
def sample_chunk(unet_apply: UNetApply, params: Any, init_latents: jax.Array, mask: jax.Array,
                 masked_latents: jax.Array, ref_latents: jax.Array, audio_embeds: jax.Array, *,
                 scheduler: DDIMScheduler, num_steps: int = 20,
                 guidance_scale: float = 1.5) -> jax.Array:
    """Runs all ``num_steps`` DDIM steps for one chunk inside one compiled call.

    init_latents (b, f, h, w, 4), mask (b, f, h, w, 1), masked_latents and ref_latents
    (b, f, h, w, 4), audio_embeds (b, f, tokens, dim) -> final latents (b, f, h, w, 4) float32.
    ``unet_apply`` must be a stable (hashable) function: a new closure per call recompiles.
    """
    conditioning = jnp.concatenate([mask, masked_latents, ref_latents], axis=-1).astype(
        init_latents.dtype)  # (b, f, h, w, 9)
    timesteps = jnp.asarray(scheduler.timesteps(num_steps))  # (num_steps,) int32

    def denoise(latents, t):
        unet_latents = scheduler.scale_model_input(latents, t)
        model_input = jnp.concatenate([unet_latents, conditioning], axis=-1)  # (b, f, h, w, 13)
        noise = guided_noise_pred(unet_apply, params, model_input, t, audio_embeds, guidance_scale)
        latents = scheduler.step(noise, t, latents, num_inference_steps=num_steps).prev_sample
        return latents.astype(init_latents.dtype), None

    latents, _ = jax.lax.scan(denoise, init_latents, timesteps)
    return latents
