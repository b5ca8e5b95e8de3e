"""Latent consistency models (LCM) for an epsilon-prediction UNet: the consistency function
shared by distillation (``lipsync_jax.train.distill_step``) and multistep consistency sampling
(``solver="lcm"`` in ``lipsync_jax.diffusion.sampler``), with the arithmetic of diffusers' (0.32)
``LCMScheduler`` on LatentSync's DDIM noise schedule.

- Skip-step schedule: the teacher's DDIM timesteps ``k - 1, 2k - 1, ..., T - 1`` with
  ``k = T // origin_steps`` (50 origin steps: 19, 39, ..., 999). Distillation draws one of them
  per clip and asks the student at ``t`` to agree with the target network at ``t - k``.
- Consistency function: ``f(x, t) = c_skip(t) x + c_out(t) x0(x, eps(x, t), t)``, with
  ``x0 = (x - sqrt(1 - a_t) eps) / sqrt(a_t)`` and the discrete boundary condition of LCM
  (``s = timestep_scaling * t``, ``c_skip = sigma_data^2 / (s^2 + sigma_data^2)``,
  ``c_out = s / sqrt(s^2 + sigma_data^2)``; ``f(x, 0) = x``).
- Sampling with n steps: the timesteps are n of the origin schedule, counted down from T - 1 at
  ``floor(linspace(0, origin_steps, n, endpoint=False))`` (4 steps: 999, 759, 499, 259). Each step
  evaluates ``f`` once and, except after the last, noises the estimate again to the next
  timestep with fresh Gaussian noise: ``x' = sqrt(a_next) f + sqrt(1 - a_next) z``.
  ``step_tables`` gives the per-step scalars (numpy float32) that ride in the ``lax.scan`` xs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lipsync_jax.diffusion.ddim import DDIMConfig, SchedulerConfigError, make_alphas_cumprod, make_betas, per_sample

DEFAULT_ORIGIN_STEPS = 50     # LCM: skip-step k = 20 on 1000 training timesteps
DEFAULT_SIGMA_DATA = 0.5      # LCM / consistency models
DEFAULT_TIMESTEP_SCALING = 10.0  # LCM's discrete boundary condition (diffusers' timestep_scaling)


@dataclasses.dataclass(frozen=True)
class LCMConfig:
    """How a consistency student was distilled (its checkpoint metadata carries these)."""

    origin_steps: int = DEFAULT_ORIGIN_STEPS
    sigma_data: float = DEFAULT_SIGMA_DATA
    timestep_scaling: float = DEFAULT_TIMESTEP_SCALING

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> LCMConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})

    def validate(self, num_train_timesteps: int) -> None:
        if not 1 <= int(self.origin_steps) <= num_train_timesteps or num_train_timesteps % int(self.origin_steps):
            raise SchedulerConfigError(f"lcm origin_steps must divide the {num_train_timesteps} training timesteps, "
                                       f"got {self.origin_steps}")
        if self.sigma_data <= 0 or self.timestep_scaling <= 0:
            raise SchedulerConfigError("lcm sigma_data and timestep_scaling must be > 0")


def skip_step_timesteps(num_train_timesteps: int, origin_steps: int) -> np.ndarray:
    """The ascending (origin_steps,) int32 teacher timesteps k-1, 2k-1, ..., T-1."""
    k = num_train_timesteps // origin_steps
    return (np.arange(1, origin_steps + 1) * k - 1).astype(np.int32)


def lcm_timesteps(num_train_timesteps: int, origin_steps: int, num_inference_steps: int) -> np.ndarray:
    """The descending (num_inference_steps,) int32 sampling timesteps (see the module docstring)."""
    if not 1 <= num_inference_steps <= origin_steps:
        raise SchedulerConfigError(f"lcm sampling needs 1 to {origin_steps} steps (the distillation's origin "
                                   f"steps), got {num_inference_steps}")
    descending = skip_step_timesteps(num_train_timesteps, origin_steps)[::-1]
    picks = np.floor(np.linspace(0, origin_steps, num=num_inference_steps, endpoint=False)).astype(np.int64)
    return descending[picks].astype(np.int32)


def boundary_scalings(t: Any, sigma_data: float, timestep_scaling: float, xp: Any = jnp) -> tuple[Any, Any]:
    """(c_skip, c_out) float32 at integer timesteps ``t`` (any shape); ``xp`` numpy for the static
    step tables, jax.numpy (default) for traced timesteps."""
    scaled = xp.asarray(t, xp.float32) * xp.float32(timestep_scaling)
    var = xp.float32(sigma_data) ** 2
    return var / (scaled ** 2 + var), scaled / xp.sqrt(scaled ** 2 + var)


class LCMStepTable(NamedTuple):
    """Per-step float32 scalars (each field (n,) for n steps); scanned as ``xs``."""

    t: np.ndarray          # int32 timestep fed to the UNet
    alpha_t: np.ndarray    # alphas_cumprod[t]
    c_skip: np.ndarray
    c_out: np.ndarray
    signal: np.ndarray     # sqrt(a_next): scale of the estimate (1 after the last step)
    noise: np.ndarray      # sqrt(1 - a_next): scale of the fresh noise (0 after the last step)


@struct.dataclass
class LCMScheduler:
    """Consistency sampling over the DDIM noise schedule. ``LCMScheduler.from_ddim_config``."""

    alphas_cumprod: jax.Array  # (T,) float32
    config: LCMConfig = struct.field(pytree_node=False)
    ddim_config: DDIMConfig = struct.field(pytree_node=False)  # the noise schedule (static tables)

    init_noise_sigma = 1.0

    @classmethod
    def from_ddim_config(cls, config: Mapping[str, Any] | DDIMConfig,
                         lcm: LCMConfig | Mapping[str, Any] | None = None) -> LCMScheduler:
        ddim = config if isinstance(config, DDIMConfig) else DDIMConfig.from_dict(config)
        ddim.validate()
        if ddim.prediction_type != "epsilon":
            raise SchedulerConfigError(
                f"lcm sampling is implemented for epsilon prediction, not {ddim.prediction_type!r}")
        lcm = lcm if isinstance(lcm, LCMConfig) else LCMConfig.from_dict(lcm or {})
        lcm.validate(ddim.num_train_timesteps)
        return cls(alphas_cumprod=jnp.asarray(make_alphas_cumprod(make_betas(ddim))), config=lcm, ddim_config=ddim)

    @property
    def num_train_timesteps(self) -> int:
        return self.ddim_config.num_train_timesteps

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        return lcm_timesteps(self.num_train_timesteps, self.config.origin_steps, num_inference_steps)

    def scale_model_input(self, sample: jax.Array, t: jax.Array | int) -> jax.Array:
        del t
        return sample

    def step_tables(self, num_inference_steps: int) -> LCMStepTable:
        timesteps = self.timesteps(num_inference_steps)
        alphas = make_alphas_cumprod(make_betas(self.ddim_config))  # numpy: the scheduler may be traced
        c_skip, c_out = (np.asarray(v, np.float32) for v in
                         boundary_scalings(timesteps, self.config.sigma_data, self.config.timestep_scaling, xp=np))
        a_next = np.append(alphas[timesteps[1:]], np.float32(1.0)).astype(np.float32)
        last = np.arange(num_inference_steps) == num_inference_steps - 1
        signal = np.where(last, np.float32(1.0), np.sqrt(a_next)).astype(np.float32)
        noise = np.where(last, np.float32(0.0), np.sqrt(np.float32(1.0) - a_next)).astype(np.float32)
        return LCMStepTable(t=timesteps, alpha_t=alphas[timesteps], c_skip=c_skip, c_out=c_out, signal=signal,
                            noise=noise)

    def update(self, model_output: jax.Array, sample: jax.Array, fresh_noise: jax.Array,
               row: LCMStepTable) -> tuple[jax.Array, jax.Array]:
        """One step: (x_next, denoised estimate f(x, t)) from this step's table ``row``."""
        sample = jnp.asarray(sample, jnp.float32)
        denoised = consistency_from_alpha(model_output, sample, row.alpha_t, row.c_skip, row.c_out)
        return row.signal * denoised + row.noise * jnp.asarray(fresh_noise, jnp.float32), denoised

    def consistency(self, model_output: jax.Array, sample: jax.Array, t: jax.Array) -> jax.Array:
        """``f(x, t)`` for per-sample timesteps ``t`` () or (b,) (training)."""
        return consistency_function(model_output, sample, t, self.alphas_cumprod, self.config)


def consistency_from_alpha(model_output, sample, alpha_t, c_skip, c_out) -> jax.Array:
    """``c_skip x + c_out x0`` with ``x0`` from the predicted noise (all scalars broadcast)."""
    model_output = jnp.asarray(model_output, jnp.float32)
    sample = jnp.asarray(sample, jnp.float32)
    x0 = (sample - jnp.sqrt(1.0 - alpha_t) * model_output) / jnp.sqrt(alpha_t)
    return c_skip * sample + c_out * x0


def consistency_function(model_output: jax.Array, sample: jax.Array, t: jax.Array, alphas_cumprod: jax.Array,
                         config: LCMConfig) -> jax.Array:
    """``f(x, t)`` with per-sample timesteps ``t`` () or (b,) against ``sample`` (b, ...)."""
    t = jnp.asarray(t, jnp.int32)
    c_skip, c_out = boundary_scalings(t, config.sigma_data, config.timestep_scaling)
    alpha = alphas_cumprod[t]
    return consistency_from_alpha(model_output, sample, per_sample(alpha, sample), per_sample(c_skip, sample),
                                  per_sample(c_out, sample))
