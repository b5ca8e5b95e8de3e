"""The one attention function: backends against the float32 reference, which calls each platform
runs fused (``fused_supported``), how "auto" follows the platform the program is traced for, and
the Pallas TPU (splash) kernel in Pallas' TPU interpret mode on CPU, forward and gradients, alone,
in a UNet and under a mesh. cuDNN needs a GPU (or JAX's CUDA plugin for a compile without one), so
on CPU only its predicate is tested here."""

import os
import subprocess
import sys

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import AbstractDevice, AbstractMesh

from lipsync_jax.config_utils import PROJECT_ROOT
from lipsync_jax.models import attention
from lipsync_jax.models.attention import dot_product_attention, fused_supported, resolve_backend

BF16_TOL = 2e-2  # relative (Frobenius) error of bfloat16 inputs/outputs against float32


def qkv(seed, q_shape, k_shape, dtype=jnp.float32):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (jax.random.normal(kq, q_shape).astype(dtype), jax.random.normal(kk, k_shape).astype(dtype),
            jax.random.normal(kv, k_shape).astype(dtype))


def rel_err(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def loss_of(backend):
    """A scalar whose gradients touch every output element differently."""
    return lambda q, k, v: jnp.sum(jnp.sin(dot_product_attention(q, k, v, backend=backend).astype(jnp.float32)))


def pallas_calls(fn, *args) -> int:
    """Pallas kernel launches when ``fn(*args)`` runs: ``pallas_call`` equations, counted once per
    call site of the sub-jaxprs they sit in (the kernel wrapper is a jitted function)."""
    def count(jaxpr) -> int:
        total = 0
        for eqn in jaxpr.eqns:
            total += eqn.primitive.name == "pallas_call"
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                total += count(sub)
        return total
    return count(jax.make_jaxpr(fn)(*args).jaxpr)


def tpu_mesh(shape=(1,), names=("data",)):
    return AbstractMesh(shape, names, abstract_device=AbstractDevice("TPU v5p", 1, "tpu"))


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["auto", "xla"])
def test_backends_match_naive(backend):
    q, k, v = qkv(0, (2, 7, 3, 16), (2, 5, 3, 16))
    ref = dot_product_attention(q, k, v, backend="naive")
    out = dot_product_attention(q, k, v, backend=backend)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)


def test_bfloat16_close_to_float32():
    q, k, v = qkv(1, (1, 9, 2, 32), (1, 9, 2, 32))
    ref = dot_product_attention(q, k, v, backend="naive")
    out = dot_product_attention(*(x.astype(jnp.bfloat16) for x in (q, k, v)))
    assert out.dtype == jnp.bfloat16
    assert rel_err(out, ref) < BF16_TOL


def test_unknown_backend():
    x = jnp.zeros((1, 2, 1, 8))
    with pytest.raises(ValueError, match="unknown attention backend"):
        dot_product_attention(x, x, x, backend="flash")


# ------------------------------------------------------------------------------ which backend
def test_auto_resolves_by_platform_and_dtype():
    assert resolve_backend("auto", "gpu", jnp.bfloat16) == "cudnn"
    assert resolve_backend("auto", "cuda", jnp.float16) == "cudnn"
    assert resolve_backend("auto", "gpu", jnp.float32) == "xla"  # cuDNN flash attention is half precision
    assert resolve_backend("auto", "tpu", jnp.bfloat16) == "pallas"
    assert resolve_backend("auto", "tpu", jnp.float32) == "pallas"
    assert resolve_backend("auto", "cpu", jnp.bfloat16) == "xla"
    assert resolve_backend("auto", "rocm", jnp.bfloat16) == "xla"  # JAX's cuDNN path is CUDA only
    for explicit in ("xla", "cudnn", "pallas", "naive", "chunked:256"):
        assert resolve_backend(explicit, "tpu", jnp.bfloat16) == explicit
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("splash", "tpu", jnp.bfloat16)


def test_target_platform_is_the_mesh_devices_not_the_host():
    assert attention.target_platform() == jax.default_backend() == "cpu"
    with jax.sharding.use_abstract_mesh(tpu_mesh()):
        assert attention.target_platform() == "tpu"
        q, k, v = qkv(2, (1, 512, 2, 8), (1, 512, 2, 8))
        # "auto" traced for a TPU mesh on this CPU host takes the Pallas kernel (nothing is lowered)
        assert pallas_calls(lambda *a: dot_product_attention(*a), q, k, v) == 1
    assert pallas_calls(lambda *a: dot_product_attention(*a), q, k, v) == 0


def test_auto_on_tpu_without_a_mesh_needs_a_single_device(monkeypatch):
    """Without a mesh the kernel cannot be split over devices (XLA refuses to partition Mosaic
    kernels), so "auto" takes it only in a one-device process."""
    q, k, v = qkv(3, (1, 512, 2, 8), (1, 512, 2, 8))
    monkeypatch.setattr(attention, "target_platform", lambda: "tpu")
    monkeypatch.setattr(jax, "device_count", lambda: 1)
    assert pallas_calls(lambda *a: dot_product_attention(*a), q, k, v) == 1
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    assert pallas_calls(lambda *a: dot_product_attention(*a), q, k, v) == 0
    with jax.sharding.use_abstract_mesh(tpu_mesh((4,))):
        assert pallas_calls(lambda *a: dot_product_attention(*a), q, k, v) == 1


# LatentSync's attention calls in training (one clip, 16 frames): spatial self-attention per level,
# cross-attention to the 50 audio tokens, temporal self-attention over the 16 frames.
def _latentsync_calls(latent: int):
    calls = {}
    for level, channels in enumerate((320, 640, 1280, 1280)):
        tokens = (latent // 2 ** level) ** 2
        d = channels // 8
        calls[f"self {tokens}x{d}"] = ((16, tokens, 8, d), (16, tokens, 8, d))
        calls[f"cross {tokens}x{d}"] = ((16, tokens, 8, d), (16, 50, 8, d))
        calls[f"temporal {channels}"] = ((tokens, 16, 8, d), (tokens, 16, 8, d))
    return calls


@pytest.mark.parametrize("latent, fused_on_gpu, fused_on_tpu", [
    (32, {"self 1024x40", "cross 1024x40", "self 256x80", "cross 256x80"}, {"self 1024x40"}),
    (64, {"self 4096x40", "cross 4096x40", "self 1024x80", "cross 1024x80"},
     {"self 4096x40", "self 1024x80"}),
])
def test_which_latentsync_layers_run_fused(latent, fused_on_gpu, fused_on_tpu):
    """256 px (32x32 latents) and 512 px (64x64): the 1280-channel levels (heads of 160) never take
    cuDNN; on TPU only long self-attention takes the kernel (cross-attention's 50 keys do not)."""
    calls = _latentsync_calls(latent)
    on_gpu = {name for name, (qs, ks) in calls.items() if fused_supported("cudnn", qs, ks, jnp.bfloat16)}
    on_tpu = {name for name, (qs, ks) in calls.items() if fused_supported("pallas", qs, ks, jnp.bfloat16)}
    assert on_gpu == fused_on_gpu
    assert on_tpu == fused_on_tpu
    assert not any(fused_supported("cudnn", qs, ks, jnp.float32) for qs, ks in calls.values())


def test_fused_predicate_edges():
    ok = lambda backend, lq, lk, d, **kw: fused_supported(backend, (2, lq, 4, d), (2, lk, 4, d),  # noqa: E731
                                                           kw.pop("dtype", jnp.bfloat16), **kw)
    assert ok("cudnn", 64, 50, 128) and not ok("cudnn", 64, 50, 136) and not ok("cudnn", 64, 50, 44)
    assert not ok("cudnn", 63, 63, 64)  # below MIN_FUSED_QUERIES
    assert not ok("cudnn", 1024, 1024, 64, has_bias=True)
    assert ok("pallas", 512, 512, 160, dtype=jnp.float32) and ok("pallas", 128, 512, 4)
    assert not ok("pallas", 576, 576, 64)  # not a multiple of the 128 tile
    assert not ok("pallas", 512, 384, 64)  # fewer than PALLAS_MIN_KEYS keys
    assert not ok("pallas", 1024, 1024, 64, has_bias=True)
    assert not any(ok(b, 4096, 4096, 64) for b in ("xla", "naive", "chunked"))
    assert not fused_supported("cudnn", (2, 128, 4, 64), (2, 128, 4, 32), jnp.bfloat16)  # head sizes differ


# ------------------------------------------------------------- the Pallas kernel, interpreted
@pytest.mark.parametrize("q_shape, k_shape", [
    ((2, 512, 2, 40), (2, 512, 2, 40)),   # self-attention, heads of 40 (LatentSync's 320 channels)
    ((1, 256, 2, 160), (1, 512, 2, 160)),  # queries != keys, heads of 160
])
@pytest.mark.integration
def test_pallas_float32_matches_reference_forward_and_gradients(q_shape, k_shape):
    q, k, v = qkv(4, q_shape, k_shape)
    assert fused_supported("pallas", q.shape, k.shape, q.dtype)
    ref = dot_product_attention(q, k, v, backend="naive")
    ref_grads = jax.grad(loss_of("naive"), argnums=(0, 1, 2))(q, k, v)
    with pltpu.force_tpu_interpret_mode():
        assert pallas_calls(lambda *a: dot_product_attention(*a, backend="pallas"), q, k, v) == 1
        out = dot_product_attention(q, k, v, backend="pallas")
        grads = jax.grad(loss_of("pallas"), argnums=(0, 1, 2))(q, k, v)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-5)


@pytest.mark.integration
def test_pallas_bfloat16_within_bf16_error_of_float32():
    q, k, v = qkv(5, (2, 512, 2, 80), (2, 512, 2, 80))
    ref = dot_product_attention(q, k, v, backend="naive")
    ref_grads = jax.grad(loss_of("naive"), argnums=(0, 1, 2))(q, k, v)
    half = tuple(x.astype(jnp.bfloat16) for x in (q, k, v))
    with pltpu.force_tpu_interpret_mode():
        out = dot_product_attention(*half, backend="pallas")
        grads = jax.grad(loss_of("pallas"), argnums=(0, 1, 2))(*half)
    assert out.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads)
    assert rel_err(out, ref) < BF16_TOL
    for g, r in zip(grads, ref_grads):
        assert rel_err(g, r) < BF16_TOL


@pytest.mark.parametrize("q_shape, k_shape", [
    ((2, 512, 2, 16), (2, 50, 2, 16)),   # cross-attention to 50 audio tokens
    ((64, 16, 2, 16), (64, 16, 2, 16)),  # temporal attention over 16 frames
    ((2, 256, 2, 16), (2, 256, 2, 16)),  # a 16x16 level: fewer keys than PALLAS_MIN_KEYS
])
@pytest.mark.integration
def test_pallas_backend_runs_other_calls_on_xla(q_shape, k_shape):
    q, k, v = qkv(6, q_shape, k_shape)
    assert pallas_calls(lambda *a: dot_product_attention(*a, backend="pallas"), q, k, v) == 0
    np.testing.assert_array_equal(np.asarray(dot_product_attention(q, k, v, backend="pallas")),
                                  np.asarray(dot_product_attention(q, k, v, backend="xla")))


@pytest.mark.heavy  # over CI's time budget
@pytest.mark.slow
def test_unet_with_pallas_attention_equals_xla():
    """The tiny UNet on one frame of 16x32 latents (512 tokens at its first level, where the kernel
    runs; its smaller levels, cross- and temporal attention stay on XLA): output and parameter
    gradients. Slow: Pallas' TPU interpreter simulates every grid step on the CPU."""
    from lipsync_jax.config_utils import config_to_dict, load_config, resolve_path
    from lipsync_jax.models.unet3d import UNet3DConditionModel, dummy_inputs, init_params
    from lipsync_jax.models.unet_config import UNet3DConfig

    config = UNet3DConfig.from_dict(config_to_dict(load_config(resolve_path("configs/unet/tiny.py")))["model"])
    shape = (1, 1, 16, 32, config.in_channels)
    params = init_params(jax.random.key(0), config, shape)
    sample, _, audio = dummy_inputs(config, shape)
    sample = jax.random.normal(jax.random.key(1), sample.shape)
    audio = jax.random.normal(jax.random.key(2), audio.shape)
    timesteps = jnp.array([500], jnp.int32)

    def loss(backend):
        unet = UNet3DConditionModel(config, attention_backend=backend)
        return lambda p: jnp.mean(jnp.square(unet.apply({"params": p}, sample, timesteps, audio)))
    ref, ref_grads = jax.jit(jax.value_and_grad(loss("xla")))(params)
    with pltpu.force_tpu_interpret_mode():
        fused_layers = pallas_calls(loss("pallas"), params)
        out, grads = jax.jit(jax.value_and_grad(loss("pallas")))(params)
    assert fused_layers == 5  # first level: 2 down-block + 3 up-block spatial self-attentions
    np.testing.assert_allclose(float(out), float(ref), rtol=1e-5)
    flat, flat_ref = jax.tree.leaves(grads), jax.tree.leaves(ref_grads)
    assert len(flat) == len(flat_ref)
    for g, r in zip(flat, flat_ref):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-6)


SHARDED_SCRIPT = r'''
import jax, jax.numpy as jnp
from jax.experimental.pallas import tpu as pltpu
from jax.sharding import NamedSharding, PartitionSpec as P
from lipsync_jax.models import attention
from lipsync_jax import sharding as sharding_lib

mesh = sharding_lib.make_mesh(dict(axes=("data", "fsdp"), shape=(2, 2)))
keys = jax.random.split(jax.random.key(0), 3)
q = jax.random.normal(keys[0], (8, 128, 2, 16))
k, v = (jax.random.normal(key, (8, 512, 2, 16)) for key in keys[1:])

def step(backend):
    def loss(q, batch):
        return jnp.sum(jnp.sin(attention.dot_product_attention(q, batch["k"], batch["v"], backend=backend)))
    return jax.jit(jax.value_and_grad(sharding_lib.with_activation_sharding(loss, mesh, sharding_lib.LOGICAL_RULES, 1)))

batch_sh = NamedSharding(mesh, P(("data", "fsdp")))
args = (jax.device_put(q, batch_sh), {"k": jax.device_put(k, batch_sh), "v": jax.device_put(v, batch_sh)})
with pltpu.force_tpu_interpret_mode():
    text = step("pallas").lower(*args).as_text()
print("per-device kernel:", "manual_axes={\"data\", \"fsdp\"}" in text and "tensor<2x128x2x16xf32>" in text
      and "tensor<4x128x16xf32>" in text)

def reference_kernel(heads, q_len, kv_len):  # the splash kernel's interface: (h, l, d), no scale
    def run(q, k, v):
        weights = jax.nn.softmax(jnp.einsum("hqd,hkd->hqk", q, k), axis=-1)
        return jnp.einsum("hqk,hkd->hqd", weights, v)
    return run

attention._splash_kernel = reference_kernel
fused, ref = step("pallas")(*args), step("naive")(*args)
print("value error:", abs(float(fused[0]) - float(ref[0])))
print("grad error:", float(jnp.max(jnp.abs(fused[1] - ref[1]))))
'''


@pytest.mark.integration
def test_pallas_under_a_mesh_runs_per_device_on_the_batch_split():
    """On a (2, 2) mesh of 4 fake CPU devices, traced as the train step is: the kernel is lowered
    inside a shard_map over (data, fsdp), on 2 of the 8 examples per device (folded to 4 kernel
    "heads" of 128 queries). Pallas' TPU interpreter does not finish on several CPU devices (jax
    0.10.2, 2 or 4 devices), so the run that checks the numbers swaps the kernel for a jnp one with
    its interface: the sharding, folding and scaling around it against the reference; the kernel
    itself is checked on one device above."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONPATH=PROJECT_ROOT)
    out = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=PROJECT_ROOT, env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = dict(line.split(": ") for line in out.stdout.strip().splitlines())
    assert lines["per-device kernel"] == "True"
    assert float(lines["value error"]) < 1e-3  # a sum of 8 * 128 * 2 * 16 sines
    assert float(lines["grad error"]) < 1e-5
