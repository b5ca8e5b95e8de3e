"""Checks that need a GPU or a TPU (markers ``gpu`` / ``tpu``: skipped, with the reason, on a
host without one; ``python -m pytest -m "gpu or tpu"`` on a machine that has one).

- every golden fixture passes on the device, with float32 matmuls at full precision;
- the fused attention kernels equal the float32 reference at the UNet's attention shapes;
- the bf16 UNet on the device stays within bf16 error of its float32 output.
Speed on a device is measured by bench/gpu_suite.sh, not here.
"""

from __future__ import annotations

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.convert.unet import convert_state_dict
from lipsync_jax.golden import check_unet
from lipsync_jax.golden.__main__ import check_file
from lipsync_jax.golden.core import load_fixture, rel_l2
from lipsync_jax.models.attention import dot_product_attention
from lipsync_jax.models.unet3d import UNet3DConditionModel
from lipsync_jax.models.unet_config import UNet3DConfig
from tests.helpers.paths import GOLDEN_DIR

ON_DEVICE = [pytest.param("gpu", marks=pytest.mark.gpu), pytest.param("tpu", marks=pytest.mark.tpu)]
FIXTURES = sorted(glob.glob(os.path.join(GOLDEN_DIR, "*.npz")))
FUSED = {"gpu": "cudnn", "tpu": "pallas"}


@pytest.mark.parametrize("platform", ON_DEVICE)
@pytest.mark.parametrize("fixture", FIXTURES, ids=os.path.basename)
def test_golden_fixture_passes_on_the_device(platform, fixture):
    with jax.default_device(jax.devices(platform)[0]), jax.default_matmul_precision("highest"):
        results = check_file(fixture)
    assert results and all(r.passed for r in results), "\n".join(r.line() for r in results)


@pytest.mark.parametrize("platform", ON_DEVICE)
@pytest.mark.parametrize("queries,keys,heads,head_dim", [(1024, 1024, 8, 40), (256, 256, 8, 80), (1024, 50, 8, 40)])
def test_fused_attention_equals_the_reference(platform, queries, keys, heads, head_dim):
    device = jax.devices(platform)[0]
    q, k, v = (jax.device_put(jax.random.normal(jax.random.key(i), (2, n, heads, head_dim), jnp.bfloat16), device)
               for i, n in enumerate((queries, keys, keys)))
    reference = dot_product_attention(q, k, v, backend="naive")
    for backend in ("auto", FUSED[platform]):
        out = jax.jit(lambda q, k, v, b=backend: dot_product_attention(q, k, v, backend=b))(q, k, v)
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(reference, np.float32), atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("platform", ON_DEVICE)
def test_bf16_unet_within_bf16_error_of_float32(platform):
    fixture = load_fixture(os.path.join(GOLDEN_DIR, "unet_stage2_tiny.npz"))
    config = UNet3DConfig.from_dict(fixture.config)
    params, _ = convert_state_dict(fixture.weights_f32(), config, dtype=np.float32)
    outputs = {}
    with jax.default_device(jax.devices(platform)[0]), jax.default_matmul_precision("highest"):
        for dtype in (jnp.float32, jnp.bfloat16):
            apply = jax.jit(UNet3DConditionModel(config, dtype=dtype).apply)
            outputs[dtype] = np.asarray(apply({"params": params}, *check_unet.fixture_inputs(fixture)), np.float32)
    error = rel_l2(outputs[jnp.bfloat16], outputs[jnp.float32])
    assert 1e-4 < error <= 3e-2, error  # bf16 really ran, within its error (tests/models/test_unet.py)
