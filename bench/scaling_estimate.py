"""Numbers for docs/scaling.md: stage-2 UNet training memory per device and FLOPs, on paper.

    python bench/scaling_estimate.py [--config configs/unet/stage2_512.py] [--mesh 4,2 --mesh 8,8 ...]

Nothing is allocated or run; everything comes from abstract shapes:
- parameters / optimizer state / frozen networks per device: the shardings the training loop
  would use (``lipsync_jax.sharding`` on a ``jax.sharding.AbstractMesh`` of each shape);
- activations kept for the backward pass, per clip: the leaves of the ``jax.vjp`` closure of the
  stage-2 loss (``jax.eval_shape``), with the config's remat setting and with remat off;
- FLOPs per clip: XLA's cost analysis of the lowered (not compiled) jitted loss + gradient.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.config_utils import load_config, resolve_path
from lipsync_jax.train.state import TrainState, make_optimizer
from lipsync_jax.train.unet_setup import build_unet_task

GIB = 2 ** 30


def _bytes(tree) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def _per_device(tree, shardings) -> int:
    return int(sum(math.prod(s.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
                   for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings))))


def abstract_batch(config) -> dict:
    d = config.data
    f, s = int(d.num_frames), int(d.resolution)
    frames = jax.ShapeDtypeStruct((1, f, s, s, 3), jnp.float32)
    return dict(gt_frames=frames, masked_frames=frames, ref_frames=frames,
                masks=jax.ShapeDtypeStruct((1, f, s, s, 1), jnp.float32),
                audio_embeds=jax.ShapeDtypeStruct((1, f, 50, int(config.model.cross_attention_dim)), jnp.float32),
                mel=jax.ShapeDtypeStruct((1, 80, 52, 1), jnp.float32))


def estimate(config_path: str, meshes: list[tuple[int, int]], flops: bool) -> dict:
    out: dict = {"config": config_path}
    results = {}
    for remat in (True, False):
        config = load_config(resolve_path(config_path), [f"run.enable_gradient_checkpointing={remat}"])
        task = build_unet_task(config)
        trainer = task.train_step.__self__
        frozen = jax.eval_shape(task.init_frozen, jax.random.key(0))
        params = task.param_shapes
        batch = abstract_batch(config)
        rng = jax.random.key(1)

        def loss(p, fz, b, trainer=trainer, rng=rng):
            return trainer.loss(p, fz, b, rng)[0]
        start = time.perf_counter()
        vjp_fn = jax.eval_shape(lambda p, fz, b: jax.vjp(lambda q: loss(q, fz, b), p)[1], params, frozen, batch)
        residuals = _bytes(vjp_fn) - _bytes(params) - _bytes(frozen)  # weights are arguments anyway
        results[remat] = dict(residual_gib_per_clip=max(residuals, 0) / GIB,
                              trace_s=round(time.perf_counter() - start, 1))
        if remat:
            tx, _ = make_optimizer(config.optimizer, 1000, 1, task.trainable)
            boxed = sharding_lib.box_params(params, task.logical_specs)
            state = jax.eval_shape(lambda p, tx=tx: TrainState.create(p, tx, jax.random.key(0)), boxed)
            unboxed = jax.eval_shape(lambda p, tx=tx: TrainState.create(p, tx, jax.random.key(0)), params)
            out["params"] = dict(unet=int(sum(math.prod(x.shape) for x in jax.tree.leaves(params))),
                                 trainable=int(sum(math.prod(x.shape) for x, t in zip(
                                     jax.tree.leaves(params), jax.tree.leaves(task.trainable)) if t))
                                 if task.trainable is not None else None,
                                 frozen={k: int(sum(math.prod(x.shape) for x in jax.tree.leaves(v)))
                                         for k, v in frozen.items()})
            out["bytes"] = dict(params_gib=_bytes(unboxed.params) / GIB, opt_state_gib=_bytes(unboxed.opt_state) / GIB,
                                frozen_gib=_bytes(frozen) / GIB)
            per_mesh = {}
            for data, fsdp in meshes:
                mesh = AbstractMesh((data, fsdp), ("data", "fsdp"))
                sh = sharding_lib.state_shardings(state, mesh)
                fz = sharding_lib.frozen_shardings(frozen, mesh)
                per_mesh[f"{data}x{fsdp}"] = dict(params_gib=_per_device(unboxed.params, sh.params) / GIB,
                                                  opt_state_gib=_per_device(unboxed.opt_state, sh.opt_state) / GIB,
                                                  frozen_gib=_per_device(frozen, fz) / GIB)
            out["per_device"] = per_mesh
            if flops:
                start = time.perf_counter()
                lowered = jax.jit(jax.value_and_grad(loss)).lower(params, frozen, batch)
                cost = lowered.cost_analysis()
                cost = cost[0] if isinstance(cost, (list, tuple)) else cost
                out["flops_per_clip"] = float(cost.get("flops", float("nan")))
                out["lower_s"] = round(time.perf_counter() - start, 1)
    out["activations"] = {("remat" if k else "no_remat"): v for k, v in results.items()}
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/stage2_512.py")
    parser.add_argument("--mesh", action="append", default=None, help="DATA,FSDP (repeatable)")
    parser.add_argument("--no_flops", action="store_true")
    args = parser.parse_args()
    meshes = [tuple(int(v) for v in m.split(",")) for m in (args.mesh or ["8,1", "4,2", "1,8", "16,4", "8,8"])]
    print(json.dumps(estimate(args.config, meshes, not args.no_flops), indent=1))


if __name__ == "__main__":
    main()
