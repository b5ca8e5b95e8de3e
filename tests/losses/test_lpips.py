"""LPIPS(vgg): golden parity, converter paths, gradients w.r.t. the generated frames, bf16."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.convert.lpips import convert_state_dict
from lipsync_jax.convert.rules import ConversionError
from lipsync_jax.golden.check_losses import check_fixture, check_manifest
from lipsync_jax.golden.core import load_fixture, load_manifest, rel_l2
from lipsync_jax.losses.lpips import LPIPS, lpips_lower_half
from tests.helpers.paths import golden_path


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("lpips_tiny.npz"))


@pytest.fixture(scope="module")
def params(fixture):
    params, report = convert_state_dict(fixture.weights, fixture.config)
    report.raise_if_problems("lpips fixture")
    return params


def _frames(u8):
    return jnp.asarray(np.moveaxis(u8, 1, -1).astype(np.float32) / 127.5 - 1.0)


@pytest.mark.integration
def test_golden_fixture_and_manifest():
    results = check_fixture(load_fixture(golden_path("lpips_tiny.npz")))
    results += check_manifest(load_manifest(golden_path("manifest_lpips_vgg.json")))
    assert len(results) == 4
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


@pytest.mark.integration
def test_lower_half_helper_matches_fixture_with_video_dims(fixture, params):
    pred, target = _frames(fixture.inputs["pred_uint8"]), _frames(fixture.inputs["gt_uint8"])
    # (n, h, w, 3) and (b, f, h, w, 3) layouts give the same mean over all frames
    flat = jax.jit(lpips_lower_half)(params, pred, target)
    video = jax.jit(lpips_lower_half)(params, pred[None], target[None])
    assert rel_l2(flat, fixture.outputs["lpips_mean"]) <= 1e-4
    assert rel_l2(video, flat) <= 1e-6


@pytest.mark.integration
def test_identical_images_have_zero_distance(fixture, params):
    pred = _frames(fixture.inputs["pred_uint8"])[:, :64, :64]
    assert float(jnp.abs(lpips_lower_half(params, pred, pred))) < 1e-7


def test_missing_lin_weights_are_reported(fixture):
    weights = {k: v for k, v in fixture.weights.items() if not k.startswith("lin")}
    _, report = convert_state_dict(weights, fixture.config)
    assert sorted(report.missing) == [f"lin{k}/kernel" for k in range(5)]
    with pytest.raises(ConversionError, match="lin0/kernel"):
        report.raise_if_problems("lpips without lin layers")


def test_torchvision_names_and_default_scaling(fixture, params):
    """torchvision's ``features.N`` names + lin file without buffers convert to the same params."""
    torchvision = {}
    for key, value in fixture.weights.items():
        if key.startswith("net.slice"):
            index_and_leaf = key.split(".", 2)[2]  # "N.weight"
            torchvision[f"features.{index_and_leaf}"] = value
        elif key.startswith("lin") and not key.startswith("lins."):
            torchvision[key] = value
    torchvision["classifier.0.weight"] = np.zeros((4, 4), np.float16)
    converted, report = convert_state_dict(torchvision, fixture.config)
    assert report.problem_count() == 0 and report.skipped == ["classifier.0.weight"]
    leaves_a = jax.tree_util.tree_leaves_with_path(converted)
    leaves_b = dict(jax.tree_util.tree_leaves_with_path(params))
    assert len(leaves_a) == len(leaves_b)
    for path, leaf in leaves_a:  # the fixture's scaling buffers are lpips' constants
        np.testing.assert_allclose(leaf, leaves_b[path], rtol=1e-6, err_msg=jax.tree_util.keystr(path))


@pytest.mark.integration
def test_gradient_matches_finite_difference(fixture, params):
    rng = np.random.default_rng(0)
    pred = np.asarray(_frames(fixture.inputs["pred_uint8"])[:, :64, :64], np.float64)
    target = np.asarray(_frames(fixture.inputs["gt_uint8"])[:, :64, :64], np.float64)
    direction = rng.standard_normal(pred.shape)
    direction /= np.linalg.norm(direction)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
        model = LPIPS.from_config(fixture.config, dtype=jnp.float64, param_dtype=jnp.float64)
        loss = jax.jit(lambda x: lpips_lower_half(p64, x, jnp.asarray(target), model=model))
        grad = np.asarray(jax.grad(loss)(jnp.asarray(pred)))
        eps = 1e-4
        fd = (float(loss(pred + eps * direction)) - float(loss(pred - eps * direction))) / (2 * eps)
    assert grad.dtype == np.float64 and np.all(np.isfinite(grad))
    assert np.all(grad[:, :32] == 0) and np.any(grad[:, 32:] != 0)  # only the lower half matters
    analytic = float(np.sum(grad * direction))
    assert abs(analytic - fd) <= 1e-5 * abs(fd) + 1e-12, (analytic, fd)


@pytest.mark.integration
def test_bfloat16_close_to_float32(fixture, params):
    pred, target = _frames(fixture.inputs["pred_uint8"]), _frames(fixture.inputs["gt_uint8"])
    f32 = lpips_lower_half(params, pred, target)
    bf16_model = LPIPS.from_config(fixture.config, dtype=jnp.bfloat16)
    bf16 = jax.jit(lambda p, a, b: lpips_lower_half(p, a, b, model=bf16_model))(params, pred, target)
    assert bf16.dtype == jnp.float32
    assert rel_l2(bf16, f32) <= 5e-3  # measured 5.8e-4 on lpips_tiny (bf16 convs, f32 elsewhere)


def test_convert_files_from_torchvision_and_lin_checkpoints(fixture, params, tmp_path):
    from lipsync_jax.convert.lpips import convert_file, convert_files
    from tests.helpers.torch_writer import save_torch_checkpoint

    vgg = {f"features.{k.split('.', 2)[2]}": np.asarray(v) for k, v in fixture.weights.items()
           if k.startswith("net.slice")}
    vgg["classifier.6.bias"] = np.zeros(3, np.float32)
    lins = {k: np.asarray(v) for k, v in fixture.weights.items() if k.startswith("lin") and not k.startswith("lins.")}
    assert sorted(lins) == [f"lin{k}.model.1.weight" for k in range(5)]
    save_torch_checkpoint(vgg, tmp_path / "vgg16.pth")
    save_torch_checkpoint(lins, tmp_path / "vgg.pth")
    save_torch_checkpoint(dict(fixture.weights), tmp_path / "lpips_full.pth")
    two, report = convert_files(str(tmp_path / "vgg16.pth"), str(tmp_path / "vgg.pth"), fixture.config)
    assert report.skipped == ["classifier.6.bias"]
    joined, _ = convert_file(f"{tmp_path / 'vgg16.pth'},{tmp_path / 'vgg.pth'}", fixture.config)
    single, _ = convert_file(str(tmp_path / "lpips_full.pth"), fixture.config)
    for tree in (two, joined, single):
        for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
            np.testing.assert_allclose(a, b, rtol=1e-6)
    with pytest.raises(ConversionError, match="no VGG16 conv weights"):  # the lin file alone is not enough
        convert_file(str(tmp_path / "vgg.pth"), fixture.config)


def test_convert_cli_takes_two_comma_separated_files(fixture, params, tmp_path):
    import json

    from lipsync_jax.checkpoints import restore_params
    from lipsync_jax.convert.__main__ import main
    from tests.helpers.torch_writer import save_torch_checkpoint

    save_torch_checkpoint({f"features.{k.split('.', 2)[2]}": np.asarray(v) for k, v in fixture.weights.items()
                           if k.startswith("net.slice")}, tmp_path / "vgg16.pth")
    save_torch_checkpoint({k: np.asarray(v) for k, v in fixture.weights.items() if k.startswith("lin")
                           and not k.startswith("lins.")}, tmp_path / "vgg.pth")
    (tmp_path / "lpips.json").write_text(json.dumps(fixture.config))
    src = f"{tmp_path / 'vgg16.pth'},{tmp_path / 'vgg.pth'}"
    assert main(["lpips", "--src", src, "--config", str(tmp_path / "lpips.json"), "--dst", str(tmp_path / "out")]) == 0
    restored, _ = restore_params(str(tmp_path / "out"))
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # one of the two files missing: a clear error naming it, exit 1
    assert main(["lpips", "--src", f"{tmp_path / 'vgg16.pth'},{tmp_path / 'nope.pth'}",
                 "--dst", str(tmp_path / "out2")]) == 1
