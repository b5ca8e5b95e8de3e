"""Overlapping windows: consecutive f-frame windows that share ``overlap`` K frames, denoised so
that a shared frame is the same latent whichever window produced it (no seam between windows).

Method (causal substitution, streams with bounded memory):
- window j covers frames [s_j, s_j + f) with s_{j+1} = s_j + f - K (``window_starts``); a batch
  of n consecutive windows is denoised jointly (batch axis = windows, one UNet call per step);
- before every step (and after the last one), window j's first K frames are overwritten with
  window j-1's last K frames at that same step, j = 1, 2, ... in order; window 0's first K frames
  are overwritten with ``prev_tail[step]``, the recorded trajectory of the previous batch's last
  window (when ``use_prev_tail``). The UNet of window j therefore sees its head frames exactly as
  window j-1 has them at every step: they are temporal context (motion modules) for its new
  frames, and the final head frames equal what window j-1 emitted, so only frames K.. of every
  window but the very first are new output (``new_frames``);
- each batch returns its last window's tail trajectory (num_steps + 1, K, h, w, c) for the next
  batch: memory is O(steps * K) whatever the video length.

Why substitution and not averaging the two windows' noise predictions for the shared frames:
averaging inside a batch but substituting across batches would make the result depend on how
windows are grouped into batches (chunk_batch); substitution everywhere gives the same frames as
one window at a time, and frames already written are never changed. With K = 0 this is exactly
``sample_chunk``. The extra UNet cost is f / (f - K) per output frame.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from lipsync_jax.diffusion.sampler import (
    UNetApply,
    conditioning_channels,
    denoise_loop,
    sample_chunk,
    validate_sampler_options,
)


def window_starts(num_frames: int, window: int = 16, overlap: int = 0) -> list[int]:
    """First frame of each window covering ``num_frames`` frames with stride ``window - overlap``
    (the last window may run past the end: the caller pads, as for disjoint chunks)."""
    validate_sampler_options(overlap=overlap, num_frames=window)
    stride = window - overlap
    starts = [0]
    while starts[-1] + window < num_frames:
        starts.append(starts[-1] + stride)
    return starts


def new_frames(window_index: int, overlap: int, has_prev_tail: bool = False) -> slice:
    """The frames of window ``window_index`` (within its batch) that are new output: all of
    window 0 of the first batch, frames ``overlap``.. of every other window."""
    return slice(0 if window_index == 0 and not has_prev_tail else overlap, None)


def link_windows(latents: jax.Array, overlap: int, head: jax.Array | None = None,
                 use_head: jax.Array | bool = True) -> jax.Array:
    """(n, f, h, w, c): window j's first ``overlap`` frames := window j-1's last ones, in order of
    j; window 0's := ``head`` (overlap, h, w, c) where ``use_head``."""
    if overlap == 0:
        return latents
    if head is not None:
        first = jnp.where(use_head, head.astype(latents.dtype), latents[0, :overlap])
        latents = latents.at[0, :overlap].set(first)
    for j in range(1, latents.shape[0]):
        latents = latents.at[j, :overlap].set(latents[j - 1, -overlap:])
    return latents


def empty_tail(num_steps: int, overlap: int, latent_shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """A placeholder ``prev_tail`` (num_steps + 1, overlap, h, w, c) for the first batch (pass it
    with ``use_prev_tail=False`` so that every batch runs the same compiled program)."""
    h, w, c = latent_shape[-3:]
    return jnp.zeros((num_steps + 1, overlap, h, w, c), dtype)


def sample_windows(unet_apply: UNetApply, params: Any, init_latents: jax.Array, mask: jax.Array,
                   masked_latents: jax.Array, ref_latents: jax.Array, audio_embeds: jax.Array, *,
                   scheduler: Any, num_steps: int = 20, guidance_scale: float = 1.5, solver: str = "ddim",
                   deepcache_interval: int = 0, overlap: int = 0, prev_tail: jax.Array | None = None,
                   use_prev_tail: jax.Array | bool = True,
                   noise_key: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """``sample_chunk`` over a batch of n CONSECUTIVE windows (batch axis = windows, in order)
    sharing ``overlap`` frames, linked as the module docstring describes.

    Inputs as ``sample_chunk`` with b = n (``noise_key``: "lcm"'s fresh noise); ``prev_tail``
    (num_steps + 1, overlap, h, w, 4) from the previous batch (None or ``use_prev_tail=False``:
    window 0 is not linked). Returns (latents (n, f, h, w, 4), tail trajectory
    (num_steps + 1, overlap, h, w, 4) of window n-1 for the next batch; None when overlap is 0,
    then latents equal ``sample_chunk``'s exactly).
    """
    validate_sampler_options(solver, deepcache_interval, overlap, init_latents.shape[1], num_steps)
    if overlap == 0:  # LatentSync's disjoint chunks: the very same compiled program
        return sample_chunk(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds,
                            scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                            solver=solver, deepcache_interval=deepcache_interval, noise_key=noise_key), None
    return _sample_windows(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds,
                           scheduler=scheduler, num_steps=int(num_steps), guidance_scale=float(guidance_scale),
                           solver=solver, deepcache_interval=int(deepcache_interval) if deepcache_interval > 1 else 0,
                           overlap=int(overlap), prev_tail=prev_tail, use_prev_tail=use_prev_tail,
                           noise_key=noise_key if solver == "lcm" else None)


@functools.partial(jax.jit, static_argnames=("unet_apply", "num_steps", "guidance_scale", "solver",
                                             "deepcache_interval", "overlap"))
def _sample_windows(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds, *,
                    scheduler, num_steps, guidance_scale, solver, deepcache_interval, overlap, prev_tail,
                    use_prev_tail, noise_key=None):
    conditioning = conditioning_channels(mask, masked_latents, ref_latents, init_latents.dtype)
    run = functools.partial(denoise_loop, unet_apply, params, init_latents, conditioning, audio_embeds,
                            scheduler=scheduler, num_steps=num_steps, guidance_scale=guidance_scale,
                            solver=solver, deepcache_interval=deepcache_interval, noise_key=noise_key)

    def link(latents, step_index):
        head = None if prev_tail is None else prev_tail[step_index]
        latents = link_windows(latents, overlap, head, use_prev_tail)
        return latents, latents[-1, -overlap:]

    latents, tails, final_tail = run(link=link)
    return latents, jnp.concatenate([tails, final_tail[None]], axis=0)
