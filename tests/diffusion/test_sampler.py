"""The jitted DDIM sampling loop, with toy stand-in UNets (the real-UNet parity is the
sampling_loop golden check)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.diffusion.ddim import DDIMScheduler
from lipsync_jax.diffusion.sampler import guided_noise_pred, initial_latents, sample_chunk
from lipsync_jax.golden.core import load_fixture
from tests.helpers.paths import golden_path

SHAPE = (1, 3, 4, 4, 4)  # (b, f, h, w, c)


@pytest.fixture(scope="module")
def scheduler():
    return DDIMScheduler.from_config(load_fixture(golden_path("ddim.npz")).config)


def toy_unet(params, sample, timesteps, audio_embeds):
    """A cheap deterministic 'UNet': depends on every input so any mix-up changes the output."""
    audio = audio_embeds.mean(axis=(2, 3))[:, :, None, None, None]  # (n, f, 1, 1, 1)
    t = timesteps.astype(jnp.float32)[:, None, None, None, None] / 1000.0
    return jnp.tanh(sample @ params["w"]) * (1.0 + t) + audio


def _inputs(key=0):
    keys = jax.random.split(jax.random.key(key), 5)
    b, f, h, w, _ = SHAPE
    params = {"w": 0.3 * jax.random.normal(keys[0], (13, 4))}
    mask = (jax.random.uniform(keys[1], (b, f, h, w, 1)) > 0.5).astype(jnp.float32)
    masked = jax.random.normal(keys[2], SHAPE)
    ref = jax.random.normal(keys[3], SHAPE)
    audio = jax.random.normal(keys[4], (b, f, 5, 8)) + 0.5
    return params, mask, masked, ref, audio


def _python_loop(unet, params, latents, mask, masked, ref, audio, scheduler, num_steps, guidance):
    """The reference loop, written the way LatentSync writes it (channels-last)."""
    for t in scheduler.timesteps(num_steps):
        t = int(t)
        if guidance > 1.0:
            x = jnp.concatenate([latents] * 2)
            cond = jnp.concatenate([jnp.concatenate([c] * 2) for c in (mask, masked, ref)], axis=-1)
            a = jnp.concatenate([jnp.zeros_like(audio), audio])
        else:
            x, cond, a = latents, jnp.concatenate([mask, masked, ref], axis=-1), audio
        x = jnp.concatenate([scheduler.scale_model_input(x, t), cond], axis=-1)
        noise = unet(params, x, jnp.full((x.shape[0],), t), a)
        if guidance > 1.0:
            uncond, audio_noise = jnp.split(noise, 2)
            noise = uncond + guidance * (audio_noise - uncond)
        latents = scheduler.step(noise, t, latents, num_inference_steps=num_steps).prev_sample
    return latents


@pytest.mark.parametrize("guidance", [1.5, 1.0])
def test_scan_equals_python_loop(scheduler, guidance):
    params, mask, masked, ref, audio = _inputs()
    init = initial_latents(jax.random.key(1), SHAPE)
    ours = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=scheduler,
                        num_steps=5, guidance_scale=guidance)
    expected = _python_loop(toy_unet, params, init, mask, masked, ref, audio, scheduler, 5, guidance)
    assert ours.shape == SHAPE and ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_guidance_changes_the_result(scheduler):
    params, mask, masked, ref, audio = _inputs()
    init = initial_latents(jax.random.key(1), SHAPE)
    run = lambda g: sample_chunk(toy_unet, params, init, mask, masked, ref, audio,
                                 scheduler=scheduler, num_steps=3, guidance_scale=g)
    assert float(jnp.abs(run(1.0) - run(2.0)).max()) > 1e-3


def test_one_unet_call_per_step_and_batching(scheduler):
    calls = []

    def counting_unet(params, sample, timesteps, audio_embeds):
        calls.append((sample.shape, timesteps.shape, audio_embeds.shape))  # runs at trace time
        return toy_unet(params, sample, timesteps, audio_embeds)

    params, mask, masked, ref, audio = _inputs()
    init = initial_latents(jax.random.key(1), SHAPE)
    for guidance, batch in ((1.0, 1), (1.5, 2)):
        calls.clear()
        sample_chunk(counting_unet, params, init, mask, masked, ref, audio, scheduler=scheduler,
                     num_steps=4, guidance_scale=guidance)
        # lax.scan traces the body once: one UNet call per step, batch 2 only with guidance
        assert calls == [((batch, *SHAPE[1:4], 13), (batch,), (batch, *audio.shape[1:]))]


def test_unconditional_branch_is_zero_audio_first():
    seen = {}

    def probe_unet(params, sample, timesteps, audio_embeds):
        seen.update(sample=sample, timesteps=timesteps, audio=audio_embeds)
        # uncond -> 1, cond -> 3 (per batch half), so the guided result tells the order apart
        return jnp.where(jnp.arange(sample.shape[0])[:, None, None, None, None] == 0, 1.0, 3.0) \
            * jnp.ones(sample.shape[:-1] + (4,))

    _, mask, masked, ref, audio = _inputs()
    model_input = jnp.concatenate([jnp.ones(SHAPE), mask, masked, ref], axis=-1)
    noise = guided_noise_pred(probe_unet, None, model_input, jnp.int32(501), audio, 1.5)
    np.testing.assert_array_equal(seen["audio"][0], 0.0)
    np.testing.assert_array_equal(seen["audio"][1], audio[0])
    np.testing.assert_array_equal(seen["sample"][0], seen["sample"][1])
    np.testing.assert_array_equal(seen["timesteps"], [501, 501])
    np.testing.assert_allclose(noise, 1.0 + 1.5 * (3.0 - 1.0))


@pytest.mark.integration
def test_initial_latents_repeat_one_frame():
    latents = initial_latents(jax.random.key(3), (2, 5, 3, 3, 4))
    assert latents.shape == (2, 5, 3, 3, 4)
    np.testing.assert_array_equal(latents, jnp.repeat(latents[:, :1], 5, axis=1))
    assert float(jnp.abs(latents[0, 0] - latents[1, 0]).max()) > 0  # samples differ
    assert 0.5 < float(latents.std()) < 1.5


@pytest.mark.integration
def test_golden_ddim_and_sampling_loop():
    """The real stage2 tiny UNet through the jitted loop vs LatentSync's 20-step loop."""
    from lipsync_jax.golden.check_sampling import check_fixture

    for name in ("ddim.npz", "sampling_loop.npz"):
        results = check_fixture(load_fixture(golden_path(name)))
        assert results and all(r.passed for r in results), [r.line() for r in results]


def test_low_precision_unet_output_keeps_float32_latents(scheduler):
    def bf16_unet(params, sample, timesteps, audio_embeds):
        return toy_unet(params, sample, timesteps, audio_embeds).astype(jnp.bfloat16)

    params, mask, masked, ref, audio = _inputs()
    init = initial_latents(jax.random.key(1), SHAPE)
    low = sample_chunk(bf16_unet, params, init, mask, masked, ref, audio, scheduler=scheduler,
                       num_steps=4, guidance_scale=1.5)
    full = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=scheduler,
                        num_steps=4, guidance_scale=1.5)
    assert low.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(low)))
    assert float(jnp.linalg.norm(low - full) / jnp.linalg.norm(full)) < 0.05


@functools.partial(jax.jit, static_argnames=("unet_apply", "num_steps", "guidance_scale"))
def _legacy_sample_chunk(unet_apply, params, init_latents, mask, masked_latents, ref_latents, audio_embeds, *,
                         scheduler, num_steps=20, guidance_scale=1.5):
    """sample_chunk as it was before the sampler options (DeepCache, DPM-Solver++, overlap)."""
    conditioning = jnp.concatenate([mask, masked_latents, ref_latents], axis=-1).astype(init_latents.dtype)
    timesteps = jnp.asarray(scheduler.timesteps(num_steps))

    def denoise(latents, t):
        model_input = jnp.concatenate([scheduler.scale_model_input(latents, t), conditioning], axis=-1)
        noise = guided_noise_pred(unet_apply, params, model_input, t, audio_embeds, guidance_scale)
        latents = scheduler.step(noise, t, latents, num_inference_steps=num_steps).prev_sample
        return latents.astype(init_latents.dtype), None

    return jax.lax.scan(denoise, init_latents, timesteps)[0]


@pytest.mark.parametrize("guidance", [1.5, 1.0])
def test_default_options_are_bit_for_bit_the_previous_loop(scheduler, guidance):
    params, mask, masked, ref, audio = _inputs()
    init = initial_latents(jax.random.key(1), SHAPE)
    kw = dict(scheduler=scheduler, num_steps=5, guidance_scale=guidance)
    legacy = _legacy_sample_chunk(toy_unet, params, init, mask, masked, ref, audio, **kw)
    np.testing.assert_array_equal(sample_chunk(toy_unet, params, init, mask, masked, ref, audio, **kw), legacy)
    np.testing.assert_array_equal(sample_chunk(toy_unet, params, init, mask, masked, ref, audio, solver="ddim",
                                               deepcache_interval=1, **kw), legacy)
