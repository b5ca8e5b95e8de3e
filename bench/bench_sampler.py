"""Sampler options: UNet FLOPs of DeepCache's full vs shallow call, and sampling-time ratios.

    python bench/bench_sampler.py                      # tiny config: FLOPs + CPU timings
    python bench/bench_sampler.py --flops_only --flops_config configs/unet/stage2.py --resolution 256

FLOPs: XLA's cost analysis of the lowered UNet call (abstract shapes, nothing is run or
allocated), for one window of ``--frames`` frames at ``--resolution`` px (latents /8), batch 1
(one CFG branch), divided by the frame count. Timings: ``sample_chunk`` on one window with CFG
(batch 2 per UNet call) and random weights; first call (incl. compilation) and the best of
``--repeats`` steady-state calls; ratios against DDIM 20 steps without DeepCache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lipsync_jax.config_utils import load_config  # noqa: E402
from lipsync_jax.diffusion import (  # noqa: E402
    DDIMScheduler,
    ModuleApply,
    initial_latents,
    new_frames,
    sample_chunk,
    sample_windows,
    window_starts,
)
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params, dummy_inputs  # noqa: E402
from lipsync_jax.models.unet_config import UNet3DConfig  # noqa: E402
from lipsync_jax.tree_utils import random_params  # noqa: E402

RUNS = (("ddim", 20, 0), ("ddim", 20, 2), ("ddim", 20, 3), ("ddim", 20, 5), ("dpmsolver++", 10, 0),
        ("dpmsolver++", 10, 3))


def unet_flops(config: UNet3DConfig, frames: int, latent: int, dtype) -> dict[str, float]:
    """GFLOP per frame of the plain, DeepCache-full and DeepCache-shallow UNet calls."""
    module = UNet3DConditionModel(config, dtype=dtype, param_dtype=dtype)
    params = abstract_params(module)
    shape = (1, frames, latent, latent, config.in_channels)
    x, t, audio = (jax.ShapeDtypeStruct(a.shape, a.dtype) for a in dummy_inputs(config, shape))
    cache = jax.ShapeDtypeStruct((1, frames, latent, latent, config.block_out_channels[0]), dtype)
    calls = {
        "full UNet": (lambda p, x, t, a: module.apply({"params": p}, x, t, a), (params, x, t, audio)),
        "DeepCache shallow": (lambda p, x, t, a, c: module.apply({"params": p}, x, t, a, deepcache="shallow",
                                                                 cache=c), (params, x, t, audio, cache)),
    }
    out = {}
    for name, (fn, args) in calls.items():
        cost = jax.jit(fn).lower(*args).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        out[name] = float(cost["flops"]) / frames / 1e9
    return out


def _random_params(module):
    """Random weights everywhere (conv_out is zero-initialised by init), without compiling init."""
    return jax.tree_util.tree_map(jnp.asarray, random_params(abstract_params(module), seed=0))


def seam_metrics(config_path: str, num_frames: int, overlaps, window: int = 16, steps: int = 20):
    """Mean |latent change| between consecutive output frames where the producing window changes
    (seams) vs elsewhere, for a ``num_frames`` clip cut into overlapping windows (all windows in
    one batch; per-frame conditioning, so a shared frame has the same inputs in both windows)."""
    config = load_config(config_path)
    unet_config = UNet3DConfig.from_dict(config.model.to_dict())
    module = UNet3DConditionModel(unet_config)
    params, latent = _random_params(module), config.data.resolution // 8
    scheduler = DDIMScheduler.from_config(config.scheduler.to_dict())
    keys = jax.random.split(jax.random.key(2), 4)
    timeline = {"masked": jax.random.normal(keys[0], (num_frames + window, latent, latent, 4)),
                "ref": jax.random.normal(keys[1], (num_frames + window, latent, latent, 4)),
                "audio": jax.random.normal(keys[2], (num_frames + window, 50, 384))}
    noise = initial_latents(keys[3], (1, window, latent, latent, 4))
    rows = []
    for k in overlaps:
        starts = window_starts(num_frames, window, k)
        take = lambda name, starts=starts: jnp.stack([timeline[name][s:s + window] for s in starts])
        n = len(starts)
        latents, _ = sample_windows(ModuleApply(module), params, jnp.broadcast_to(noise, (n,) + noise.shape[1:]),
                                    jnp.ones((n, window, latent, latent, 1)), take("masked"), take("ref"),
                                    take("audio"), scheduler=scheduler, num_steps=steps, guidance_scale=1.5,
                                    overlap=k)
        frames = jnp.concatenate([latents[j, new_frames(j, k)] for j in range(n)])[:num_frames]
        change = jnp.abs(jnp.diff(frames, axis=0)).mean(axis=(1, 2, 3))  # (num_frames - 1,)
        seams = [s + k - 1 for s in starts[1:] if s + k - 1 < num_frames - 1]
        inside = [i for i in range(num_frames - 1) if i not in seams]
        seam, rest = float(change[jnp.asarray(seams)].mean()), float(change[jnp.asarray(inside)].mean())
        rows.append((k, n, seam, rest))
        print(f"| {k} | {n} | {seam:.4f} | {rest:.4f} | {seam / rest:.2f} | {window / (window - k):.2f} |",
              flush=True)
    return rows


def time_sampling(config_path: str, frames: int, repeats: int, runs=RUNS) -> list[tuple[str, float, float, float]]:
    config = load_config(config_path)
    unet_config = UNet3DConfig.from_dict(config.model.to_dict())
    module = UNet3DConditionModel(unet_config)
    latent = config.data.resolution // 8
    params = _random_params(module)
    scheduler = DDIMScheduler.from_config(config.scheduler.to_dict())
    keys = jax.random.split(jax.random.key(1), 4)
    shape = (1, frames, latent, latent, 4)
    args = (initial_latents(keys[0], shape), jnp.ones(shape[:-1] + (1,)), jax.random.normal(keys[1], shape),
            jax.random.normal(keys[2], shape), jax.random.normal(keys[3], (1, frames, 50, 384)))
    apply = ModuleApply(module)
    rows = []
    for solver, steps, interval in runs:
        def run(solver=solver, steps=steps, interval=interval):
            return jax.block_until_ready(sample_chunk(apply, params, *args, scheduler=scheduler, num_steps=steps,
                                                      guidance_scale=1.5, solver=solver, deepcache_interval=interval))
        start = time.perf_counter()
        run()
        first = time.perf_counter() - start
        best = best_cpu = float("inf")
        for _ in range(repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            run()
            best = min(best, time.perf_counter() - start)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        label = f"{solver} {steps} steps" + (f", DeepCache {interval}" if interval else "")
        rows.append((label, first, best, best_cpu))
        print(f"  {label}: first call {first:.1f} s, best wall {best:.3f} s, best process CPU {best_cpu:.3f} s",
              flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/tiny.py", help="config for the timings")
    parser.add_argument("--flops_config", action="append", default=None,
                        help="config(s) for the FLOP counts (default: --config and configs/unet/stage2.py)")
    parser.add_argument("--resolution", type=int, default=256, help="pixel size for --flops_config stage2")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--flops_only", action="store_true")
    parser.add_argument("--runs", nargs="*", default=None,
                        help="subset of solver:steps:deepcache_interval runs (default: all; the first is the baseline)")
    parser.add_argument("--seams_only", action="store_true", help="only the overlap seam metric")
    parser.add_argument("--seam_frames", type=int, default=40)
    args = parser.parse_args()

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), JAX {jax.__version__}")
    if args.seams_only:
        print(f"seams: {args.config}, {args.seam_frames} frames, 16-frame windows, DDIM 20, CFG 1.5, float32")
        print("| overlap K | windows | seam change | inside change | ratio | UNet cost per frame |")
        seam_metrics(args.config, args.seam_frames, (0, 2, 4))
        return
    flops_configs = args.flops_config or [args.config, "configs/unet/stage2.py"]
    for path in flops_configs:
        config = load_config(path)
        unet_config = UNet3DConfig.from_dict(config.model.to_dict())
        resolution = config.data.resolution if path == args.config else args.resolution
        for dtype in (jnp.float32,):
            flops = unet_flops(unet_config, args.frames, resolution // 8, dtype)
            full, shallow = flops["full UNet"], flops["DeepCache shallow"]
            print(f"{path} @ {resolution} px, {args.frames} frames, {jnp.dtype(dtype).name}: full {full:.3f} "
                  f"GFLOP/frame, shallow {shallow:.3f} GFLOP/frame ({shallow / full:.1%} of full); DeepCache N "
                  + ", ".join(f"{n}: {(full + (n - 1) * shallow) / n / full:.1%}" for n in (2, 3, 5))
                  + " of the UNet FLOPs", flush=True)
    if args.flops_only:
        return
    print(f"timings: {args.config}, one window of {args.frames} frames, CFG 1.5 (UNet batch 2), float32")
    runs = [r for r in RUNS if args.runs is None or f"{r[0]}:{r[1]}:{r[2]}" in args.runs]
    rows = time_sampling(args.config, args.frames, args.repeats, runs)
    base, base_cpu = rows[0][2], rows[0][3]
    print("| run | first call (incl. compile) | best wall | wall ratio | best process CPU | CPU ratio |")
    for label, first, best, best_cpu in rows:
        print(f"| {label} | {first:.1f} s | {best:.3f} s | {best / base:.2f} | {best_cpu:.3f} s | "
              f"{best_cpu / base_cpu:.2f} |")


if __name__ == "__main__":
    main()
