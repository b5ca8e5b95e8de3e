"""DDIM scheduler with the arithmetic of diffusers' ``DDIMScheduler`` (0.32), as LatentSync uses it.

The noise schedule is a few static float32 arrays built once in numpy from the scheduler config
(LatentSync's ``configs/scheduler_config.json`` field names). Every method is a pure function of
those arrays, so a ``DDIMScheduler`` can be passed into ``jax.jit``/``lax.scan`` (it is a pytree)
and timesteps may be traced integers.

Float32 details that matter for bit-level parity with diffusers (torch on CPU):
- ``betas = linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` in float32, with torch's
  linspace rule (the first half counts up from the start, the second half down from the end);
- ``alphas_cumprod`` is a running product accumulated in float64 and rounded to float32 (torch's
  CPU cumprod accumulates float32 inputs in double).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


class SchedulerConfigError(ValueError):
    """A scheduler config asks for something this DDIM implementation does not support."""


def scheduler_config_from_dict(cls: type, config: Mapping[str, Any]) -> Any:
    """``cls(**...)`` (DDIMConfig, DPMSolverConfig) from the keys of ``config`` that are its fields
    (others ignored), ``trained_betas`` as a tuple of floats, validated."""
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in config.items() if k in names}
    if kwargs.get("trained_betas") is not None:
        kwargs["trained_betas"] = tuple(float(b) for b in kwargs["trained_betas"])
    cfg = cls(**kwargs)
    cfg.validate()
    return cfg


def check_beta_schedule(cfg: Any) -> None:
    """The beta schedules ``make_betas`` builds: linear, scaled_linear, or trained_betas."""
    if cfg.beta_schedule not in ("linear", "scaled_linear") and cfg.trained_betas is None:
        raise SchedulerConfigError(f"beta_schedule {cfg.beta_schedule!r} is not supported "
                                   "(linear, scaled_linear, or trained_betas)")


@dataclasses.dataclass(frozen=True)
class DDIMConfig:
    """The DDIMScheduler config fields (diffusers names) that change the arithmetic."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    clip_sample: bool = True
    clip_sample_range: float = 1.0
    set_alpha_to_one: bool = True
    steps_offset: int = 0
    prediction_type: str = "epsilon"
    timestep_spacing: str = "leading"
    thresholding: bool = False
    rescale_betas_zero_snr: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> DDIMConfig:
        """Reads a diffusers/LatentSync scheduler config; bookkeeping keys (``_class_name``,
        ``skip_prk_steps``...) and fields without effect on DDIM arithmetic are ignored."""
        return scheduler_config_from_dict(cls, config)

    def validate(self) -> None:
        check_beta_schedule(self)
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise SchedulerConfigError(f"unknown prediction_type {self.prediction_type!r}")
        if self.timestep_spacing not in ("leading", "trailing", "linspace"):
            raise SchedulerConfigError(f"unknown timestep_spacing {self.timestep_spacing!r}")
        if self.thresholding:
            raise SchedulerConfigError("dynamic thresholding is not supported (LatentSync uses false)")
        if self.rescale_betas_zero_snr:
            raise SchedulerConfigError("rescale_betas_zero_snr is not supported (LatentSync uses false)")


def _torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """float32 linspace computed like torch on CPU: start + i*step below the midpoint,
    end - (steps-1-i)*step from it on."""
    start32, end32 = np.float32(start), np.float32(end)
    if steps == 1:
        return np.array([start32], np.float32)
    step = np.float32(end32 - start32) / np.float32(steps - 1)
    idx = np.arange(steps)
    up = start32 + step * idx.astype(np.float32)
    down = end32 - step * (steps - 1 - idx).astype(np.float32)
    return np.where(idx < steps // 2, up, down).astype(np.float32)


def make_betas(cfg: DDIMConfig) -> np.ndarray:
    """(T,) float32 betas."""
    if cfg.trained_betas is not None:
        return np.asarray(cfg.trained_betas, np.float32)
    if cfg.beta_schedule == "linear":
        return _torch_linspace_f32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps)
    roots = _torch_linspace_f32(cfg.beta_start ** 0.5, cfg.beta_end ** 0.5, cfg.num_train_timesteps)
    return (roots * roots).astype(np.float32)  # scaled_linear


def make_alphas_cumprod(betas: np.ndarray) -> np.ndarray:
    """(T,) float32 cumulative product of (1 - beta), accumulated in float64."""
    alphas = (np.float32(1.0) - betas).astype(np.float32)
    return np.cumprod(alphas.astype(np.float64)).astype(np.float32)


def inference_timesteps(cfg: DDIMConfig, num_inference_steps: int) -> np.ndarray:
    """The descending (num_inference_steps,) int32 timesteps of ``set_timesteps``."""
    total = cfg.num_train_timesteps
    if not 1 <= num_inference_steps <= total:
        raise SchedulerConfigError(
            f"num_inference_steps must be in [1, {total}], got {num_inference_steps}")
    if cfg.timestep_spacing == "leading":
        ratio = total // num_inference_steps
        steps = (np.arange(num_inference_steps) * ratio).round()[::-1].astype(np.int64)
        steps = steps + cfg.steps_offset
    elif cfg.timestep_spacing == "trailing":
        ratio = total / num_inference_steps
        steps = np.round(np.arange(total, 0, -ratio)).astype(np.int64) - 1
    else:  # linspace
        steps = np.linspace(0, total - 1, num_inference_steps).round()[::-1].astype(np.int64)
    return steps.astype(np.int32)


class DDIMStepOutput(NamedTuple):
    prev_sample: jax.Array  # x_{t-1}
    pred_original_sample: jax.Array  # x_0 estimate


def per_sample(values: jax.Array, like: jax.Array) -> jax.Array:
    """(b,) or () schedule values -> broadcastable against ``like`` (b, ...)."""
    values = jnp.asarray(values)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


@struct.dataclass
class DDIMScheduler:
    """DDIM (eta 0) over a fixed noise schedule. Build with ``DDIMScheduler.from_config(cfg)``."""

    alphas_cumprod: jax.Array  # (T,) float32
    final_alpha_cumprod: jax.Array  # () float32: alpha_cumprod "before" t = 0
    config: DDIMConfig = struct.field(pytree_node=False)

    init_noise_sigma = 1.0  # DDIM starts from unit-variance noise

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DDIMConfig) -> DDIMScheduler:
        cfg = config if isinstance(config, DDIMConfig) else DDIMConfig.from_dict(config)
        cfg.validate()
        alphas_cumprod = make_alphas_cumprod(make_betas(cfg))
        final = np.float32(1.0) if cfg.set_alpha_to_one else alphas_cumprod[0]
        return cls(alphas_cumprod=jnp.asarray(alphas_cumprod),
                   final_alpha_cumprod=jnp.asarray(final, jnp.float32), config=cfg)

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Descending int32 timesteps, e.g. [951, 901, ..., 1] for 20 "leading" steps."""
        return inference_timesteps(self.config, num_inference_steps)

    def scale_model_input(self, sample: jax.Array, t: jax.Array | int) -> jax.Array:
        """DDIM does not rescale the UNet input (kept for the sampler's generic loop)."""
        del t
        return sample

    def step(self, model_output: jax.Array, t: jax.Array | int, sample: jax.Array, *,
             num_inference_steps: int) -> DDIMStepOutput:
        """One deterministic DDIM update x_t -> x_{t - T // num_inference_steps} (eta 0).

        ``t`` is a scalar (python or traced int); arrays are any shape, computed in float32.
        """
        t = jnp.asarray(t, jnp.int32)
        return self.step_to(model_output, t, t - self.num_train_timesteps // num_inference_steps, sample)

    def step_to(self, model_output: jax.Array, t: jax.Array | int, prev_t: jax.Array | int,
                sample: jax.Array) -> DDIMStepOutput:
        """The DDIM update x_t -> x_{prev_t} (eta 0) with ``t``, ``prev_t`` () or per sample (b,);
        a negative ``prev_t`` lands on ``final_alpha_cumprod`` (distillation's skip steps)."""
        t, prev_t = jnp.asarray(t, jnp.int32), jnp.asarray(prev_t, jnp.int32)
        alpha_t = per_sample(self.alphas_cumprod[t], sample)
        alpha_prev = per_sample(jnp.where(prev_t >= 0, self.alphas_cumprod[jnp.maximum(prev_t, 0)],
                                          self.final_alpha_cumprod), sample)
        x0, eps = self._split_prediction(model_output, sample, alpha_t)
        if self.config.clip_sample:
            r = self.config.clip_sample_range
            x0 = jnp.clip(x0, -r, r)
        direction = jnp.sqrt(1.0 - alpha_prev) * eps
        prev_sample = jnp.sqrt(alpha_prev) * x0 + direction
        return DDIMStepOutput(prev_sample, x0)

    def _split_prediction(self, model_output, sample, alpha_t):
        """(x0, eps) from the UNet output according to ``prediction_type``."""
        model_output = jnp.asarray(model_output, jnp.float32)
        sample = jnp.asarray(sample, jnp.float32)
        beta_t = 1.0 - alpha_t
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - jnp.sqrt(beta_t) * model_output) / jnp.sqrt(alpha_t), model_output
        if kind == "sample":
            return model_output, (sample - jnp.sqrt(alpha_t) * model_output) / jnp.sqrt(beta_t)
        # v_prediction
        x0 = jnp.sqrt(alpha_t) * sample - jnp.sqrt(beta_t) * model_output
        eps = jnp.sqrt(alpha_t) * model_output + jnp.sqrt(beta_t) * sample
        return x0, eps

    def add_noise(self, x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
        """Forward diffusion q(x_t | x_0); ``t`` is () or (b,) (one timestep per sample)."""
        alpha = per_sample(self.alphas_cumprod[jnp.asarray(t, jnp.int32)], x0)
        return jnp.sqrt(alpha) * x0 + jnp.sqrt(1.0 - alpha) * noise

    def one_step_x0(self, x_t: jax.Array, pred_noise: jax.Array, t: jax.Array) -> jax.Array:
        """Training-time x0 estimate ``(x_t - sqrt(1 - a_t) * eps) / sqrt(a_t)``, per-sample t."""
        alpha = per_sample(self.alphas_cumprod[jnp.asarray(t, jnp.int32)], x_t)
        return (x_t - jnp.sqrt(1.0 - alpha) * pred_noise) / jnp.sqrt(alpha)
