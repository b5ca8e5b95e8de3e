"""Diffusion: the DDIM scheduler and the jitted sampling loop."""

from lipsync_jax.diffusion.ddim import DDIMConfig, DDIMScheduler, DDIMStepOutput, SchedulerConfigError
from lipsync_jax.diffusion.sampler import ModuleApply, initial_latents, sample_chunk, uses_guidance

__all__ = ["DDIMConfig", "DDIMScheduler", "DDIMStepOutput", "ModuleApply", "SchedulerConfigError",
           "initial_latents", "sample_chunk", "uses_guidance"]
