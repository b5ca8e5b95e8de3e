"""DPM-Solver++ (multistep, order 1 or 2) with the arithmetic of diffusers' (0.32)
``DPMSolverMultistepScheduler``, configured from LatentSync's DDIM config.

``DPMSolverConfig.from_ddim_config`` reproduces ``DPMSolverMultistepScheduler.from_config(ddim)``:
the noise schedule fields (``num_train_timesteps``, ``beta_*``, ``trained_betas``,
``steps_offset``, ``prediction_type``...) carry over; fields the DDIM config only holds at their
default value take DPM-Solver's own default instead. diffusers does this through the config's
``_use_default_values`` list (the fields LatentSync's ``scheduler_config.json`` leaves out); a
config without that list (ours, configs/scheduler.py, fills in DDIM's defaults) is read with the
same result by treating a value equal to DDIM's default as left out. The one field where this
matters is ``timestep_spacing``: LatentSync's DDIM uses "leading", DPM-Solver++ "linspace"
(10 steps: 999, 899, ..., 100).

The sampler drives the solver inside ``lax.scan``: ``step_tables(n)`` gives per-step float32
scalars (precomputed in numpy, like torch's float32 scalar arithmetic), ``update`` applies one
step to ``(sample, previous data prediction)``; that previous x0 prediction is the solver's
state in the scan carry.

Per step k with sigmas s_k = sqrt((1 - a_t) / a_t) at the timesteps and a final 0
(``final_sigmas_type`` "zero"): alpha = 1 / sqrt(s^2 + 1), sigma = s * alpha,
lambda = log(alpha) - log(sigma), h = lambda_{k+1} - lambda_k; data prediction
x0 = (x - sigma_k eps) / alpha_k; first order x' = (sigma_{k+1} / sigma_k) x - alpha_{k+1}(e^-h - 1) x0;
second order (midpoint) adds - 0.5 alpha_{k+1}(e^-h - 1) (x0_k - x0_{k-1}) h / h_{k-1}.
The first step, and the last one with ``lower_order_final`` (always with a zero final sigma),
are first order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from lipsync_jax.diffusion.ddim import (
    DDIMConfig,
    SchedulerConfigError,
    check_beta_schedule,
    make_alphas_cumprod,
    make_betas,
    scheduler_config_from_dict,
)


@dataclasses.dataclass(frozen=True)
class DPMSolverConfig:
    """The DPMSolverMultistepScheduler config fields (diffusers names and defaults) we support."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.0001
    beta_end: float = 0.02
    beta_schedule: str = "linear"
    trained_betas: tuple[float, ...] | None = None
    solver_order: int = 2
    prediction_type: str = "epsilon"
    algorithm_type: str = "dpmsolver++"
    solver_type: str = "midpoint"
    lower_order_final: bool = True
    euler_at_final: bool = False
    final_sigmas_type: str = "zero"
    timestep_spacing: str = "linspace"
    steps_offset: int = 0
    # accepted only at these values (anything else raises SchedulerConfigError)
    thresholding: bool = False
    use_karras_sigmas: bool = False
    use_exponential_sigmas: bool = False
    use_beta_sigmas: bool = False
    use_lu_lambdas: bool = False
    use_flow_sigmas: bool = False
    lambda_min_clipped: float = float("-inf")
    variance_type: str | None = None
    rescale_betas_zero_snr: bool = False

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> DPMSolverConfig:
        """A DPM-Solver config dict (diffusers names); unknown keys are ignored."""
        return scheduler_config_from_dict(cls, config)

    @classmethod
    def from_ddim_config(cls, config: Mapping[str, Any] | DDIMConfig, **overrides) -> DPMSolverConfig:
        """``DPMSolverMultistepScheduler.from_config(ddim_config)`` (see the module docstring),
        then ``overrides`` (e.g. ``solver_order=1``)."""
        if isinstance(config, DDIMConfig):
            config = dataclasses.asdict(config)
        left_out = config.get("_use_default_values")
        if left_out is None:  # no record of what the json left out: DDIM defaults count as left out
            ddim_defaults = {f.name: f.default for f in dataclasses.fields(DDIMConfig)}
            left_out = [k for k, v in config.items() if k in ddim_defaults and v == ddim_defaults[k]]
        kept = {k: v for k, v in config.items() if k not in set(left_out) and not k.startswith("_")}
        kept.update(overrides)
        return cls.from_dict(kept)

    def validate(self) -> None:
        check_beta_schedule(self)
        if self.algorithm_type != "dpmsolver++":
            raise SchedulerConfigError(f"algorithm_type {self.algorithm_type!r} is not supported (dpmsolver++)")
        if self.solver_order not in (1, 2):
            raise SchedulerConfigError(f"solver_order must be 1 or 2, got {self.solver_order}")
        if self.solver_type not in ("midpoint", "heun"):
            raise SchedulerConfigError(f"unknown solver_type {self.solver_type!r} (midpoint, heun)")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise SchedulerConfigError(f"unknown prediction_type {self.prediction_type!r}")
        if self.timestep_spacing not in ("linspace", "leading", "trailing"):
            raise SchedulerConfigError(f"unknown timestep_spacing {self.timestep_spacing!r}")
        if self.final_sigmas_type not in ("zero", "sigma_min"):
            raise SchedulerConfigError(f"unknown final_sigmas_type {self.final_sigmas_type!r}")
        unsupported = [name for name in ("thresholding", "use_karras_sigmas", "use_exponential_sigmas",
                                         "use_beta_sigmas", "use_lu_lambdas", "use_flow_sigmas",
                                         "rescale_betas_zero_snr") if getattr(self, name)]
        if self.variance_type is not None:
            unsupported.append("variance_type")
        if self.lambda_min_clipped != float("-inf"):
            unsupported.append("lambda_min_clipped")
        if unsupported:
            raise SchedulerConfigError(f"DPM-Solver++ options not supported: {unsupported}")


def dpm_timesteps(cfg: DPMSolverConfig, num_inference_steps: int) -> np.ndarray:
    """The descending (num_inference_steps,) int32 timesteps of ``set_timesteps``."""
    total = cfg.num_train_timesteps
    if not 1 <= num_inference_steps <= total:
        raise SchedulerConfigError(f"num_inference_steps must be in [1, {total}], got {num_inference_steps}")
    n = num_inference_steps
    if cfg.timestep_spacing == "linspace":
        steps = np.linspace(0, total - 1, n + 1).round()[::-1][:-1].astype(np.int64)
    elif cfg.timestep_spacing == "leading":
        ratio = total // (n + 1)
        steps = (np.arange(0, n + 1) * ratio).round()[::-1][:-1].astype(np.int64) + cfg.steps_offset
    else:  # trailing
        steps = np.arange(total, 0, -total / n).round().astype(np.int64) - 1
    return steps.astype(np.int32)


class DPMStepTable(NamedTuple):
    """Per-step float32 scalars (each field shaped (n,) for n steps); scanned as ``xs``."""

    t: np.ndarray  # int32 timestep fed to the UNet
    alpha_s: np.ndarray  # alpha at this step's sigma (data prediction)
    sigma_s: np.ndarray
    ratio: np.ndarray  # sigma_next / sigma_this
    coef_d0: np.ndarray  # alpha_next * (exp(-h) - 1)
    coef_d1: np.ndarray  # second-order coefficient on D1 (0 at first-order steps)
    inv_r0: np.ndarray  # h / h_prev (0 at first-order steps)


def _alpha_sigma(sigma: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    alpha = (np.float32(1.0) / np.sqrt(sigma * sigma + np.float32(1.0))).astype(np.float32)
    return alpha, (sigma * alpha).astype(np.float32)


@struct.dataclass
class DPMSolverScheduler:
    """DPM-Solver++ over a fixed noise schedule. Build with ``DPMSolverScheduler.from_config``."""

    alphas_cumprod: jax.Array  # (T,) float32
    config: DPMSolverConfig = struct.field(pytree_node=False)

    init_noise_sigma = 1.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | DPMSolverConfig) -> DPMSolverScheduler:
        cfg = config if isinstance(config, DPMSolverConfig) else DPMSolverConfig.from_dict(config)
        cfg.validate()
        return cls(alphas_cumprod=jnp.asarray(make_alphas_cumprod(make_betas(cfg))), config=cfg)

    @classmethod
    def from_ddim_config(cls, config: Mapping[str, Any] | DDIMConfig, **overrides) -> DPMSolverScheduler:
        return cls.from_config(DPMSolverConfig.from_ddim_config(config, **overrides))

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        return dpm_timesteps(self.config, num_inference_steps)

    def scale_model_input(self, sample: jax.Array, t: jax.Array | int) -> jax.Array:
        del t
        return sample

    def step_tables(self, num_inference_steps: int) -> DPMStepTable:
        """Static per-step coefficients (numpy, float32) for ``num_inference_steps`` steps."""
        cfg = self.config
        alphas_cumprod = make_alphas_cumprod(make_betas(cfg))
        all_sigmas = (((np.float32(1.0) - alphas_cumprod) / alphas_cumprod) ** np.float32(0.5)).astype(np.float32)
        timesteps = self.timesteps(num_inference_steps)
        last = np.float32(0.0) if cfg.final_sigmas_type == "zero" else all_sigmas[0]
        sigmas = np.concatenate([all_sigmas[timesteps], [last]]).astype(np.float32)  # (n + 1,)
        alpha, sigma = _alpha_sigma(sigmas)
        with np.errstate(divide="ignore"):
            lam = (np.log(alpha) - np.log(sigma)).astype(np.float32)  # +inf at a zero sigma
        n = num_inference_steps
        rows = {name: np.zeros(n, np.float32) for name in DPMStepTable._fields if name != "t"}
        for k in range(n):
            h = np.float32(lam[k + 1] - lam[k])
            expm1 = np.float32(np.exp(-h) - np.float32(1.0))
            rows["alpha_s"][k], rows["sigma_s"][k] = alpha[k], sigma[k]
            rows["ratio"][k] = sigma[k + 1] / sigma[k]
            rows["coef_d0"][k] = alpha[k + 1] * expm1
            final_low = k == n - 1 and (cfg.euler_at_final or (cfg.lower_order_final and n < 15)
                                        or cfg.final_sigmas_type == "zero")
            if cfg.solver_order == 2 and k >= 1 and not final_low:
                rows["inv_r0"][k] = np.float32(1.0) / (np.float32(lam[k] - lam[k - 1]) / h)
                if cfg.solver_type == "midpoint":
                    rows["coef_d1"][k] = np.float32(0.5) * (alpha[k + 1] * expm1)
                else:  # heun
                    rows["coef_d1"][k] = -(alpha[k + 1] * (expm1 / h + np.float32(1.0)))
        return DPMStepTable(t=timesteps, **rows)

    def data_prediction(self, model_output: jax.Array, sample: jax.Array, alpha_s, sigma_s) -> jax.Array:
        """The x0 prediction from the UNet output (``convert_model_output`` of dpmsolver++)."""
        model_output = jnp.asarray(model_output, jnp.float32)
        kind = self.config.prediction_type
        if kind == "epsilon":
            return (sample - sigma_s * model_output) / alpha_s
        if kind == "sample":
            return model_output
        return alpha_s * sample - sigma_s * model_output  # v_prediction

    def update(self, model_output: jax.Array, sample: jax.Array, prev_x0: jax.Array,
               row: DPMStepTable) -> tuple[jax.Array, jax.Array]:
        """One step: (x_next, x0 of this step) from this step's table ``row`` (scalars) and the
        previous step's x0 (any value at first-order steps, where ``inv_r0`` is 0)."""
        sample = jnp.asarray(sample, jnp.float32)
        x0 = self.data_prediction(model_output, sample, row.alpha_s, row.sigma_s)
        d1 = row.inv_r0 * (x0 - prev_x0)
        x_next = row.ratio * sample - row.coef_d0 * x0 - row.coef_d1 * d1
        return x_next, x0
