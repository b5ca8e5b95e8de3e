"""Diffusion: the DDIM, DPM-Solver++ and LCM (consistency) schedulers and the jitted sampling
loop (DeepCache and overlapping windows as options)."""

from lipsync_jax.diffusion.ddim import DDIMConfig, DDIMScheduler, DDIMStepOutput, SchedulerConfigError
from lipsync_jax.diffusion.dpmsolver import DPMSolverConfig, DPMSolverScheduler
from lipsync_jax.diffusion.lcm import LCMConfig, LCMScheduler
from lipsync_jax.diffusion.overlap import empty_tail, new_frames, sample_windows, window_starts
from lipsync_jax.diffusion.sampler import (
                                           SOLVERS,
                                           ModuleApply,
                                           SamplerOptionError,
                                           initial_latents,
                                           sample_chunk,
                                           uses_guidance,
                                           validate_sampler_options,
)

__all__ = ["DDIMConfig", "DDIMScheduler", "DDIMStepOutput", "DPMSolverConfig", "DPMSolverScheduler", "LCMConfig",
           "LCMScheduler", "ModuleApply", "SOLVERS", "SamplerOptionError", "SchedulerConfigError", "empty_tail",
           "initial_latents", "new_frames", "sample_chunk", "sample_windows", "uses_guidance",
           "validate_sampler_options", "window_starts"]
