"""Golden checks for the ``ddim`` scheduler, the 20-step ``sampling_loop`` fixture and its
variants ``sampling_deepcache`` (DeepCache interval 3) and ``sampling_dpmsolver`` (DPM-Solver++ 2M).

The fixtures are channels-first (b, c, f, h, w); our sampler is channels-last (b, f, h, w, c).
The sampling loop uses the stage2 tiny UNet whose weights live in ``unet_stage2_tiny.npz`` next
to the ``sampling_loop`` file.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.diffusion.ddim import DDIMScheduler
from lipsync_jax.diffusion.dpmsolver import DPMSolverConfig, DPMSolverScheduler
from lipsync_jax.diffusion.sampler import ModuleApply, sample_chunk
from lipsync_jax.golden.core import Comparison, Fixture, compare_exact, compare_rel, load_fixture

DDIM_TOL = 1e-6
LOOP_TOL = 1e-3
UNET_WEIGHTS_FILE = "unet_stage2_tiny.npz"


def _to_channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, 1, -1)  # (b, c, f, h, w) -> (b, f, h, w, c)


def check_ddim(fx: Fixture) -> list[Comparison]:
    sched = DDIMScheduler.from_config(fx.config)
    ref_steps = fx.inputs["timesteps_20"]
    num_steps = len(ref_steps)
    results = [compare_exact(fx.kind, "timesteps", sched.timesteps(num_steps), ref_steps),
               compare_rel(fx.kind, "alphas_cumprod", sched.alphas_cumprod,
                           fx.outputs["alphas_cumprod"], DDIM_TOL)]
    step_names = sorted(k[:-len("_t")] for k in fx.inputs if k.startswith("step") and k.endswith("_t"))
    for name in step_names:
        out = sched.step(fx.inputs[f"{name}_model_output"], int(fx.inputs[f"{name}_t"]),
                         fx.inputs[f"{name}_sample"], num_inference_steps=num_steps)
        results.append(compare_rel(fx.kind, f"{name}_prev_sample", out.prev_sample,
                                   fx.outputs[f"{name}_prev_sample"], DDIM_TOL))
        results.append(compare_rel(fx.kind, f"{name}_pred_original_sample", out.pred_original_sample,
                                   fx.outputs[f"{name}_pred_original_sample"], DDIM_TOL))
    t = fx.inputs["add_noise_t"]
    results.append(compare_rel(fx.kind, "add_noise",
                               sched.add_noise(fx.inputs["add_noise_x0"], fx.inputs["add_noise_noise"], t),
                               fx.outputs["add_noise"], DDIM_TOL))
    results.append(compare_rel(fx.kind, "one_step_x0",
                               sched.one_step_x0(fx.outputs["add_noise"], fx.inputs["one_step_pred_noise"], t),
                               fx.outputs["one_step_x0"], DDIM_TOL))
    return results


def _unet_apply_for(unet_config: dict, unet_fixture: Fixture):
    """(unet_apply, params): the sampling loop's UNet config with the weights of ``unet_fixture``."""
    from lipsync_jax.convert.unet import convert_state_dict
    from lipsync_jax.models.unet3d import UNet3DConditionModel
    from lipsync_jax.models.unet_config import UNet3DConfig

    config = UNet3DConfig.from_dict(unet_config)
    params, _ = convert_state_dict(unet_fixture.weights_f32(), config, dtype=jnp.float32, what=unet_fixture.path)
    return ModuleApply(UNet3DConditionModel(config)), params


def _run_sampling_fixture(fx: Fixture, *, solver: str = "ddim", deepcache_interval: int = 0,
                          num_steps: int | None = None):
    """Final latents (channels-first) of the fixture's loop, or an ERROR Comparison list."""
    weights_path = os.path.join(os.path.dirname(fx.path), UNET_WEIGHTS_FILE)
    if not os.path.isfile(weights_path):
        return [Comparison(fx.kind, "latents", None, LOOP_TOL, False, status="ERROR",
                           detail=f"UNet weights {weights_path} not found")]
    cfg = fx.config
    unet_apply, params = _unet_apply_for(cfg["unet"], load_fixture(weights_path))
    inputs = {k: _to_channels_last(v) for k, v in fx.inputs.items() if k != "audio_embeds"}
    latents = sample_chunk(unet_apply, params, inputs["init_latents"], inputs["mask"],
                           inputs["masked_image_latents"], inputs["ref_latents"],
                           fx.inputs["audio_embeds"], scheduler=DDIMScheduler.from_config(cfg["scheduler"]),
                           num_steps=int(num_steps or cfg["num_inference_steps"]),
                           guidance_scale=float(cfg["guidance_scale"]), solver=solver,
                           deepcache_interval=deepcache_interval)
    return _to_channels_first(np.asarray(jax.device_get(latents)))


def _loop_result(fx: Fixture, latents) -> list[Comparison]:
    if isinstance(latents, list):  # an ERROR
        return latents
    return [compare_rel(fx.kind, "latents", latents, fx.outputs["latents"], LOOP_TOL)]


def check_sampling_loop(fx: Fixture) -> list[Comparison]:
    return _loop_result(fx, _run_sampling_fixture(fx))


def check_sampling_deepcache(fx: Fixture) -> list[Comparison]:
    meta = fx.meta["deepcache"]
    if meta.get("cache_branch_id", 0) != 0 or meta.get("skip_mode", "uniform") != "uniform":
        raise ValueError(f"{fx.path}: only DeepCache branch 0, uniform skipping is implemented, got {meta}")
    sched = DDIMScheduler.from_config(fx.config["scheduler"])
    steps = int(fx.config["num_inference_steps"])
    results = [compare_exact(fx.kind, "timesteps", sched.timesteps(steps), np.asarray(fx.meta["timesteps"]))]
    latents = _run_sampling_fixture(fx, deepcache_interval=int(meta["cache_interval"]))
    return results + _loop_result(fx, latents)


def check_sampling_dpmsolver(fx: Fixture) -> list[Comparison]:
    """The solver is built from the DDIM config (``from_config``); meta's derived DPM config and
    timesteps are checked against ours first."""
    steps = int(fx.meta["num_inference_steps"])
    ours = DPMSolverConfig.from_ddim_config(fx.config["scheduler"])
    expected = fx.meta["dpm_scheduler_config"]
    fields = [f.name for f in dataclasses.fields(DPMSolverConfig) if f.name in expected]
    mismatched = [f"{name}: {getattr(ours, name)!r} != {expected[name]!r}" for name in fields
                  if _normalised(getattr(ours, name)) != _normalised(expected[name])]
    results = [Comparison(fx.kind, "dpm_config", float(len(mismatched)), 0.0, not mismatched,
                          detail="; ".join(mismatched)),
               compare_exact(fx.kind, "timesteps", DPMSolverScheduler.from_config(ours).timesteps(steps),
                             np.asarray(fx.meta["timesteps"]))]
    latents = _run_sampling_fixture(fx, solver="dpmsolver++", num_steps=steps)
    return results + _loop_result(fx, latents)


def _normalised(value):
    return tuple(value) if isinstance(value, list) else value


def _to_channels_first(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(x, -1, 1)  # (b, f, h, w, c) -> (b, c, f, h, w)


def check_fixture(fx: Fixture) -> list[Comparison]:
    if fx.kind == "ddim":
        return check_ddim(fx)
    if fx.kind == "sampling_loop":
        return check_sampling_loop(fx)
    if fx.kind == "sampling_deepcache":
        return check_sampling_deepcache(fx)
    if fx.kind == "sampling_dpmsolver":
        return check_sampling_dpmsolver(fx)
    raise ValueError(f"{fx.path}: check_sampling cannot check kind {fx.kind!r}")
