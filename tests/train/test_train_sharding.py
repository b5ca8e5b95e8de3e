"""Shardings derived by flax (lipsync_jax.sharding) on a device-free (4, 2) data x fsdp mesh
(``jax.sharding.AbstractMesh``): the full VideoMAEv2-giant frozen network is sharded over fsdp,
small frozen networks stay replicated, and the train state's Adam moments follow their
parameters' logical names."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.config_utils import config_to_dict, load_config, resolve_path
from lipsync_jax.train.state import TrainState, make_optimizer

MESH = AbstractMesh((4, 2), ("data", "fsdp"))


def test_frozen_videomae_giant_is_sharded_over_fsdp_not_replicated():
    from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2, abstract_params

    cfg = config_to_dict(load_config(resolve_path("configs/unet/stage2.py")))
    giant = abstract_params(VideoMAEv2(VideoMAEConfig.from_config(cfg["trepa"]["model"])))
    small = {"lin0": {"kernel": jax.ShapeDtypeStruct((1, 1, 64, 1), jnp.float32)}}
    shardings = sharding_lib.frozen_shardings({"trepa": giant, "lpips": small}, MESH)
    leaves = list(zip(jax.tree_util.tree_leaves_with_path(giant), jax.tree.leaves(shardings["trepa"])))
    total = sum(int(np.prod(x.shape)) for (_, x), _ in leaves)
    assert total > 9e8  # the 1.0 B-parameter giant
    sharded = sum(int(np.prod(x.shape)) for (_, x), s in leaves if "fsdp" in tuple(s.spec))
    assert sharded / total > 0.99  # every large kernel is split; only vectors stay replicated
    by_name = {jax.tree_util.keystr(k): (x, s) for (k, x), s in leaves}
    qkv, qkv_sharding = next(v for k, v in by_name.items() if k.endswith("['qkv']['kernel']"))
    assert qkv_sharding.spec == P(None, "fsdp")
    assert qkv_sharding.shard_shape(qkv.shape) == (qkv.shape[0], qkv.shape[1] // 2)
    bias = next(s for k, (x, s) in by_name.items() if len(x.shape) == 1)
    assert bias.spec == P()  # vectors replicated
    # per device: about half of the float32 weights instead of all 4 GB
    per_device = sum(int(np.prod(s.shard_shape(x.shape))) * 4 for (_, x), s in leaves)
    assert per_device < 0.52 * total * 4
    assert all(s.spec == P() for s in jax.tree.leaves(shardings["lpips"]))  # small: replicated


def test_state_shardings_put_adam_moments_like_their_params_by_name():
    params = {"attn": {"to_q": {"kernel": jax.ShapeDtypeStruct((320, 320), jnp.float32),
                                "bias": jax.ShapeDtypeStruct((320,), jnp.float32)}},
              "conv": {"kernel": jax.ShapeDtypeStruct((3, 3, 64, 9), jnp.float32)}}
    logical = {"attn": {"to_q": {"kernel": P("embed", "heads"), "bias": P()}},
               "conv": {"kernel": P("conv_h", "conv_w", "embed_in", "embed_out")}}
    tx, _ = make_optimizer(dict(lr=1e-4), 10)
    boxed = sharding_lib.box_params(params, logical)
    abstract = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.key(0)), boxed)
    shardings = sharding_lib.state_shardings(abstract, MESH)
    assert shardings.params["attn"]["to_q"]["kernel"].spec == P(None, "fsdp")
    assert shardings.params["conv"]["kernel"].spec == P(None, None, None, None)  # 9 % 2: fallback
    assert shardings.params["attn"]["to_q"]["bias"].spec == P()
    adam = shardings.opt_state[1][0]
    assert adam.mu["attn"]["to_q"]["kernel"].spec == P(None, "fsdp")
    assert adam.nu["attn"]["to_q"]["kernel"].spec == P(None, "fsdp")
    assert adam.count.spec == P() and shardings.step.spec == P() and shardings.rng.spec == P()
    # a mesh without fsdp replicates everything
    data_only = AbstractMesh((8,), ("data",))
    assert sharding_lib.state_shardings(abstract, data_only).params["attn"]["to_q"]["kernel"].spec == P(None, None)
