"""Unit tests of lipsync_jax.train pieces (in-process, one device, small shapes)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.config_utils import config_to_dict, load_config, resolve_path
from lipsync_jax.diffusion.conditioning import latent_mask, nearest_resize
from lipsync_jax.models.syncnet import stack_frames
from lipsync_jax.train.data_sources import FieldSelect
from lipsync_jax.train.state import (
    OptimizerConfigError,
    TrainState,
    learning_rate_schedule,
    make_optimizer,
    unet_trainable,
)
from lipsync_jax.train.synthetic import SyntheticSyncNetSource, SyntheticUNetSource
from lipsync_jax.train.unet_step import mixed_noise


def test_mesh_shape_resolves_minus_one_and_rejects_bad_shapes():
    assert sharding_lib.mesh_shape(("data", "fsdp"), (-1, 2), 8) == (4, 2)
    assert sharding_lib.mesh_shape(("data", "fsdp"), (-1, 1), 1) == (1, 1)
    for shape in [(3, -1), (-1, -1), (2, 2), (0, 8)]:
        with pytest.raises(sharding_lib.MeshConfigError):
            sharding_lib.mesh_shape(("data", "fsdp"), shape, 8)


class _FakeMesh:
    shape = {"data": 4, "fsdp": 2}
    axis_names = ("data", "fsdp")


def test_logical_rules_shard_large_kernels_over_fsdp_only_when_divisible():
    mesh = _FakeMesh()
    assert sharding_lib.spec_for(P("conv_h", "conv_w", "embed_in", "embed_out"), (3, 3, 64, 64), mesh) == \
        P(None, None, None, "fsdp")
    assert sharding_lib.spec_for(P("embed", "heads"), (320, 320), mesh) == P(None, "fsdp")
    assert sharding_lib.spec_for(P("embed", "heads"), (320, 5), mesh) == P()  # small: replicated
    assert sharding_lib.spec_for(P("embed", "mlp"), (4096, 7), mesh) == P(None, None)  # 7 % 2 != 0
    assert sharding_lib.spec_for(None, (4096, 4096), mesh) == P()
    assert sharding_lib.batch_axes(mesh, 8) == ("data", "fsdp")
    assert sharding_lib.batch_axes(mesh, 4) == ("data",)
    assert sharding_lib.batch_axes(mesh, 3) == ()


@pytest.mark.integration
def test_mixed_noise_has_the_shared_and_independent_variances():
    noise = mixed_noise(jax.random.key(0), (64, 8, 8, 8, 4), True, 1.0)
    assert abs(float(jnp.var(noise)) - 1.0) < 0.03
    # correlation between frames = shared variance = a^2 / (1 + a^2) = 0.5
    a, b = np.asarray(noise[:, 0]).ravel(), np.asarray(noise[:, 5]).ravel()
    assert abs(np.corrcoef(a, b)[0, 1] - 0.5) < 0.05
    same = mixed_noise(jax.random.key(0), (2, 4, 8, 8, 4), False, 1.0)
    np.testing.assert_array_equal(same[:, 0], same[:, 3])


def test_nearest_resize_matches_torch_nearest_index_rule_and_frame_stacking():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(nearest_resize(x, (2, 2))[0, :, :, 0], [[0, 2], [8, 10]])
    np.testing.assert_array_equal(nearest_resize(x, (3, 3))[0, :, :, 0], [[0, 1, 2], [4, 5, 6], [8, 9, 10]])
    np.testing.assert_array_equal(nearest_resize(x, (8, 8))[0, ::2, ::2], x[0])  # 2x fast path
    pixel_mask = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(latent_mask(pixel_mask, (2, 2)), pixel_mask[:, ::8, ::8, :1])
    frames = jnp.arange(3 * 1 * 1 * 3.0).reshape(1, 3, 1, 1, 3)  # (b, f, h, w, c)
    stacked = stack_frames(frames)
    np.testing.assert_array_equal(stacked[0, 0, 0], np.arange(9.0))  # channel = 3 * frame + rgb


def test_lr_schedule_warmup_then_constant_or_cosine():
    constant = learning_rate_schedule(dict(lr=1e-4, lr_warmup_steps=10, lr_scheduler="constant"), 100)
    assert float(constant(0)) == 0.0
    assert float(constant(5)) == pytest.approx(5e-5) and float(constant(50)) == pytest.approx(1e-4)
    cosine = learning_rate_schedule(dict(lr=1e-4, lr_warmup_steps=0, lr_scheduler="cosine"), 100)
    assert float(cosine(0)) == pytest.approx(1e-4) and float(cosine(100)) == pytest.approx(0.0, abs=1e-12)
    scaled = learning_rate_schedule(dict(lr=1e-4, scale_lr=True), 100, num_processes=4)
    assert float(scaled(3)) == pytest.approx(4e-4)
    with pytest.raises(OptimizerConfigError):
        learning_rate_schedule(dict(lr=1e-4, lr_scheduler="polynomial"), 100)


def test_frozen_params_get_no_update_and_no_adam_moments():
    params = {"motion_modules_0": {"kernel": jnp.ones((4, 4))}, "resnets_0": {"kernel": jnp.ones((4, 4))}}
    model_cfg = {"use_motion_module": True}
    trainable = unet_trainable(params, model_cfg, {"trainable_modules": ("motion_modules.",)})
    assert trainable == {"motion_modules_0": {"kernel": True}, "resnets_0": {"kernel": False}}
    tx, _ = make_optimizer(dict(lr=0.1, max_grad_norm=1.0), 10, trainable=trainable)
    state = TrainState.create(params, tx, jax.random.key(0))
    moments = [x for x in jax.tree.leaves(state.opt_state) if getattr(x, "shape", ()) == (4, 4)]
    assert len(moments) == 2  # mu and nu of the trainable kernel only
    grads = jax.tree.map(jnp.ones_like, params)
    new = state.apply_gradients(grads)
    np.testing.assert_array_equal(new.params["resnets_0"]["kernel"], params["resnets_0"]["kernel"])
    assert not np.allclose(new.params["motion_modules_0"]["kernel"], 1.0)
    with pytest.raises(OptimizerConfigError):
        unet_trainable(params, model_cfg, {"trainable_modules": ("nothing.",)})
    assert unet_trainable(params, {"use_motion_module": False}, {}) is None  # stage 1: everything


@pytest.mark.integration
def test_stage2_trainable_patterns_select_motion_and_attention_modules():
    from lipsync_jax.models.unet3d import UNet3DConditionModel
    from lipsync_jax.models.unet3d import abstract_params as unet_abstract_params
    from lipsync_jax.models.unet_config import UNet3DConfig

    cfg = config_to_dict(load_config(resolve_path("configs/unet/tiny.py")))
    shapes = unet_abstract_params(UNet3DConditionModel(UNet3DConfig.from_dict(cfg["model"])))
    mask = unet_trainable(shapes, cfg["model"], cfg["run"])
    flat = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(mask)}
    assert any(v for k, v in flat.items() if "motion_modules" in k)
    assert any(v for k, v in flat.items() if "attentions" in k)
    assert not any(v for k, v in flat.items() if "resnets" in k or "conv_in" in k)


def test_synthetic_sources_shard_the_same_global_batches_and_restore_state():
    cfg = config_to_dict(load_config(resolve_path("configs/unet/tiny_stage1.py")))
    cfg["data"]["batch_size"], cfg["data"]["num_frames"] = 2, 2
    whole = dict(cfg, data=dict(cfg["data"], batch_size=4))
    full = SyntheticUNetSource(whole).batch(1)
    halves = [SyntheticUNetSource(cfg, p, 2).batch(1) for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([h["gt_frames"] for h in halves]), full["gt_frames"])
    source = SyntheticUNetSource(cfg)
    next(source), next(source)
    state = source.get_state()
    expected = next(source)
    other = SyntheticUNetSource(cfg)
    other.set_state(state)
    np.testing.assert_array_equal(next(other)["audio_embeds"], expected["audio_embeds"])
    assert full["masks"].shape == (4, 2, 64, 64, 1) and full["audio_embeds"].shape[2:] == (50, 384)
    sync = SyntheticSyncNetSource(config_to_dict(load_config(resolve_path("configs/syncnet/tiny.py")))).batch(0)
    assert sync["frames"].shape[1:] == (16, 64, 64, 3) and set(np.unique(sync["labels"])) == {0.0, 1.0}


def test_field_select_names_missing_fields():
    class It:
        def __next__(self):
            return {"frames": 1}
    with pytest.raises(ValueError, match="mel"):
        next(FieldSelect(It(), ("frames", "mel")))


@pytest.mark.integration
def test_task_dispatch_and_clear_config_errors(tmp_path):
    from lipsync_jax.train.task import TrainConfigError, load_converted
    from lipsync_jax.train.tasks import build_task

    with pytest.raises(TrainConfigError, match="neither"):
        build_task({"model": {"something": 1}})
    with pytest.raises(TrainConfigError, match="ckpt.resume_ckpt_path.*convert"):
        load_converted(str(tmp_path / "missing"), "ckpt.resume_ckpt_path")
    syncnet = build_task(load_config(resolve_path("configs/syncnet/tiny.py")))
    assert syncnet.name == "syncnet" and syncnet.logical_specs is None
    unet = build_task(load_config(resolve_path("configs/unet/tiny_stage2_losses.py")))
    assert unet.name == "unet" and unet.trainable is not None
    latent = build_task(load_config(resolve_path("configs/syncnet/syncnet_16_latent.py")))
    assert latent.name == "syncnet"  # latent space trains now (tests/train/test_train_syncnet.py): a frozen VAE
    assert set(jax.eval_shape(latent.init_frozen, jax.random.key(0))) == {"vae"}


def test_converted_weights_are_checked_against_the_model(tmp_path):
    from lipsync_jax.checkpoints import save_params
    from lipsync_jax.train.task import TrainConfigError, load_converted

    save_params(tmp_path / "w", {"a": {"kernel": np.ones((2, 3), np.float32)}}, None)
    shapes = {"a": {"kernel": jax.ShapeDtypeStruct((2, 3), jnp.float32)}}
    loaded = load_converted(str(tmp_path / "w"), "x", shapes=shapes)
    np.testing.assert_array_equal(loaded["a"]["kernel"], 1.0)
    with pytest.raises(TrainConfigError, match="wrong shape"):
        load_converted(str(tmp_path / "w"), "x", shapes={"a": {"kernel": jax.ShapeDtypeStruct((3, 3), jnp.float32)}})


def test_auto_data_source_uses_the_dataset_when_configured():
    from lipsync_jax.train.data_sources import resolve_source
    from lipsync_jax.train.task import TrainConfigError

    config = load_config("configs/unet/tiny.py")
    with pytest.warns(UserWarning, match="SYNTHETIC"):
        assert resolve_source(config, "auto") == "synthetic"
    config = load_config("configs/unet/tiny.py", overrides=["data.train_data_dir=/data/clips"])
    assert resolve_source(config, "auto") == "grain"
    assert resolve_source(config, "synthetic_fixed") == "synthetic_fixed"
    with pytest.raises(TrainConfigError, match="unknown data source"):
        resolve_source(config, "tfrecord")


def test_original_checkpoints_are_converted_on_the_fly(tmp_path):
    from lipsync_jax.convert.syncnet import convert_file
    from lipsync_jax.golden.core import load_fixture
    from lipsync_jax.train.task import load_converted
    from tests.helpers.paths import golden_path
    from tests.helpers.torch_writer import save_torch_checkpoint

    fixture = load_fixture(golden_path("syncnet_tiny.npz"))
    save_torch_checkpoint({"state_dict": fixture.weights}, tmp_path / "stable_syncnet.pt")
    loaded = load_converted(str(tmp_path / "stable_syncnet.pt"), "ckpt.inference_ckpt_path",
                            kind="syncnet", model_config=fixture.config)
    reference, _ = convert_file(str(tmp_path / "stable_syncnet.pt"), fixture.config)
    assert set(loaded) == {"audio_encoder", "visual_encoder"}  # bare tree
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(reference)):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, np.asarray(b, np.float32))
