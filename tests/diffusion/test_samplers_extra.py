"""Sampler options: DPM-Solver++ (2M), DeepCache and overlapping windows.

The parity with the original (diffusers / DeepCache on LatentSync's UNet) is in the golden
fixtures sampling_dpmsolver / sampling_deepcache (last test); here: the solver against an
independent float64 loop, the UNet's DeepCache modes, option validation, and the overlap
mechanism on a very small real UNet (compiled once per option set)."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.config_utils import load_config
from lipsync_jax.diffusion import (
    DDIMScheduler,
    DPMSolverConfig,
    DPMSolverScheduler,
    ModuleApply,
    SamplerOptionError,
    SchedulerConfigError,
    empty_tail,
    initial_latents,
    new_frames,
    sample_chunk,
    sample_windows,
    validate_sampler_options,
    window_starts,
)
from lipsync_jax.golden.core import load_fixture
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.tree_utils import random_params
from tests.helpers.paths import ROOT, golden_path

FRAMES, LATENT = 6, 8  # tiny windows: 6 frames of 8x8 latents


@pytest.fixture(scope="module")
def ddim():
    return DDIMScheduler.from_config(load_fixture(golden_path("ddim.npz")).config)


# ------------------------------------------------------------------ DPM-Solver++ configuration
def test_dpm_config_from_our_ddim_config_matches_diffusers_from_config():
    fixture = load_fixture(golden_path("sampling_dpmsolver.npz"))
    expected = fixture.meta["dpm_scheduler_config"]
    ours = DPMSolverConfig.from_ddim_config(load_config(os.path.join(ROOT, "configs", "scheduler.py")).to_dict())
    for field in dataclasses.fields(DPMSolverConfig):
        if field.name in expected and field.name != "trained_betas":
            assert getattr(ours, field.name) == expected[field.name], field.name
    assert ours.timestep_spacing == "linspace" and ours.steps_offset == 1  # DDIM's "leading" was a default
    steps = DPMSolverScheduler.from_config(ours).timesteps(10)
    np.testing.assert_array_equal(steps, fixture.meta["timesteps"])
    # the fixture's own DDIM config (with diffusers' _use_default_values list) gives the same
    assert DPMSolverConfig.from_ddim_config(fixture.config["scheduler"]) == ours


def test_dpm_unsupported_options_are_refused():
    with pytest.raises(SchedulerConfigError, match="algorithm_type"):
        DPMSolverConfig(algorithm_type="sde-dpmsolver++").validate()
    with pytest.raises(SchedulerConfigError, match="use_karras_sigmas"):
        DPMSolverConfig(use_karras_sigmas=True).validate()
    with pytest.raises(SchedulerConfigError, match="solver_order"):
        DPMSolverConfig(solver_order=3).validate()


def toy_unet(params, sample, timesteps, audio_embeds):
    audio = audio_embeds.mean(axis=(2, 3))[:, :, None, None, None]
    t = timesteps.astype(jnp.float32)[:, None, None, None, None] / 1000.0
    return jnp.tanh(sample @ params["w"]) * (1.0 + t) + audio


def _toy_inputs():
    keys = jax.random.split(jax.random.key(0), 5)
    shape = (1, 3, 4, 4, 4)
    params = {"w": 0.3 * jax.random.normal(keys[0], (13, 4))}
    mask = (jax.random.uniform(keys[1], shape[:-1] + (1,)) > 0.5).astype(jnp.float32)
    return (params, initial_latents(keys[2], shape), mask, jax.random.normal(keys[3], shape),
            jax.random.normal(keys[3], shape) * 0.5, jax.random.normal(keys[4], (1, 3, 5, 8)) + 0.5)


def _dpm_reference(params, latents, mask, masked, ref, audio, ddim, num_steps, guidance):
    """DPM-Solver++ 2M (midpoint, lower-order final, final sigma 0) in float64, list-based."""
    dpm = DPMSolverScheduler.from_ddim_config(ddim.config)
    ac = np.asarray(dpm.alphas_cumprod, np.float64)
    timesteps = dpm.timesteps(num_steps)
    sig = np.append(np.sqrt((1 - ac) / ac)[timesteps], 0.0)
    alpha = 1 / np.sqrt(sig ** 2 + 1)
    sigma = sig * alpha
    with np.errstate(divide="ignore"):
        lam = np.log(alpha) - np.log(sigma)
    x = np.asarray(latents, np.float64)
    cond = np.concatenate([mask, masked, ref], axis=-1)
    outputs = []
    for k, t in enumerate(timesteps):
        unet_in = jnp.asarray(np.concatenate([x, cond], axis=-1), jnp.float32)
        uncond = np.asarray(toy_unet(params, unet_in, jnp.full((1,), t), jnp.zeros_like(audio)), np.float64)
        audio_noise = np.asarray(toy_unet(params, unet_in, jnp.full((1,), t), audio), np.float64)
        eps = uncond + guidance * (audio_noise - uncond)
        outputs.append((x - sigma[k] * eps) / alpha[k])
        h = lam[k + 1] - lam[k]
        x = (sigma[k + 1] / sigma[k]) * x - alpha[k + 1] * np.expm1(-h) * outputs[-1]
        if 0 < k < num_steps - 1:
            r0 = (lam[k] - lam[k - 1]) / h
            x = x - 0.5 * alpha[k + 1] * np.expm1(-h) * (outputs[-1] - outputs[-2]) / r0
    return x


def test_dpm_scan_equals_float64_reference(ddim):
    params, init, mask, masked, ref, audio = _toy_inputs()
    ours = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=6,
                        guidance_scale=1.5, solver="dpmsolver++")
    expected = _dpm_reference(params, init, mask, masked, ref, audio, ddim, 6, 1.5)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
    ddim_result = sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim,
                               num_steps=6, guidance_scale=1.5)
    assert float(jnp.abs(ours - ddim_result).max()) > 1e-3  # the solver really changed


# ------------------------------------------------------------------ option validation
def test_options_are_validated_with_clear_errors(ddim):
    with pytest.raises(SamplerOptionError, match="unknown scheduler 'euler'"):
        validate_sampler_options(solver="euler")
    with pytest.raises(SamplerOptionError, match="deepcache_interval must be an integer >= 0"):
        validate_sampler_options(deepcache_interval=-1)
    with pytest.raises(SamplerOptionError, match=r"overlap must be an integer in \[0, 15\]"):
        validate_sampler_options(overlap=16)
    with pytest.raises(SamplerOptionError, match="overlap"):
        window_starts(64, 16, overlap=-1)
    params, init, mask, masked, ref, audio = _toy_inputs()
    with pytest.raises(SamplerOptionError, match="unknown scheduler"):
        sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=2,
                     solver="dpm")
    with pytest.raises(SamplerOptionError, match="deepcache="):  # a plain function has no DeepCache mode
        sample_chunk(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=2,
                     deepcache_interval=3)
    with pytest.raises(SamplerOptionError, match="overlap"):
        sample_windows(toy_unet, params, init, mask, masked, ref, audio, scheduler=ddim, num_steps=2, overlap=3)


def test_window_starts_and_new_frames():
    assert window_starts(40, 16, 0) == [0, 16, 32]
    assert window_starts(40, 16, 4) == [0, 12, 24]
    assert window_starts(16, 16, 4) == [0]
    assert new_frames(0, 4) == slice(0, None) and new_frames(0, 4, has_prev_tail=True) == slice(4, None)
    assert new_frames(2, 4) == slice(4, None)


# ------------------------------------------------------------------ a very small real UNet
class TinyUNet:
    """Two resolutions, one layer per block, motion modules everywhere: every DeepCache path runs.
    Two consecutive windows share the start noise (as LatentSync's chunks do)."""

    def __init__(self):
        cfg = dict(load_fixture(golden_path("sampling_loop.npz")).config["unet"])
        cfg.update(block_out_channels=[32, 32], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                   up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1,
                   attention_head_dim=2, motion_module_resolutions=[1, 2])
        self.config = UNet3DConfig.from_dict(cfg)
        self.module = UNet3DConditionModel(self.config)
        self.apply = ModuleApply(self.module)
        shape = (2, FRAMES, LATENT, LATENT, 4)
        keys = jax.random.split(jax.random.key(7), 6)
        # random everywhere (no zero-initialised conv_out), made without compiling init
        self.params = jax.tree_util.tree_map(jnp.asarray, random_params(abstract_params(self.module), seed=3))
        self.init = jnp.broadcast_to(initial_latents(keys[2], (1,) + shape[1:]), shape)
        self.mask = jnp.broadcast_to((jnp.arange(LATENT) < LATENT // 2).astype(jnp.float32)[None, None, :, None, None],
                                     shape[:-1] + (1,))
        self.masked = jax.random.normal(keys[3], shape)
        self.ref = jax.random.normal(keys[4], shape)
        self.audio = jax.random.normal(keys[5], (2, FRAMES, 5, self.config.cross_attention_dim))
        # one UNet call (batch 2) per DeepCache mode, shared by the tests below
        self.call = jax.jit(lambda x, t, a, mode, cache=None: self.apply(self.params, x, t, a, deepcache=mode,
                                                                        cache=cache), static_argnums=3)

    def inputs(self, windows=slice(None)):
        return (self.init[windows], self.mask[windows], self.masked[windows], self.ref[windows],
                self.audio[windows])


@pytest.fixture(scope="module")
def tiny():
    return TinyUNet()


@pytest.mark.integration
def test_unet_deepcache_modes(tiny):
    """full == plain call; shallow with the cache of a full call at the same input == the full
    output (the shallow path recomputes exactly the last layer and the output head)."""
    sample = jnp.concatenate([tiny.init, tiny.mask, tiny.masked, tiny.ref], axis=-1)
    t = jnp.array([901, 901])
    plain = tiny.call(sample, t, tiny.audio, None)
    full, cache = tiny.call(sample, t, tiny.audio, "full")
    assert cache.shape == (2, FRAMES, LATENT, LATENT, 32)
    np.testing.assert_allclose(full, plain, rtol=1e-6, atol=1e-6)
    shallow, same_cache = tiny.call(sample, t, tiny.audio, "shallow", cache)
    np.testing.assert_allclose(shallow, plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(same_cache, cache)
    stale, _ = tiny.call(sample, t, tiny.audio, "shallow", cache * 0.5)  # the cache really is read
    assert float(jnp.abs(stale - plain).max()) > 1e-3
    with pytest.raises(ValueError, match="deepcache mode"):
        tiny.module.apply({"params": tiny.params}, sample, t, tiny.audio, deepcache="half")


@pytest.mark.integration
def test_deepcache_interval_0_and_1_are_off_and_scan_follows_the_schedule(tiny, ddim):
    """Intervals 0 and 1 give the plain loop; interval 2 in the scan == a Python loop calling the
    full UNet at steps 0, 2 and the shallow branch at steps 1, 3."""
    init, mask, masked, ref, audio = tiny.inputs(slice(0, 1))
    run = lambda n: sample_chunk(tiny.apply, tiny.params, init, mask, masked, ref, audio, scheduler=ddim,
                                 num_steps=4, guidance_scale=1.5, deepcache_interval=n)
    off = run(0)
    np.testing.assert_array_equal(run(1), off)
    ours = run(2)
    assert bool(jnp.all(jnp.isfinite(ours)))
    assert float(jnp.abs(ours - off).max()) > 1e-4  # shallow steps really ran
    latents, cache = init, None
    cond = jnp.concatenate([mask, masked, ref], axis=-1)
    for i, t in enumerate(ddim.timesteps(4)):
        x = jnp.concatenate([jnp.concatenate([latents, cond], axis=-1)] * 2)
        a = jnp.concatenate([jnp.zeros_like(audio), audio])
        ts = jnp.full((2,), int(t))
        noise, cache = tiny.call(x, ts, a, "full") if i % 2 == 0 else tiny.call(x, ts, a, "shallow", cache)
        noise = noise[:1] + 1.5 * (noise[1:] - noise[:1])
        latents = ddim.step(noise, int(t), latents, num_inference_steps=4).prev_sample
    np.testing.assert_allclose(ours, latents, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ overlapping windows
@pytest.mark.integration
def test_overlap_zero_is_sample_chunk_exactly(tiny, ddim):
    kw = dict(scheduler=ddim, num_steps=3, guidance_scale=1.5)
    chunk = sample_chunk(tiny.apply, tiny.params, *tiny.inputs(), **kw)
    windows, tail = sample_windows(tiny.apply, tiny.params, *tiny.inputs(), overlap=0, **kw)
    assert tail is None
    np.testing.assert_array_equal(windows, chunk)


@pytest.mark.parametrize("solver,interval", [
    ("ddim", 0), pytest.param("dpmsolver++", 2, marks=pytest.mark.heavy)])
@pytest.mark.integration
def test_overlap_shared_frames_identical_and_streaming(tiny, ddim, solver, interval):
    k, steps = 2, 3
    kw = dict(scheduler=ddim, num_steps=steps, guidance_scale=1.5, solver=solver, deepcache_interval=interval)
    joint, tail = sample_windows(tiny.apply, tiny.params, *tiny.inputs(), overlap=k, **kw)
    assert tail.shape == (steps + 1, k, LATENT, LATENT, 4)
    # a shared frame is the same latent whichever window produced it
    np.testing.assert_array_equal(joint[1, :k], joint[0, -k:])
    np.testing.assert_array_equal(tail[-1], joint[-1, -k:])
    # the shared frames really are context: unlinked, window 1's new frames differ
    free = sample_chunk(tiny.apply, tiny.params, *tiny.inputs(), **kw)
    assert float(jnp.abs(free[1, k:] - joint[1, k:]).max()) > 1e-4
    np.testing.assert_allclose(free[0], joint[0], rtol=1e-5, atol=1e-5)  # window 0 has no head
    # streaming: one window per batch with the carried tail gives the same frames; the first
    # batch runs the same program with a placeholder tail switched off
    placeholder = empty_tail(steps, k, (LATENT, LATENT, 4))
    first, first_tail = sample_windows(tiny.apply, tiny.params, *tiny.inputs(slice(0, 1)), overlap=k,
                                       prev_tail=placeholder, use_prev_tail=jnp.bool_(False), **kw)
    second, _ = sample_windows(tiny.apply, tiny.params, *tiny.inputs(slice(1, 2)), overlap=k,
                               prev_tail=first_tail, use_prev_tail=jnp.bool_(True), **kw)
    np.testing.assert_allclose(first[0], joint[0], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second[0], joint[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(second[0, :k], first[0, -k:])


@pytest.mark.slow
def test_golden_deepcache_and_dpmsolver():
    """The real stage2 tiny UNet against DeepCache 0.1.1 (interval 3) and diffusers' DPM-Solver++."""
    from lipsync_jax.golden.check_sampling import check_fixture

    for name in ("sampling_deepcache.npz", "sampling_dpmsolver.npz"):
        results = check_fixture(load_fixture(golden_path(name)))
        assert results and all(r.passed for r in results), [r.line() for r in results]
