"""Consistency sampling (solver "lcm") and the consistency function: the schedule as diffusers'
LCMScheduler computes it, the scan against an independent float64 loop on a toy UNet, the
fresh noise between steps, overlapping windows, option checks, and DDIM's per-sample step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.diffusion import (
    DDIMScheduler,
    LCMConfig,
    LCMScheduler,
    SamplerOptionError,
    SchedulerConfigError,
    initial_latents,
    sample_chunk,
    sample_windows,
    validate_sampler_options,
)
from lipsync_jax.diffusion.lcm import boundary_scalings, lcm_timesteps, skip_step_timesteps
from lipsync_jax.golden.core import load_fixture
from tests.helpers.paths import golden_path


@pytest.fixture(scope="module")
def ddim():
    return DDIMScheduler.from_config(load_fixture(golden_path("ddim.npz")).config)


def toy_unet(params, sample, timesteps, audio_embeds):
    audio = audio_embeds.mean(axis=(2, 3))[:, :, None, None, None]
    t = timesteps.astype(jnp.float32)[:, None, None, None, None] / 1000.0
    return jnp.tanh(sample @ params["w"]) * (1.0 + t) + audio


def _toy_inputs(batch=1, frames=3):
    keys = jax.random.split(jax.random.key(0), 5)
    shape = (batch, frames, 4, 4, 4)
    params = {"w": 0.3 * jax.random.normal(keys[0], (13, 4))}
    mask = (jax.random.uniform(keys[1], shape[:-1] + (1,)) > 0.5).astype(jnp.float32)
    return (params, initial_latents(keys[2], shape), mask, jax.random.normal(keys[3], shape),
            jax.random.normal(keys[3], shape) * 0.5, jax.random.normal(keys[4], (batch, frames, 5, 8)) + 0.5)


def test_schedule_is_diffusers_lcm_on_50_origin_steps():
    assert skip_step_timesteps(1000, 50)[:3].tolist() == [19, 39, 59] and skip_step_timesteps(1000, 50)[-1] == 999
    # diffusers' LCMScheduler.set_timesteps(n, original_inference_steps=50): floor(linspace(0, 50, n,
    # endpoint=False)) into the descending origin schedule
    assert lcm_timesteps(1000, 50, 1).tolist() == [999]
    assert lcm_timesteps(1000, 50, 2).tolist() == [999, 499]
    assert lcm_timesteps(1000, 50, 4).tolist() == [999, 759, 499, 259]
    assert lcm_timesteps(1000, 50, 8).tolist() == [999, 879, 759, 639, 499, 379, 259, 139]
    with pytest.raises(SchedulerConfigError, match="1 to 50 steps"):
        lcm_timesteps(1000, 50, 51)
    with pytest.raises(SchedulerConfigError, match="origin_steps must divide"):
        LCMConfig(origin_steps=30).validate(1000)
    c_skip, c_out = boundary_scalings(jnp.asarray([0, 19, 999]), 0.5, 10.0)
    assert float(c_skip[0]) == 1.0 and float(c_out[0]) == 0.0  # f(x, 0) = x
    np.testing.assert_allclose(np.asarray(c_skip[1:]), 0.25 / (np.array([190.0, 9990.0]) ** 2 + 0.25), rtol=1e-6)
    assert float(c_out[2]) == pytest.approx(1.0, abs=1e-8)


def _lcm_reference(params, latents, mask, masked, ref, audio, ddim, num_steps, noise_key):
    """diffusers' LCMScheduler.step in float64 (list-based), the fresh noise drawn as the scan does."""
    ac = np.asarray(ddim.alphas_cumprod, np.float64)
    timesteps = lcm_timesteps(1000, 50, num_steps)
    keys = jax.random.split(noise_key, num_steps) if noise_key is not None else None
    x = np.asarray(latents, np.float64)
    cond = np.concatenate([mask, masked, ref], axis=-1)
    for i, t in enumerate(timesteps):
        eps = np.asarray(toy_unet(params, jnp.asarray(np.concatenate([x, cond], -1), jnp.float32),
                                  jnp.full((x.shape[0],), t), audio), np.float64)
        scaled = 10.0 * t
        c_skip, c_out = 0.25 / (scaled ** 2 + 0.25), scaled / np.sqrt(scaled ** 2 + 0.25)
        x0 = (x - np.sqrt(1 - ac[t]) * eps) / np.sqrt(ac[t])
        denoised = c_out * x0 + c_skip * x
        if i == num_steps - 1:
            x = denoised
        else:
            a_prev = ac[timesteps[i + 1]]
            z = np.asarray(initial_latents(keys[i], x.shape), np.float64)
            x = np.sqrt(a_prev) * denoised + np.sqrt(1 - a_prev) * z
    return x


@pytest.mark.integration
@pytest.mark.parametrize("num_steps", [1, 4])
def test_lcm_scan_equals_float64_reference(ddim, num_steps):
    params, init, mask, masked, ref, audio = _toy_inputs()
    key = jax.random.key(7) if num_steps > 1 else None
    ours = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=num_steps,
                        guidance_scale=1.0, solver="lcm", noise_key=key)
    expected = _lcm_reference(params, init, mask, masked, ref, audio, ddim, num_steps, key)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    if num_steps > 1:  # the fresh noise matters, and follows the key
        other = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=num_steps,
                             guidance_scale=1.0, solver="lcm", noise_key=jax.random.key(8))
        assert float(jnp.abs(other - ours).max()) > 1e-3


def test_lcm_scheduler_from_other_lcm_settings(ddim):
    params, init, mask, masked, ref, audio = _toy_inputs()
    custom = LCMScheduler.from_ddim_config(ddim.config, {"origin_steps": 25})
    assert custom.timesteps(2).tolist() == [999, 519]  # k = 40: index 12 of the descending schedule
    out = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=custom, num_steps=2,
                       guidance_scale=1.0, solver="lcm", noise_key=jax.random.key(1))
    default = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=2,
                           guidance_scale=1.0, solver="lcm", noise_key=jax.random.key(1))
    assert float(jnp.abs(out - default).max()) > 1e-4


def test_lcm_options_refused_with_one_line(ddim):
    with pytest.raises(SamplerOptionError, match="does not combine with scheduler lcm"):
        validate_sampler_options(solver="lcm", deepcache_interval=2)
    validate_sampler_options(solver="lcm", deepcache_interval=1, overlap=4)  # 1 = off; overlap combines
    params, init, mask, masked, ref, audio = _toy_inputs()
    with pytest.raises(SamplerOptionError, match="needs a noise_key"):
        sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=2,
                     guidance_scale=1.0, solver="lcm")


@pytest.mark.integration
def test_lcm_overlapping_windows_share_their_frames(ddim):
    """Three consecutive 3-frame windows sharing 1 frame: after 4 lcm steps (fresh noise in
    between) each window's first frame is its predecessor's last, and overlap 0 is sample_chunk."""
    params, init, mask, masked, ref, audio = _toy_inputs(batch=3)
    key = jax.random.key(3)
    latents, tail = sample_windows(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=4,
                                   guidance_scale=1.0, solver="lcm", overlap=1, noise_key=key)
    np.testing.assert_array_equal(latents[1, :1], latents[0, -1:])
    np.testing.assert_array_equal(latents[2, :1], latents[1, -1:])
    np.testing.assert_array_equal(tail[-1], latents[2, -1:])
    plain, none = sample_windows(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=4,
                                 guidance_scale=1.0, solver="lcm", overlap=0, noise_key=key)
    assert none is None
    np.testing.assert_array_equal(plain, sample_chunk(toy_unet, params, init, mask, masked, ref, audio,
                                                      scheduler=ddim, num_steps=4, guidance_scale=1.0, solver="lcm",
                                                      noise_key=key))


@pytest.mark.integration
def test_ddim_step_to_per_sample_equals_scalar_steps(ddim):
    keys = jax.random.split(jax.random.key(5), 2)
    sample, eps = jax.random.normal(keys[0], (3, 2, 4, 4, 4)), jax.random.normal(keys[1], (3, 2, 4, 4, 4))
    t, prev = jnp.asarray([999, 519, 19]), jnp.asarray([979, 499, -1])
    both = ddim.step_to(eps, t, prev, sample).prev_sample
    for i in range(3):
        one = ddim.step_to(eps[i], int(t[i]), int(prev[i]), sample[i]).prev_sample
        np.testing.assert_allclose(both[i], one, rtol=1e-6)
    # t - 20 with 50 steps is the plain step of a 50-step schedule
    np.testing.assert_array_equal(ddim.step_to(eps, 519, 499, sample).prev_sample,
                                  ddim.step(eps, 519, sample, num_inference_steps=50).prev_sample)
    # below t = 0 the update lands on the final alpha (alphas_cumprod[0] here): the skip step of t = 19
    a_t, a_0 = float(ddim.alphas_cumprod[19]), float(ddim.alphas_cumprod[0])
    x0 = (sample[2] - np.sqrt(1 - a_t) * eps[2]) / np.sqrt(a_t)
    np.testing.assert_allclose(both[2], np.sqrt(a_0) * x0 + np.sqrt(1 - a_0) * eps[2], rtol=1e-5, atol=1e-6)
