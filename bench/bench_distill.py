"""What a consistency student saves: UNet calls per 16-frame chunk, frames/s and XLA's FLOPs of the
sampling program, teacher (DDIM 20 + CFG, DPM-Solver++ 10 + CFG, DDIM 20 + CFG + DeepCache 3)
against the student (lcm 4 and 2 steps, no CFG).

    python bench/bench_distill.py                                  # tiny config: timings + FLOPs
    python bench/bench_distill.py --flops_only --config configs/unet/stage2.py   # full size, on paper
    python bench/bench_distill.py --train_step configs/unet/distill.py   # FLOPs of one distillation step

``--train_step CONFIG``: XLA's cost analysis of one training step (loss + gradient, lowered from
abstract shapes, remat as configured) per clip, for the distill config and for stage 2 (the same
config without its ``distill`` section) for comparison; docs/distillation.md turns it into GPU
hours.

Timings: ``sample_chunk`` (the one jitted ``lax.scan`` infer.py runs per chunk batch, without the
VAE and face work around it) on one 16-frame window, random weights, float32; first call (incl.
compilation) and the best of ``--repeats`` calls: wall time (frames/s = frames / best wall) and
the process's CPU time (all threads; the number to read on a shared, loaded machine). FLOPs: XLA's
cost analysis of lowered programs (abstract shapes, nothing allocated): "program" is the whole
sampling program as XLA counts it, which is its ``lax.scan`` body ONCE (XLA does not multiply a
while loop by its trip count; a DeepCache body holds both branches of its ``lax.cond``); "per
chunk" = UNet rows x the FLOPs of one UNet evaluation of one window, where CFG's two branches are
two rows of one call and a DeepCache shallow call counts as its share of a full one.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lipsync_jax.config_utils import load_config  # noqa: E402
from lipsync_jax.diffusion import DDIMScheduler, ModuleApply, initial_latents, sample_chunk  # noqa: E402
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params  # noqa: E402
from lipsync_jax.models.unet_config import UNet3DConfig  # noqa: E402
from lipsync_jax.tree_utils import random_params  # noqa: E402

# (label, solver, steps, guidance, deepcache interval)
RUNS = (("teacher DDIM 20 + CFG 1.5", "ddim", 20, 1.5, 0),
        ("teacher DPM-Solver++ 10 + CFG 1.5", "dpmsolver++", 10, 1.5, 0),
        ("teacher DDIM 20 + CFG 1.5 + DeepCache 3", "ddim", 20, 1.5, 3),
        ("student lcm 4", "lcm", 4, 1.0, 0),
        ("student lcm 2", "lcm", 2, 1.0, 0))


def _inputs(config, frames: int, abstract: bool):
    latent = int(config.data.resolution) // 8
    shape = (1, frames, latent, latent, 4)
    if abstract:
        arrays = [jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape[:-1] + (1,), jnp.float32),
                  jax.ShapeDtypeStruct(shape, jnp.float32), jax.ShapeDtypeStruct(shape, jnp.float32),
                  jax.ShapeDtypeStruct((1, frames, 50, int(config.model.cross_attention_dim)), jnp.float32)]
        return arrays, jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    keys = jax.random.split(jax.random.key(1), 5)
    return [initial_latents(keys[0], shape), jnp.ones(shape[:-1] + (1,)), jax.random.normal(keys[1], shape),
            jax.random.normal(keys[2], shape),
            jax.random.normal(keys[3], (1, frames, 50, int(config.model.cross_attention_dim)))], keys[4]


def program_flops(apply, params, args, key, scheduler, solver, steps, guidance, interval) -> float:
    """XLA's FLOP count of the lowered sampling program (its loop body counted once)."""
    from lipsync_jax.diffusion.sampler import _sample_chunk

    lowered = _sample_chunk.lower(apply, params, *args, scheduler=scheduler, num_steps=steps,
                                  guidance_scale=guidance, solver=solver, deepcache_interval=interval,
                                  noise_key=key if solver == "lcm" else None)
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def unet_row_flops(module, params, config, frames: int) -> dict[str, float]:
    """FLOPs of one UNet evaluation of one window: the full call and DeepCache's shallow call."""
    latent = int(config.data.resolution) // 8
    x = jax.ShapeDtypeStruct((1, frames, latent, latent, module.config.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    audio = jax.ShapeDtypeStruct((1, frames, 50, module.config.cross_attention_dim), jnp.float32)
    cache = jax.ShapeDtypeStruct((1, frames, latent, latent, module.config.block_out_channels[0]), jnp.float32)
    out = {}
    for name, fn, extra in (("full", lambda p, x, t, a: module.apply({"params": p}, x, t, a), ()),
                            ("shallow", lambda p, x, t, a, c: module.apply({"params": p}, x, t, a, deepcache="shallow",
                                                                           cache=c), (cache,))):
        cost = jax.jit(fn).lower(params, x, t, audio, *extra).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[name] = float(cost["flops"])
    return out


def train_step_flops(config_path: str) -> dict[str, float]:
    """FLOPs per clip of one loss + gradient of the distill task and of stage 2 (batch 1)."""
    from lipsync_jax.train.state import TrainState, make_optimizer
    from lipsync_jax.train.tasks import build_task

    out = {}
    config = load_config(config_path)
    stage2 = load_config(config_path)
    with stage2.unlocked():
        del stage2["distill"]
    stage2.run.trainable_modules = ("motion_modules.", "attentions.")
    for name, cfg in (("distill", config), ("stage2 (same losses)", stage2)):
        task = build_task(cfg)
        frozen = jax.eval_shape(task.init_frozen, jax.random.key(0))
        if name == "distill" and "teacher" not in frozen:  # a configured teacher is not random-initialised
            frozen = dict(frozen, teacher=task.param_shapes)
        d = cfg.data
        f, r = int(d.num_frames), int(d.resolution)
        frames = jax.ShapeDtypeStruct((1, f, r, r, 3), jnp.float32)
        batch = dict(gt_frames=frames, masked_frames=frames, ref_frames=frames,
                     masks=jax.ShapeDtypeStruct((1, f, r, r, 1), jnp.float32),
                     audio_embeds=jax.ShapeDtypeStruct((1, f, 50, int(cfg.model.cross_attention_dim)), jnp.float32),
                     mel=jax.ShapeDtypeStruct((1, 80, 52, 1), jnp.float32))
        tx, _ = make_optimizer(cfg.optimizer, 1000, 1, task.trainable)
        state = jax.eval_shape(lambda p, tx=tx, task=task: TrainState.create(p, tx, jax.random.key(0),
                                                                            ema_decay=task.ema_decay),
                               task.param_shapes)
        start = time.perf_counter()
        cost = jax.jit(task.train_step).lower(state, frozen, batch).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[name] = float(cost["flops"])
        print(f"{name}: {out[name] / 1e12:.2f} TFLOP per clip per step ({config_path} @ {r} px, {f} frames, "
              f"remat {bool(cfg.run.enable_gradient_checkpointing)}; lowered in {time.perf_counter() - start:.0f} s)",
              flush=True)
    return out


def unet_rows(solver: str, steps: int, guidance: float, interval: int, shallow_ratio: float) -> float:
    branches = 2 if guidance > 1 else 1
    if interval > 1:
        full = len(range(0, steps, interval))
        return branches * (full + (steps - full) * shallow_ratio)
    return float(branches * steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/tiny.py")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flops_only", action="store_true", help="no timings (abstract shapes only)")
    parser.add_argument("--train_step", default=None, help="a distill config: FLOPs of one training step only")
    args = parser.parse_args()
    if args.train_step:
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), JAX {jax.__version__}")
        train_step_flops(args.train_step)
        return

    config = load_config(args.config)
    module = UNet3DConditionModel(UNet3DConfig.from_dict(config.model.to_dict()))
    scheduler = DDIMScheduler.from_config(config.scheduler.to_dict())
    apply = ModuleApply(module)
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), JAX {jax.__version__}; {args.config} "
          f"@ {config.data.resolution} px, one window of {args.frames} frames, float32")
    template = abstract_params(module)
    row = unet_row_flops(module, template, config, args.frames)
    shallow_ratio = row["shallow"] / row["full"]
    print(f"one UNet row: {row['full'] / 1e9:.3f} GFLOP (DeepCache shallow {shallow_ratio:.1%} of it)")
    abstract_inputs, abstract_key = _inputs(config, args.frames, abstract=True)
    params = None if args.flops_only else jax.tree.map(jnp.asarray, random_params(template, seed=0))
    inputs, key = (None, None) if args.flops_only else _inputs(config, args.frames, abstract=False)
    print("| program | UNet calls per chunk | UNet rows per chunk | GFLOP per chunk | XLA GFLOP of the program "
          "(loop body once) | first call (s) | best wall (s) | frames/s | best CPU (s) | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = None
    for label, solver, steps, guidance, interval in RUNS:
        program = program_flops(apply, template, abstract_inputs, abstract_key, scheduler, solver, steps, guidance,
                                interval)
        rows = unet_rows(solver, steps, guidance, interval, shallow_ratio)
        first = best = best_cpu = float("nan")
        if not args.flops_only:
            run = functools.partial(sample_chunk, apply, params, *inputs, scheduler=scheduler, num_steps=steps,
                                    guidance_scale=guidance, solver=solver, deepcache_interval=interval,
                                    noise_key=key if solver == "lcm" else None)
            start = time.perf_counter()
            jax.block_until_ready(run())
            first = time.perf_counter() - start
            best = best_cpu = float("inf")
            for _ in range(args.repeats):
                start, start_cpu = time.perf_counter(), time.process_time()
                jax.block_until_ready(run())
                best = min(best, time.perf_counter() - start)
                best_cpu = min(best_cpu, time.process_time() - start_cpu)
        fps = args.frames / best
        base = base or best_cpu
        print(f"| {label} | {steps} | {rows:.1f} | {rows * row['full'] / 1e9:.2f} | {program / 1e9:.2f} | "
              f"{first:.1f} | {best:.3f} | {fps:.1f} | {best_cpu:.3f} | {base / best_cpu:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
