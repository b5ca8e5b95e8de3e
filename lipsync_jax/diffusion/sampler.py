"""LatentSync's denoising loop for one chunk of frames, compiled as a single jitted call.

All tensors are channels-last video latents (b, f, h, w, c). The UNet is passed in as
``unet_apply(params, sample, timesteps, audio_embeds) -> noise_pred`` with
``sample`` (n, f, h, w, 13) = [noisy latents 4, mask 1, masked latents 4, reference latents 4],
``timesteps`` (n,) int32 and ``audio_embeds`` (n, f, tokens, dim).

Classifier-free guidance (``guidance_scale > 1``, LatentSync's rule): the unconditional branch
uses all-zero audio embeds and runs in the same UNet call as the conditional one, batch order
[uncond, cond]; ``noise = uncond + g * (cond - uncond)``. With ``guidance_scale <= 1`` the UNet
runs once per step on the conditional input only (the scale is then not applied, as in LatentSync).

Sampler options (all inside the one ``lax.scan``; the defaults are LatentSync's loop exactly):
- ``solver``: "ddim" (LatentSync), "dpmsolver++" (DPM-Solver++ 2M built from the DDIM
  scheduler's config like diffusers' ``DPMSolverMultistepScheduler.from_config``; its previous
  data prediction rides in the scan carry; see ``diffusion/dpmsolver.py``) or "lcm" (multistep
  consistency sampling of a distilled student, 1-8 steps typically; each step but the last adds
  fresh noise drawn from ``noise_key``, one frame per sample repeated over the frames like the
  starting noise; see ``diffusion/lcm.py``). A guidance-distilled student runs with
  ``guidance_scale`` 1 (one UNet call per step; ``lipsync_jax.distilled.student_sampling``
  settles that at the edges).
- ``deepcache_interval`` N (0 or 1 = off): DeepCache (LatentSync's ``--enable_deepcache`` is 3).
  Steps with index % N == 0 run the full UNet (``deepcache="full"``) and keep the hidden input of
  the last up block's last layer in the carry; the other steps run the shallow branch
  (``deepcache="shallow"``), chosen by ``lax.cond``. The UNet batch (CFG included) is unchanged.
  Refused with "lcm": a consistency student's few steps are hundreds of timesteps apart (999,
  759, 499, 259), where the deep features of the previous step are no stand-in for this one's
  (DeepCache's premise is adjacent steps of a 20-50 step trajectory).
- overlapping windows: ``lipsync_jax.diffusion.overlap.sample_windows`` (every solver, "lcm"
  included: the windows' shared frames are substituted before each step, after the fresh noise).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.diffusion.ddim import DDIMScheduler
from lipsync_jax.diffusion.dpmsolver import DPMSolverScheduler
from lipsync_jax.diffusion.lcm import LCMScheduler

UNetApply = Callable[..., Any]
SOLVERS = ("ddim", "dpmsolver++", "lcm")
# link(latents, step_index) -> (latents, record): applied before every step and after the last
# one (step_index == num_steps); the records of the steps are stacked (see overlap.py).
LinkFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, Any]]


class SamplerOptionError(ValueError):
    """A sampler option (solver, DeepCache interval, overlap) has an unusable value."""


@dataclasses.dataclass(frozen=True)
class ModuleApply:
    """A hashable ``unet_apply`` for a Flax UNet module (``sample_chunk`` takes ``unet_apply`` as
    a static argument: build this once and reuse it, so the loop compiles once)."""

    module: Any  # a flax.linen Module called as module(sample, timesteps, audio_embeds)

    supports_deepcache = True  # forwards deepcache=/cache= to UNet3DConditionModel.__call__

    def __call__(self, params: Any, sample: jax.Array, timesteps: jax.Array,
                 audio_embeds: jax.Array, **unet_kwargs) -> Any:
        return self.module.apply({"params": params}, sample, timesteps, audio_embeds, **unet_kwargs)


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


def validate_sampler_options(solver: str = "ddim", deepcache_interval: int = 0, overlap: int = 0,
                             num_frames: int = 16, num_steps: int = 20) -> None:
    """Raises ``SamplerOptionError`` (one clear line) for an unusable option value."""
    if solver not in SOLVERS:
        raise SamplerOptionError(f"unknown scheduler {solver!r}; choose from {', '.join(SOLVERS)}")
    if isinstance(deepcache_interval, bool) or not isinstance(deepcache_interval, (int, np.integer)) \
            or deepcache_interval < 0:
        raise SamplerOptionError(f"deepcache_interval must be an integer >= 0 (0 or 1 = off), "
                                 f"got {deepcache_interval!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or not 0 <= overlap < num_frames:
        raise SamplerOptionError(f"overlap must be an integer in [0, {num_frames - 1}] (frames shared by "
                                 f"consecutive {num_frames}-frame windows), got {overlap!r}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise SamplerOptionError(f"the number of inference steps must be an integer >= 1, got {num_steps!r}")
    if solver == "lcm" and deepcache_interval > 1:
        raise SamplerOptionError(f"deepcache_interval {deepcache_interval} does not combine with scheduler lcm: a "
                                 "consistency student's steps are hundreds of timesteps apart, so the previous "
                                 "step's cached features do not stand in for this one's; use fewer lcm steps")


def _cfg_inputs(model_input, t, audio_embeds, guidance_scale):
    """The UNet batch for one step: (inputs, timesteps, audio), [uncond, cond] under guidance;
    ``t`` is one timestep () or one per sample (b,) (distillation)."""
    b = model_input.shape[0]
    timesteps = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (b,))
    if not uses_guidance(guidance_scale):
        return model_input, timesteps, audio_embeds
    both_inputs = jnp.concatenate([model_input, model_input], axis=0)  # (2b, f, h, w, 13)
    both_audio = jnp.concatenate([jnp.zeros_like(audio_embeds), audio_embeds], axis=0)
    return both_inputs, jnp.concatenate([timesteps, timesteps]), both_audio


def _cfg_combine(noise, b, guidance_scale):
    if not uses_guidance(guidance_scale):
        return noise
    uncond, cond = noise[:b], noise[b:]
    return uncond + guidance_scale * (cond - uncond)


def guided_noise_pred(unet_apply: UNetApply, params: Any, model_input: jax.Array, t: jax.Array,
                      audio_embeds: jax.Array, guidance_scale: float) -> jax.Array:
    """One (possibly guided) noise prediction for ``model_input`` (b, f, h, w, 13), float32."""
    inputs, timesteps, audio = _cfg_inputs(model_input, t, audio_embeds, guidance_scale)
    noise = unet_apply(params, inputs, timesteps, audio).astype(jnp.float32)
    return _cfg_combine(noise, model_input.shape[0], guidance_scale)


def guided_noise_pred_deepcache(unet_apply: UNetApply, params: Any, model_input: jax.Array, t: jax.Array,
                                audio_embeds: jax.Array, guidance_scale: float, *, full: jax.Array,
                                cache: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``guided_noise_pred`` with DeepCache: ``full`` (traced bool) picks the full UNet (which
    refreshes ``cache``) or the shallow branch (which reads it). Returns (noise, cache)."""
    inputs, timesteps, audio = _cfg_inputs(model_input, t, audio_embeds, guidance_scale)

    def run_full(_):
        return unet_apply(params, inputs, timesteps, audio, deepcache="full")

    def run_shallow(cached):
        return unet_apply(params, inputs, timesteps, audio, deepcache="shallow", cache=cached)

    noise, cache = jax.lax.cond(full, run_full, run_shallow, cache)
    return _cfg_combine(noise.astype(jnp.float32), model_input.shape[0], guidance_scale), cache


def deepcache_full_steps(num_steps: int, interval: int) -> np.ndarray:
    """(num_steps,) bool: which steps run the full UNet (all of them when DeepCache is off)."""
    if interval <= 1:
        return np.ones(num_steps, bool)
    return np.arange(num_steps) % interval == 0


def resolve_scheduler(scheduler: Any, solver: str):
    """The scheduler object for ``solver``: "dpmsolver++" / "lcm" from a DDIM scheduler's config
    (or a ``DPMSolverScheduler`` / ``LCMScheduler`` as given: a student distilled with other
    ``LCMConfig`` values needs its own, ``lipsync_jax.distilled.student_scheduler``); "ddim"
    needs a ``DDIMScheduler``."""
    if solver == "dpmsolver++":
        if isinstance(scheduler, DPMSolverScheduler):
            return scheduler
        return DPMSolverScheduler.from_ddim_config(scheduler.config)
    if solver == "lcm":
        if isinstance(scheduler, LCMScheduler):
            return scheduler
        return LCMScheduler.from_ddim_config(scheduler.config)
    if not isinstance(scheduler, DDIMScheduler):
        raise SamplerOptionError(f"scheduler 'ddim' needs a DDIMScheduler, got {type(scheduler).__name__}")
    return scheduler


def denoise_loop(unet_apply: UNetApply, params: Any, init_latents: jax.Array, conditioning: jax.Array,
                 audio_embeds: jax.Array, *, scheduler: Any, num_steps: int, guidance_scale: float,
                 solver: str = "ddim", deepcache_interval: int = 0, link: LinkFn | None = None,
                 noise_key: jax.Array | None = None):
    """The whole sampling loop as one ``lax.scan`` (call it inside ``jax.jit``).

    conditioning (b, f, h, w, 9) = [mask, masked latents, reference latents]. Returns the final
    latents (b, f, h, w, 4) in ``init_latents.dtype``, or with ``link`` a tuple
    (latents, stacked step records (num_steps, ...), final record). ``noise_key``: the fresh
    noise of "lcm" (needed from 2 steps on; step i draws from ``split(noise_key, num_steps)[i]``)."""
    validate_sampler_options(solver, deepcache_interval, 0, init_latents.shape[1], num_steps)
    if solver == "lcm" and num_steps > 1 and noise_key is None:
        raise SamplerOptionError(f"scheduler lcm with {num_steps} steps needs a noise_key (fresh noise between steps)")
    scheduler = resolve_scheduler(scheduler, solver)
    deepcache = deepcache_interval > 1
    if deepcache and not getattr(unet_apply, "supports_deepcache", False):
        raise SamplerOptionError("deepcache_interval > 1 needs a unet_apply that takes deepcache=/cache= "
                                 "(ModuleApply over UNet3DConditionModel does)")
    dtype = init_latents.dtype
    timesteps = jnp.asarray(scheduler.timesteps(num_steps))  # (num_steps,) int32

    if solver == "ddim" and not deepcache and link is None:  # LatentSync's loop, exactly as always
        def denoise(latents, t):
            unet_latents = scheduler.scale_model_input(latents, t)
            model_input = jnp.concatenate([unet_latents, conditioning], axis=-1)  # (b, f, h, w, 13)
            noise = guided_noise_pred(unet_apply, params, model_input, t, audio_embeds, guidance_scale)
            latents = scheduler.step(noise, t, latents, num_inference_steps=num_steps).prev_sample
            return latents.astype(dtype), None

        latents, _ = jax.lax.scan(denoise, init_latents, timesteps)
        return latents

    xs: dict[str, Any] = {"index": jnp.arange(num_steps, dtype=jnp.int32),
                          "full": jnp.asarray(deepcache_full_steps(num_steps, deepcache_interval))}
    carry: dict[str, Any] = {"latents": init_latents}
    if solver == "dpmsolver++":
        xs["row"] = jax.tree_util.tree_map(jnp.asarray, scheduler.step_tables(num_steps))
        xs["t"] = xs["row"].t
        carry["prev_x0"] = jnp.zeros(init_latents.shape, jnp.float32)
    elif solver == "lcm":
        xs["row"] = jax.tree_util.tree_map(jnp.asarray, scheduler.step_tables(num_steps))
        xs["t"] = xs["row"].t
        if noise_key is not None:
            xs["key"] = jax.random.split(noise_key, num_steps)
    else:
        xs["t"] = timesteps
    if deepcache:
        carry["cache"] = _empty_cache(unet_apply, params, init_latents, conditioning, audio_embeds,
                                      guidance_scale)

    def step(carry, x):
        carry = dict(carry)
        latents, record = carry["latents"], None
        if link is not None:
            latents, record = link(latents, x["index"])
        t = x["t"]
        model_input = jnp.concatenate([scheduler.scale_model_input(latents, t), conditioning], axis=-1)
        if deepcache:
            noise, carry["cache"] = guided_noise_pred_deepcache(
                unet_apply, params, model_input, t, audio_embeds, guidance_scale, full=x["full"],
                cache=carry["cache"])
        else:
            noise = guided_noise_pred(unet_apply, params, model_input, t, audio_embeds, guidance_scale)
        if solver == "dpmsolver++":
            latents, carry["prev_x0"] = scheduler.update(noise, latents, carry["prev_x0"], x["row"])
        elif solver == "lcm":  # without a noise_key (1 step) no fresh noise: its scale is 0 at the last step
            fresh = (initial_latents(x["key"], latents.shape) if "key" in x
                     else jnp.zeros(latents.shape, jnp.float32))
            latents, _ = scheduler.update(noise, latents, fresh, x["row"])
        else:
            latents = scheduler.step(noise, t, latents, num_inference_steps=num_steps).prev_sample
        carry["latents"] = latents.astype(dtype)
        return carry, record

    carry, records = jax.lax.scan(step, carry, xs)
    if link is None:
        return carry["latents"]
    latents, final_record = link(carry["latents"], jnp.int32(num_steps))
    return latents, records, final_record


def _empty_cache(unet_apply, params, init_latents, conditioning, audio_embeds, guidance_scale):
    """Zeros shaped like the DeepCache features of one full UNet call (step 0 always refills)."""
    model_input = jnp.concatenate([init_latents, conditioning], axis=-1)
    inputs, timesteps, audio = _cfg_inputs(model_input, jnp.int32(0), audio_embeds, guidance_scale)
    shape = jax.eval_shape(lambda: unet_apply(params, inputs, timesteps, audio, deepcache="full"))[1]
    return jnp.zeros(shape.shape, shape.dtype)


def conditioning_channels(mask: jax.Array, masked_latents: jax.Array, ref_latents: jax.Array,
                          dtype) -> jax.Array:
    """[mask 1, masked latents 4, reference latents 4] -> (b, f, h, w, 9) in ``dtype``."""
    return jnp.concatenate([mask, masked_latents, ref_latents], axis=-1).astype(dtype)


def sample_chunk(unet_apply: UNetApply, params: Any, init_latents: jax.Array, mask: jax.Array,
                 masked_latents: jax.Array, ref_latents: jax.Array, audio_embeds: jax.Array, *,
                 scheduler: DDIMScheduler, num_steps: int = 20, guidance_scale: float = 1.5,
                 solver: str = "ddim", deepcache_interval: int = 0,
                 noise_key: jax.Array | None = None) -> jax.Array:
    """Runs all ``num_steps`` steps for one chunk (or a batch of chunks) inside one compiled call.

    init_latents (b, f, h, w, 4), mask (b, f, h, w, 1), masked_latents and ref_latents
    (b, f, h, w, 4), audio_embeds (b, f, tokens, dim) -> final latents (b, f, h, w, 4) float32.
    ``scheduler`` is the DDIM scheduler (config.scheduler) or, for a student distilled with other
    LCM settings, its ``LCMScheduler``; ``solver`` "ddim" | "dpmsolver++" | "lcm"
    (config.run.scheduler), ``deepcache_interval`` (config.run.deepcache_interval; 0/1 = off),
    ``noise_key`` (typed key; "lcm" from 2 steps on: the fresh noise between steps).
    ``unet_apply`` must be a stable (hashable) function: a new closure per call recompiles.
    The defaults run LatentSync's DDIM loop, bit for bit as before these options existed.
    Options are checked here (``SamplerOptionError``) before anything is traced.
    """
    validate_sampler_options(solver, deepcache_interval, 0, init_latents.shape[1], num_steps)
    if solver == "lcm" and num_steps > 1 and noise_key is None:
        raise SamplerOptionError(f"scheduler lcm with {num_steps} steps needs a noise_key (fresh noise between steps)")
    return _sample_chunk(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds,
                         scheduler=scheduler, num_steps=int(num_steps), guidance_scale=float(guidance_scale),
                         solver=solver, deepcache_interval=int(deepcache_interval) if deepcache_interval > 1 else 0,
                         noise_key=noise_key if solver == "lcm" else None)


@functools.partial(jax.jit, static_argnames=("unet_apply", "num_steps", "guidance_scale", "solver",
                                             "deepcache_interval"))
def _sample_chunk(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds, *,
                  scheduler, num_steps, guidance_scale, solver, deepcache_interval, noise_key=None):
    conditioning = conditioning_channels(mask, masked_latents, ref_latents, init_latents.dtype)
    return denoise_loop(unet_apply, params, init_latents, conditioning, audio_embeds, scheduler=scheduler,
                        num_steps=num_steps, guidance_scale=guidance_scale, solver=solver,
                        deepcache_interval=deepcache_interval, noise_key=noise_key)
