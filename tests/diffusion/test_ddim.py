"""DDIM scheduler: parity with diffusers' DDIMScheduler (the ddim golden fixture) and jit-safety."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.diffusion.ddim import DDIMScheduler, SchedulerConfigError
from lipsync_jax.golden.core import load_fixture, rel_l2
from tests.helpers.paths import ROOT, golden_path


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("ddim.npz"))


@pytest.fixture(scope="module")
def scheduler(fixture):
    return DDIMScheduler.from_config(fixture.config)


def test_schedule_and_timesteps_match_diffusers(fixture, scheduler):
    ref_steps = fixture.inputs["timesteps_20"]
    np.testing.assert_array_equal(scheduler.timesteps(len(ref_steps)), ref_steps)
    assert rel_l2(scheduler.alphas_cumprod, fixture.outputs["alphas_cumprod"]) <= 1e-6
    # set_alpha_to_one false: the value "before" t=0 is alphas_cumprod[0]
    assert float(scheduler.final_alpha_cumprod) == float(scheduler.alphas_cumprod[0])


def _step_indices(fixture):
    return sorted({k.split("_")[0] for k in fixture.inputs if k.startswith("step") and k.endswith("_t")})


def test_step_matches_diffusers(fixture, scheduler):
    num_steps = len(fixture.inputs["timesteps_20"])
    names = _step_indices(fixture)
    assert names
    for name in names:
        out = scheduler.step(fixture.inputs[f"{name}_model_output"], int(fixture.inputs[f"{name}_t"]),
                             fixture.inputs[f"{name}_sample"], num_inference_steps=num_steps)
        assert rel_l2(out.prev_sample, fixture.outputs[f"{name}_prev_sample"]) <= 1e-6, name
        assert rel_l2(out.pred_original_sample, fixture.outputs[f"{name}_pred_original_sample"]) <= 1e-6


def test_step_with_traced_timestep_equals_eager(fixture, scheduler):
    x = fixture.inputs["step0_sample"]
    eps = fixture.inputs["step0_model_output"]
    jitted = jax.jit(lambda s, t: s.step(eps, t, x, num_inference_steps=20).prev_sample)
    for t in (951, 1):  # t=1 steps past 0: uses final_alpha_cumprod
        eager = scheduler.step(eps, t, x, num_inference_steps=20).prev_sample
        np.testing.assert_allclose(jitted(scheduler, jnp.int32(t)), eager, rtol=1e-6, atol=1e-6)


def test_add_noise_and_one_step_x0(fixture, scheduler):
    t = fixture.inputs["add_noise_t"]
    noisy = scheduler.add_noise(fixture.inputs["add_noise_x0"], fixture.inputs["add_noise_noise"], t)
    assert rel_l2(noisy, fixture.outputs["add_noise"]) <= 1e-6
    x0 = scheduler.one_step_x0(fixture.outputs["add_noise"], fixture.inputs["one_step_pred_noise"], t)
    assert rel_l2(x0, fixture.outputs["one_step_x0"]) <= 1e-6


def test_one_step_x0_inverts_add_noise(scheduler):
    key_x, key_n = jax.random.split(jax.random.key(0))
    x0 = jax.random.normal(key_x, (2, 3, 4, 4, 4))
    noise = jax.random.normal(key_n, x0.shape)
    t = jnp.array([10, 500])
    recovered = scheduler.one_step_x0(scheduler.add_noise(x0, noise, t), noise, t)
    np.testing.assert_allclose(recovered, x0, atol=2e-4)


def test_scale_model_input_is_identity(scheduler):
    x = jnp.arange(6.0).reshape(1, 6)
    assert scheduler.scale_model_input(x, 501) is x
    assert scheduler.init_noise_sigma == 1.0


def test_other_spacings_and_bad_config(fixture):
    cfg = dict(fixture.config)
    trailing = DDIMScheduler.from_config({**cfg, "timestep_spacing": "trailing"}).timesteps(10)
    assert trailing[0] == cfg["num_train_timesteps"] - 1 and np.all(np.diff(trailing) < 0)
    with pytest.raises(SchedulerConfigError, match="thresholding"):
        DDIMScheduler.from_config({**cfg, "thresholding": True})
    with pytest.raises(SchedulerConfigError, match="num_inference_steps"):
        DDIMScheduler.from_config(cfg).timesteps(0)


def test_project_scheduler_config_equals_fixture_config(fixture):
    """configs/scheduler.py (a ConfigDict) builds the same schedule as the fixture's dict."""
    import os

    from lipsync_jax.config_utils import load_config

    path = os.path.join(ROOT, "configs", "scheduler.py")
    ours = DDIMScheduler.from_config(load_config(path))
    ref = DDIMScheduler.from_config(fixture.config)
    assert ours.config == ref.config
    np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod)
