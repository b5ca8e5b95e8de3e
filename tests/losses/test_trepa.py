"""TREPA / VideoMAEv2: golden parity, the bicubic resize, remat, gradients, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.convert.videomae import convert_state_dict
from lipsync_jax.golden.check_losses import check_fixture, check_manifest
from lipsync_jax.golden.core import load_fixture, load_manifest, rel_l2
from lipsync_jax.losses.trepa import TREPALoss, bicubic_matrix, resize_bicubic
from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2
from tests.helpers.paths import golden_path


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("trepa_tiny.npz"))


@pytest.fixture(scope="module")
def config(fixture):
    return VideoMAEConfig.from_config(fixture.config)


@pytest.fixture(scope="module")
def params(fixture, config):
    params, report = convert_state_dict(fixture.weights, config)
    report.raise_if_problems("trepa fixture")
    assert report.skipped == ["head.weight", "head.bias"]
    return params


def _videos(u8):  # (b, c, f, h, w) uint8 -> (b, f, h, w, c) in [-1, 1]
    return np.moveaxis(u8, 1, -1).astype(np.float32) / 127.5 - 1.0


@pytest.mark.integration
def test_golden_fixture_and_manifest():
    results = check_fixture(load_fixture(golden_path("trepa_tiny.npz")))
    results += check_manifest(load_manifest(golden_path("manifest_videomaev2_giant.json")))
    assert len(results) == 5
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


def test_giant_preset_from_manifest_config():
    config = VideoMAEConfig.from_config(load_manifest(golden_path("manifest_videomaev2_giant.json"))["config"])
    assert (config.embed_dim, config.depth, config.num_heads, config.mlp_hidden) == (1408, 40, 16, 6144)
    assert config.grid == (8, 16, 16)


@pytest.mark.parametrize("in_size,out_size", [(256, 224), (224, 224), (64, 100)])
def test_bicubic_matrix_properties(in_size, out_size):
    matrix = bicubic_matrix(in_size, out_size)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)  # constants are preserved
    # half-pixel-centre sampling is mirror symmetric: resizing commutes with flipping
    np.testing.assert_allclose(matrix[::-1, ::-1], matrix, atol=1e-12)
    signal = np.random.default_rng(1).standard_normal(in_size)
    assert np.max(np.abs(matrix @ signal)) <= np.max(np.abs(signal)) * 1.5  # bounded overshoot
    if in_size == out_size:
        np.testing.assert_allclose(matrix, np.eye(in_size), atol=1e-12)
    else:  # a = -0.75 kernel: negative lobes, so not a convex combination
        assert matrix.min() < 0


def test_resize_applies_both_axes():
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 20, 12, 3)), jnp.float32)
    ours = resize_bicubic(images, (16, 18))
    direct = np.einsum("oh,pw,nhwc->nopc", bicubic_matrix(20, 16), bicubic_matrix(12, 18), np.asarray(images))
    np.testing.assert_allclose(ours, direct, atol=1e-5)


def test_wrong_clip_size_is_a_clear_error(config, params):
    with pytest.raises(ValueError, match="position table is fixed"):
        VideoMAEv2(config).apply({"params": params}, jnp.zeros((1, 8, 224, 224, 3)))


@pytest.mark.integration
def test_remat_gives_same_loss_and_gradient(fixture, config, params):
    fake = jnp.asarray(_videos(fixture.inputs["fake_uint8"]))
    real = jnp.asarray(_videos(fixture.inputs["real_uint8"]))
    plain, rematted = TREPALoss(VideoMAEv2(config)), TREPALoss(VideoMAEv2(config, remat=True))
    loss_a, grad_a = jax.jit(jax.value_and_grad(plain, argnums=1))(params, fake, real)
    loss_b, grad_b = jax.jit(jax.value_and_grad(rematted, argnums=1))(params, fake, real)
    assert rel_l2(loss_b, loss_a) <= 1e-6
    assert rel_l2(grad_b, grad_a) <= 1e-5


@pytest.mark.integration
def test_gradient_matches_finite_difference(fixture, config, params):
    """float32 central differences (float64 is far too slow for this model on CPU). Along the
    gradient direction the slope is well conditioned; along a random direction it is ~1e-3
    of that, so it gets a looser tolerance."""
    fake = jnp.asarray(_videos(fixture.inputs["fake_uint8"]))
    real = jnp.asarray(_videos(fixture.inputs["real_uint8"]))
    loss_fn = TREPALoss(VideoMAEv2(config))
    loss = jax.jit(loss_fn)
    grad, param_grad = jax.jit(jax.grad(lambda p, x: loss_fn(p, x, real), argnums=(1, 0)))(params, fake)
    grad = np.asarray(grad)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)
    # frozen: nothing flows into the VideoMAE weights
    assert all(float(jnp.max(jnp.abs(g))) == 0 for g in jax.tree.leaves(param_grad))
    random_dir = np.random.default_rng(0).standard_normal(fake.shape).astype(np.float32)
    for direction, eps, rtol in ((grad, 0.1, 1e-3), (random_dir, 1.0, 5e-2)):
        direction = direction / np.linalg.norm(direction)
        fd = (float(loss(params, fake + eps * direction, real))
              - float(loss(params, fake - eps * direction, real))) / (2 * eps)
        analytic = float(np.sum(grad * direction))
        assert abs(analytic - fd) <= rtol * abs(analytic), (analytic, fd)


@pytest.mark.integration
def test_bfloat16_close_to_float32(fixture, config, params):
    fake = jnp.asarray(_videos(fixture.inputs["fake_uint8"]))
    real = jnp.asarray(_videos(fixture.inputs["real_uint8"]))
    f32 = TREPALoss(VideoMAEv2(config))
    bf16 = TREPALoss(VideoMAEv2(config, dtype=jnp.bfloat16))
    feats_32, feats_16 = jax.jit(f32.features)(params, fake), jax.jit(bf16.features)(params, fake)
    assert feats_16.dtype == jnp.float32
    # measured on trepa_tiny: features 2.5e-3, loss 4.8e-3 (bf16 matmuls, f32 residual/norms)
    assert rel_l2(feats_16, feats_32) <= 1e-2
    assert rel_l2(jax.jit(bf16)(params, fake, real), jax.jit(f32)(params, fake, real)) <= 5e-2


@pytest.mark.parametrize("wrapper", ["model", "module", None])
def test_convert_file_unwraps_checkpoint(fixture, params, tmp_path, wrapper):
    from lipsync_jax.convert.videomae import convert_file
    from tests.helpers.torch_writer import save_torch_checkpoint

    weights = {k: np.asarray(v) for k, v in fixture.weights.items()}
    path = tmp_path / "videomae.pth"
    save_torch_checkpoint(weights if wrapper is None else {wrapper: weights, "epoch": 3}, path)
    converted, report = convert_file(str(path), fixture.config)
    assert report.skipped == ["head.weight", "head.bias"]
    for a, b in zip(jax.tree.leaves(converted), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_convert_file_names_a_config_mismatch(fixture, tmp_path):
    from lipsync_jax.convert.rules import ConversionError
    from lipsync_jax.convert.videomae import convert_file
    from tests.helpers.torch_writer import save_torch_checkpoint

    path = tmp_path / "videomae.pth"
    save_torch_checkpoint({k: np.asarray(v) for k, v in fixture.weights.items()}, path)
    deeper = {"vit": {**fixture.config["vit"], "depth": fixture.config["vit"]["depth"] + 1}}
    with pytest.raises(ConversionError, match="videomae.pth.*blocks_2"):
        convert_file(str(path), deeper)
