"""The chunk program's compiled memory footprint, fitting a --max_vram budget, and the GPU
allocator settings of infer.py (all on CPU with the tiny config; full-size numbers: bench/bench_memory.py)."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.config_utils import load_config
from lipsync_jax.pipeline import LipsyncEngine, RunOptions, decode_and_paste, encode_faces, memory
from lipsync_jax.pipeline.memory import (
    GB,
    Footprint,
    MemoryBudgetError,
    plan_memory,
    program_footprint,
    queued_bytes,
    tree_bytes,
    vae_slice_candidates,
    whisper_footprint,
)
from lipsync_jax.pipeline.models import abstract_models
from lipsync_jax.pipeline.program import mask_arrays
from tests.helpers.paths import ROOT, TINY_CONFIG

STEPS, GUIDANCE = 20, 1.5  # the engine plans with these (the memory does not depend on the step count)


# ---------------------------------------------------------------- the search (fast: a stand-in footprint)
MB = 1024 ** 2


def fake_footprint(models, *, chunk_batch, vae_frames=None, attention_backend="auto", **_):
    """100 MB weights, 40 MB per chunk of UNet activations, 2 MB per VAE frame per chunk."""
    return Footprint(argument_bytes=100 * MB, output_bytes=MB * chunk_batch,
                     temp_bytes=MB * chunk_batch * (40 + 2 * (vae_frames or 16)))


@pytest.fixture(scope="module")
def tiny_abstract():
    """The tiny config's models with ShapeDtypeStruct weights (no init; the planner needs shapes only)."""
    return abstract_models(load_config(TINY_CONFIG), jnp.float32)


def fake_whisper(models, windows, **_):
    """Whisper's weights + 8 MB of mels and working set per window."""
    return Footprint(argument_bytes=tree_bytes(models.audio.params), output_bytes=0, temp_bytes=8 * MB * windows)


@pytest.fixture
def stand_in(monkeypatch, tiny_abstract):
    tiny = tiny_abstract
    calls = []

    def record(models, **kw):
        calls.append((kw["chunk_batch"], kw["vae_frames"], kw["attention_backend"]))
        return fake_footprint(models, **kw)

    monkeypatch.setattr(memory, "program_footprint", record)
    monkeypatch.setattr(memory, "whisper_footprint", fake_whisper)
    extra = lambda cb: whisper_total(tiny) + queued_bytes(tiny, cb, 2)  # noqa: E731
    return calls, extra


def whisper_total(models) -> int:
    """What the planner counts for Whisper on the device: weights + working set at 8 windows."""
    return fake_whisper(models, models.audio.max_batch).total_bytes


@pytest.mark.integration
def test_plan_prefers_the_fastest_setting_that_fits(tiny_abstract, stand_in):
    tiny = tiny_abstract
    calls, extra = stand_in
    roomy = plan_memory(tiny, 10.0, chunk_batch=2)
    assert (roomy.chunk_batch, roomy.vae_frames, roomy.whisper_on_host) == (2, 16, False)
    assert len(calls) == 1  # one estimate when the default fits

    need = lambda cb, frames: fake_footprint(tiny, chunk_batch=cb, vae_frames=frames).total_bytes + extra(cb)  # noqa: E731
    whisper = whisper_total(tiny)  # Whisper off the device comes first (it runs once, before sampling)
    budget = (need(2, 4) + need(2, 8)) / 2 - whisper  # chunk_batch 2 fits with slices of 4 frames, not 8
    plan = plan_memory(tiny, budget / GB, chunk_batch=2)
    assert (plan.chunk_batch, plan.vae_frames) == (2, 4) and plan.device_bytes <= budget

    budget = (need(1, 16) + need(2, 1)) / 2 - whisper  # not even 1-frame slices fit 2 chunks: one chunk, whole VAE
    assert need(1, 16) < need(2, 1)
    plan = plan_memory(tiny, budget / GB, chunk_batch=2)
    assert (plan.chunk_batch, plan.vae_frames) == (1, 16)
    assert plan.describe().startswith("memory plan: chunk_batch 1, VAE slices of 16 frames")


def test_plan_moves_whisper_off_the_device_only_when_needed(tiny_abstract, stand_in):
    tiny = tiny_abstract
    _, extra = stand_in
    whisper = whisper_total(tiny)  # its working set (64 MB here) leaves the device with its weights
    need = fake_footprint(tiny, chunk_batch=1, vae_frames=16).total_bytes + extra(1)
    plan = plan_memory(tiny, (need - whisper / 2) / GB, chunk_batch=1)
    assert plan.whisper_on_host and plan.vae_frames == 16 and plan.device_bytes == need - whisper
    assert plan.whisper_bytes == whisper > tree_bytes(tiny.audio.params) + 60 * MB
    live = plan_memory(tiny, None, chunk_batch=1, whisper_windows=1)  # the live mode: one window per call
    assert live.device_bytes == need - whisper + fake_whisper(tiny, 1).total_bytes


def test_impossible_budget_fails_in_the_engine_before_any_work(tiny_abstract, stand_in):
    tiny = tiny_abstract
    _, extra = stand_in
    smallest = fake_footprint(tiny, chunk_batch=1, vae_frames=1).total_bytes + extra(1) - whisper_total(tiny)
    with pytest.raises(MemoryBudgetError) as error:
        LipsyncEngine(tiny, RunOptions(chunk_batch=2, max_vram_gb=0.05))
    message = str(error.value)
    assert "--max_vram 0.05 GB is too small" in message
    assert f"smallest footprint of this model at {tiny.resolution} px is {smallest / GB:.2f} GB" in message
    assert "chunk_batch 1, VAE slices of 1 frames" in message


@pytest.mark.slow  # compiles the tiny program twice
def test_infer_fails_on_an_impossible_budget_before_reading_the_video(tmp_path):
    video = os.path.join(ROOT, "tests/data/assets/demo1_video.mp4")
    audio = os.path.join(ROOT, "tests/data/assets/demo1_audio.wav")
    cmd = [sys.executable, "infer.py", "--config", "configs/unet/tiny.py", "--random_init", "--video", video,
           "--audio", audio, "--output", str(tmp_path / "out.mp4"), "--max_vram", "0.001", "--max_seconds", "0.64",
           "--compile_cache", str(tmp_path / "cache"), "--noprogress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1200, env=env)
    assert out.returncode == 1
    assert "error: --max_vram 0.001 GB is too small" in out.stderr
    assert "Traceback" not in out.stderr
    assert (tmp_path / "cache" / "memory_estimates.json").exists()  # estimates cached beside the compiled programs
    assert not (tmp_path / "out.mp4").exists()


# ---------------------------------------------------------------- real compiled estimates
@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("estimates"))


@pytest.fixture(scope="module")
def footprints(tiny_models, cache_dir):
    """(whole chunk at once, one frame at a time) VAE slices, chunk_batch 1."""
    kw = dict(chunk_batch=1, num_steps=STEPS, guidance_scale=GUIDANCE, cache_dir=cache_dir)
    return (program_footprint(tiny_models, vae_frames=tiny_models.num_frames, **kw),
            program_footprint(tiny_models, vae_frames=1, **kw))


@pytest.mark.slow
def test_compiled_footprint_parts_and_vae_slices(tiny_models, footprints, cache_dir):
    full, sliced = footprints
    assert full.argument_bytes >= tree_bytes(tiny_models.unet_params) + tree_bytes(tiny_models.vae_params)
    # one chunk of float32 faces
    assert full.output_bytes == tiny_models.num_frames * tiny_models.resolution ** 2 * 3 * 4
    assert sliced.temp_bytes < full.temp_bytes  # one frame per VAE step needs less
    assert os.path.exists(os.path.join(cache_dir, "memory_estimates.json"))
    again = program_footprint(tiny_models, chunk_batch=1, vae_frames=1, num_steps=STEPS, guidance_scale=GUIDANCE,
                              cache_dir=cache_dir)
    assert again.compile_seconds is None and again.total_bytes == sliced.total_bytes  # from the cache


@pytest.mark.slow
def test_compiled_budget_picks_smaller_vae_slices(tiny_models, footprints, cache_dir):
    full, sliced = footprints
    whisper = whisper_footprint(tiny_models, tiny_models.audio.max_batch, cache_dir=cache_dir).total_bytes
    assert whisper > tree_bytes(tiny_models.audio.params)  # its working set is counted, not only its weights
    # on the host is not enough
    budget = (whole(tiny_models, full, whisper) + whole(tiny_models, sliced, whisper)) / 2 - whisper
    plan = plan_memory(tiny_models, budget / GB, chunk_batch=1, num_steps=STEPS, guidance_scale=GUIDANCE,
                       cache_dir=cache_dir)
    assert plan.chunk_batch == 1 and plan.vae_frames < tiny_models.num_frames
    assert plan.vae_frames in vae_slice_candidates(tiny_models.num_frames)
    assert plan.device_bytes <= budget


def whole(models, fp, whisper, chunk_batch=1):
    return fp.total_bytes + whisper + queued_bytes(models, chunk_batch, 2)


@pytest.mark.slow
def test_vae_slices_do_not_change_the_result(tiny_models):
    size = tiny_models.resolution
    faces = np.random.default_rng(0).integers(0, 256, (tiny_models.num_frames, size, size, 3), np.uint8)
    pixel, keep, _ = mask_arrays(tiny_models)
    key = jax.random.key(3)
    whole_chunk = encode_faces(tiny_models.vae, tiny_models.vae_params, faces, pixel, key)
    sliced = encode_faces(tiny_models.vae, tiny_models.vae_params, faces, pixel, key, 4)
    for a, b in zip(whole_chunk, sliced):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    out_a = decode_and_paste(tiny_models.vae, tiny_models.vae_params, whole_chunk[1], whole_chunk[0], keep)
    out_b = decode_and_paste(tiny_models.vae, tiny_models.vae_params, whole_chunk[1], whole_chunk[0], keep, 4)
    np.testing.assert_allclose(np.asarray(out_a), np.asarray(out_b), rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_abstract_models_need_no_weights():
    models = abstract_models(load_config(os.path.join(ROOT, "configs/unet/stage2.py")), jnp.bfloat16)
    leaves = jax.tree.leaves(models.unet_params)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in leaves)
    assert {x.dtype for x in leaves} == {jnp.dtype(jnp.bfloat16)}  # bf16 weights: ~2.5 GB for the v1.5 UNet
    assert 2.0 * GB < tree_bytes(models.unet_params) < 3.0 * GB


@pytest.mark.integration
@pytest.mark.parametrize("module", ["infer", "app"])
def test_startup_turns_preallocation_off(module):
    # XLA reads the allocator variables when its GPU backend starts (the first device use), not when
    # jax is imported: importing the entry point sets them and starts no backend
    code = ("import os, sys; sys.argv=['x.py']; [os.environ.pop(k, None) for k in list(os.environ) "
            f"if k.startswith('XLA_PYTHON_CLIENT_')]; import {module}; "
            "from jax._src import xla_bridge; "
            "print(os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'), xla_bridge.backends_are_initialized())")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["false", "False"]  # set before any JAX backend started
    user = subprocess.run([sys.executable, "-c", code.replace(f"import {module};", "os.environ["
                           f"'XLA_PYTHON_CLIENT_MEM_FRACTION']='.5'; import {module};")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert user.stdout.split()[-2] == "None"  # the user's own allocator setting is left alone


@pytest.mark.integration
def test_chunked_attention_equals_xla():
    from lipsync_jax.models.attention import _chunked, dot_product_attention

    q, k, v = jax.random.normal(jax.random.key(0), (3, 2, 64, 2, 8))
    np.testing.assert_allclose(np.asarray(_chunked(q, k, v, None, 8 ** -0.5, block=16)),
                               np.asarray(dot_product_attention(q, k, v, backend="xla")), rtol=1e-5, atol=1e-5)


def test_chunked_attention_block_is_a_backend_parameter():
    from lipsync_jax.models.attention import chunked_backend, dot_product_attention, parse_backend

    q, k, v = jax.random.normal(jax.random.key(1), (3, 2, 64, 2, 8))
    np.testing.assert_allclose(np.asarray(dot_product_attention(q, k, v, backend="chunked:16")),
                               np.asarray(dot_product_attention(q, k, v, backend="xla")), rtol=1e-5, atol=1e-5)
    assert parse_backend("chunked:256") == ("chunked", 256) and parse_backend("chunked") == ("chunked", 1024)
    assert chunked_backend(1024) == "chunked" and chunked_backend(256) == "chunked:256"
    for bad in ("chunked:0", "xla:16", "flash"):
        with pytest.raises(ValueError, match="attention backend"):
            parse_backend(bad)


@pytest.fixture(scope="module")
def v16_abstract():
    return abstract_models(load_config(os.path.join(ROOT, "configs/unet/stage2_512.py")), jnp.bfloat16)


@pytest.mark.integration
def test_attention_candidates_and_logits_floor(v16_abstract):
    """The planner's query blocks per resolution, and the logits lower bound it uses to skip compiles."""
    from lipsync_jax.pipeline.memory import attention_candidates, attention_logits_bytes

    assert attention_candidates("cpu", jnp.bfloat16, 32 * 32) == ["auto", "chunked:256"]  # 256 px
    assert attention_candidates("cpu", jnp.bfloat16, 64 * 64) == ["auto", "chunked", "chunked:256"]  # 512 px
    models = v16_abstract
    # CFG 2 x 16 frames x 8 heads x queries x 4096 tokens x float32
    assert attention_logits_bytes(models, 1, "auto") == 32 * 8 * 4096 * 4096 * 4  # 16 GiB
    assert attention_logits_bytes(models, 1, "chunked:256") == 32 * 8 * 256 * 4096 * 4  # 1 GiB
    assert attention_logits_bytes(models, 2, "chunked") == 2 * 32 * 8 * 1024 * 4096 * 4
    # fused kernels hold no logits: cuDNN (bf16, heads of 40 and 80) and Pallas (>= 512 keys) take the
    # 4096- and 1024-token levels; the 1280-channel level (heads of 160, 256 tokens) stays on XLA
    unfused = 32 * 8 * 256 * 256 * 4
    assert attention_logits_bytes(models, 1, "auto", platform="gpu") == unfused
    assert attention_logits_bytes(models, 1, "auto", platform="tpu") == unfused


def test_plan_skips_settings_whose_attention_logits_cannot_fit(monkeypatch, v16_abstract):
    """512 px in 12 GB: plain XLA attention (16 GiB of logits) is never compiled."""
    models = v16_abstract
    calls = []

    def record(models, **kw):
        calls.append((kw["chunk_batch"], kw["vae_frames"], kw["attention_backend"]))
        return Footprint(argument_bytes=int(2.6 * GB), output_bytes=0, temp_bytes=int(6 * GB))

    monkeypatch.setattr(memory, "program_footprint", record)
    monkeypatch.setattr(memory, "whisper_footprint", fake_whisper)
    lines = []
    plan = plan_memory(models, 12.0, chunk_batch=2, log=lines.append)
    assert (plan.chunk_batch, plan.attention_backend) == (2, "chunked")  # 2.5 + 2 x 4 GiB of logits < 12
    assert calls == [(2, 16, "chunked")]  # the only compile: "auto" (2.5 + 32 GiB) is hopeless
    calls.clear()
    with pytest.raises(MemoryBudgetError, match="--max_vram 6 GB is too small"):  # 2.6 + 6 > 6: nothing fits
        plan_memory(models, 6.0, chunk_batch=2, log=lines.append)
    assert {backend for _, _, backend in calls} == {"chunked:256"}  # 2.5 + 4 GiB (cb 1, chunked) > 6: skipped
    assert any(line.startswith("skipped: chunk_batch 2, attention auto") for line in lines)


def test_native_bf16_estimate_keeps_weight_upcasts_out_of_the_loop():
    """Cause of the CPU-only f32 weight copies: the CPU backend upcasts bf16 dots to f32 and hoists
    the copies of the loop-invariant weights out of a scan; the native_bf16 estimate's options keep
    them next to their dots (at most about one layer's f32 weights live)."""
    from lipsync_jax.pipeline.memory import estimate_compiler_options

    weights = [jax.ShapeDtypeStruct((512, 512), jnp.bfloat16) for _ in range(8)]
    x = jax.ShapeDtypeStruct((16, 512), jnp.bfloat16)

    def loop(ws, x):
        def step(h, _):
            for w in ws:
                h = jnp.tanh(h @ w)
            return h, None
        return jax.lax.scan(step, x, None, length=4)[0]

    lowered = jax.jit(loop).lower(weights, x)
    f32_copies = 8 * 512 * 512 * 4
    raw = lowered.compile().memory_analysis().temp_size_in_bytes
    assert estimate_compiler_options("gpu") == {} and estimate_compiler_options("cpu", "raw") == {}
    modelled = lowered.compile(compiler_options=estimate_compiler_options("cpu")).memory_analysis().temp_size_in_bytes
    if jax.default_backend() == "cpu":
        assert raw >= f32_copies  # every weight's f32 copy live at once
        assert modelled < 2 * f32_copies / 8 + 16 * 512 * 4 * 4  # about one layer's


# ---------------------------------------------------------------- the memory targets at full size
@pytest.mark.slow  # one compile of the full-size chunk program from abstract shapes per case
@pytest.mark.parametrize("config, budget_gb, picked, whisper_on_host", [
    ("stage2", 8.0, (1, 16, "auto"), False),  # v1.5, 256 px
    ("stage2_512", 12.0, (1, 16, "chunked"), True),  # v1.6, 512 px: Whisper's working set goes to the host
])
def test_full_size_config_fits_its_budget(config, budget_gb, picked, whisper_on_host, tmp_path):
    """v1.5 in 8 GB and v1.6 in 12 GB (bf16, 20 steps, CFG, chunk_batch 1) as the engine's --max_vram
    picker sees them: XLA's compiled estimate of the whole chunk program (on CPU modelling a
    native-bf16 device, pipeline/memory.py) + Whisper's compiled footprint + the queued batches.
    The picker compiles exactly one setting (plain XLA attention at 512 px is skipped: 16 GiB of
    logits); at 512 px in 12 GB its last cut, Whisper on the host, is what makes it fit."""
    models = abstract_models(load_config(os.path.join(ROOT, f"configs/unet/{config}.py")), jnp.bfloat16)
    lines = []
    plan = plan_memory(models, budget_gb, chunk_batch=1, num_steps=STEPS, guidance_scale=GUIDANCE,
                       cache_dir=str(tmp_path), log=lines.append)
    assert (plan.chunk_batch, plan.vae_frames, plan.attention_backend) == picked, lines
    assert plan.device_bytes <= budget_gb * GB and plan.whisper_on_host == whisper_on_host
    assert plan.footprint.argument_bytes >= tree_bytes(models.unet_params) + tree_bytes(models.vae_params)  # 2.5 GiB
    assert [line.startswith("estimate:") for line in lines].count(True) == 1
    assert plan.footprint.compile_seconds is not None  # really compiled (empty cache folder)
    if jax.default_backend() == "cpu":
        assert plan.footprint.estimate == "native_bf16"
