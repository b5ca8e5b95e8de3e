"""Benchmark: UNet train-step time, model FLOPs utilisation, and compiled memory per device.

    python bench/bench_train.py                      # GPU/TPU: full configs/unet/stage1.py at 256 px
    python bench/bench_train.py --config configs/unet/tiny_stage1.py --frames 4   # CPU-sized variant
    python bench/bench_train.py --memory_only --config configs/unet/stage2.py     # remat on vs off

Time: the jitted train step (synthetic batch, random weights: timing does not depend on values),
steady state over ``--repeats`` steps after a compile+warm-up step. FLOPs: XLA's cost analysis
of the compiled step (forward + backward + optimizer, frozen VAE encodes included); MFU = FLOPs
/ step time / peak FLOP/s of the device (``--peak_tflops``; defaults for known GPUs, none on
CPU). Memory: ``compiled.memory_analysis()`` of the step with ``enable_gradient_checkpointing``
on and off (compiled, never run; arguments + outputs + temporaries per device).
"""

from __future__ import annotations

import argparse
import json
import time

import jax

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.config_utils import load_config, resolve_path
from lipsync_jax.train.loop import create_state
from lipsync_jax.train.unet_setup import build_unet_task

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "TPU v5": 197.0, "TPU v4": 275.0}  # bf16 dense


def _overrides(args, remat=None):
    out = [f"data.batch_size={args.batch}"]
    if args.frames and remat is None:  # the timing run only: stage 2 needs its 16 frames
        out.append(f"data.num_frames={args.frames}")
    if args.resolution and remat is None:
        out.append(f"data.resolution={args.resolution}")
    if remat is not None:
        out.append(f"run.enable_gradient_checkpointing={remat}")
    out.append(f"mesh.shape=({jax.device_count()}, 1)")
    return out


def abstract_state(task, config):
    """(state, frozen) as ShapeDtypeStructs: nothing is allocated."""
    from lipsync_jax.train.state import TrainState, make_optimizer

    tx, _ = make_optimizer(config.optimizer, int(config.run.max_train_steps), 1, task.trainable)

    def build():
        params = task.init_params(jax.random.key(0))
        return TrainState.create(params, tx, jax.random.key(1)), task.init_frozen(jax.random.key(2))
    return jax.eval_shape(build)


def memory(config_path, args, remat):
    config = load_config(resolve_path(config_path), _overrides(args, remat))
    task = build_unet_task(config)
    state, frozen = abstract_state(task, config)
    batch = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), next(task.make_data(0, 1)))
    start = time.perf_counter()
    compiled = jax.jit(task.train_step, donate_argnums=0).lower(state, frozen, batch).compile()
    m = compiled.memory_analysis()
    total = m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
    return dict(remat=remat, compile_s=round(time.perf_counter() - start, 1),
                argument_gib=m.argument_size_in_bytes / 2**30, temp_gib=m.temp_size_in_bytes / 2**30,
                total_gib=total / 2**30)


def timing(config_path, args):
    config = load_config(resolve_path(config_path), _overrides(args))
    task = build_unet_task(config)
    mesh = sharding_lib.make_mesh(config.mesh)
    state, frozen, _ = create_state(task, config, mesh)
    data = task.make_data(0, 1)
    batch = sharding_lib.shard_batch(next(data), mesh)
    step = jax.jit(task.train_step, donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, frozen, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan")))
    state, metrics = step(state, frozen, batch)  # warm-up
    jax.block_until_ready(metrics)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        state, metrics = step(state, frozen, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    step_s = min(times)
    kind = jax.devices()[0].device_kind
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in kind), None)
    mfu = flops / step_s / (peak * 1e12 * jax.device_count()) if peak else None
    return dict(device=kind, devices=jax.device_count(), compile_s=round(compile_s, 1), step_s=step_s,
                tflops_per_step=flops / 1e12, achieved_tflops=flops / step_s / 1e12, mfu=mfu,
                loss=float(metrics["loss"]))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/stage1.py")
    parser.add_argument("--memory_config", default="configs/unet/stage2.py")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--frames", type=int, default=0, help="override data.num_frames (0: the config's)")
    parser.add_argument("--resolution", type=int, default=0, help="override data.resolution (0: the config's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak_tflops", type=float, default=None)
    parser.add_argument("--memory_only", action="store_true")
    parser.add_argument("--skip_memory", action="store_true")
    args = parser.parse_args()
    results = {"backend": jax.default_backend()}
    if not args.memory_only:
        results["timing"] = dict(config=args.config, batch=args.batch, **timing(args.config, args))
        print(json.dumps(results["timing"]), flush=True)
    if not args.skip_memory:
        results["memory"] = [dict(config=args.memory_config, **memory(args.memory_config, args, remat))
                             for remat in (False, True)]
        for row in results["memory"]:
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
