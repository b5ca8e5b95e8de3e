"""Device-memory footprint of the stage-2 chunk program.

For each config (default: configs/unet/stage2.py at 256 px, stage2_512.py at 512 px) and chunk
batch (default 1 and 2, the GPU default), in ``--dtype`` (bf16): XLA's compiled memory analysis
of the actual chunk program (VAE encode, 20-step DDIM scan with CFG, VAE decode, paste-back),
compiled from ABSTRACT shapes on the default device (runs on CPU, no weights), with the
compile time; with ``--measure`` (a GPU) also a real call with random weights and the device's
``peak_bytes_in_use``.

    python bench/bench_memory.py [--configs configs/unet/stage2.py,...] [--chunk_batches 1,2]
        [--vae_frames 16] [--attention auto|chunked|chunked:256] [--estimate native_bf16|raw]
        [--max_vram 8,12] [--plan_for TARGET] [--measure] [--json out.jsonl]

``--max_vram GB[,GB...]`` (one per config, or one for all): instead of the listed settings, the
row of what the engine's budget picker (``plan_memory``, as ``infer.py --max_vram``) chooses, its
candidates printed as it compiles them.

``--plan_for TARGET`` (``h100``, ``rtx4060-8g``, ``tpu:v5e-1``, ...: lipsync_jax/accelerators):
the picker's row for ONE chip of that accelerator, as ``infer.py --plan_for``: footprints from
XLA's compiler for it (``pip install -r requirements-aot.txt``), else the CPU-modelled estimate
(the plan line says which); ``--max_vram`` defaults to its memory.

The "engine estimate" column is the program + Whisper's compiled footprint (weights and its
working set at 8 windows per call, unless on the host) + two queued chunk batches.

On CPU the default estimate (``--estimate native_bf16``) MODELS a device with native bfloat16:
the CPU backend upcasts bf16 dots/convolutions to float32 and by default hoists the float32 copies
of all the UNet weights out of the sampling loop; the estimate compiles with XLA options that keep
those copies next to their dots (pipeline/memory.py ``CPU_NATIVE_BF16_OPTIONS``). ``--estimate
raw`` is the CPU backend's default compile. On a GPU both are the plain compile.

Estimates are cached in the compile cache folder's memory_estimates.json (``--cache_dir``);
``--fresh`` recompiles (to time the compile).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GB = 1024 ** 3


def measure_peak(config, dtype, chunk_batch: int, vae_frames: int | None, steps: int, guidance: float,
                 attention: str = "auto") -> dict:
    """One real call of the chunk program with random weights on the default device: peak bytes."""
    import jax
    import numpy as np

    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling, build_models
    from lipsync_jax.pipeline.memory import with_attention_backend

    device = jax.local_devices()[0]
    models = with_attention_backend(build_models(config, dtype=dtype, random_init=True, seed=0), attention)
    engine = LipsyncEngine(models, RunOptions(chunk_batch=chunk_batch, devices=1, vae_frames=vae_frames))
    sampling = Sampling(steps=steps, guidance=guidance)
    program = engine.program(sampling)
    shapes = program.input_shapes()
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, shapes["faces"][0], dtype=np.uint8)
    audio = rng.standard_normal(shapes["audio"][0]).astype(np.float32)
    indices = np.arange(program.batch, dtype=np.int32)
    out = engine.generate(faces, audio, indices, seed=1, sampling=sampling)
    out.block_until_ready()
    stats = device.memory_stats() or {}
    result = {"peak_bytes": stats.get("peak_bytes_in_use"), "bytes_limit": stats.get("bytes_limit")}
    del out, engine, models
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="configs/unet/stage2.py,configs/unet/stage2_512.py")
    parser.add_argument("--chunk_batches", default="1,2")
    parser.add_argument("--vae_frames", type=int, default=None, help="frames per VAE step (default: 16, the chunk)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--attention", default="auto", help="UNet attention backend: auto, xla, chunked, chunked:N")
    parser.add_argument("--estimate", default="native_bf16", choices=("native_bf16", "raw"),
                        help="on CPU: model a native-bf16 device (default) or the CPU backend's own compile")
    parser.add_argument("--max_vram", default=None, help="GB per config (comma list) or one for all: the picker's row")
    parser.add_argument("--plan_for", default=None, help="plan for this accelerator instead of the local device")
    parser.add_argument("--measure", action="store_true", help="also run it (random weights) and read the peak")
    parser.add_argument("--cache_dir", default=None, help="memory_estimates.json folder (default: compile cache)")
    parser.add_argument("--fresh", action="store_true", help="ignore cached estimates (time the compile)")
    parser.add_argument("--json", default=None, help="append one JSON line per row here")
    args = parser.parse_args()
    if args.plan_for:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")  # a target's compiler needs no device; no GPU/TPU probes
        if args.measure:
            parser.error("--measure runs on the local device: not with --plan_for")
    if args.measure:  # the measured peak must not be the preallocated pool
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax
    import jax.numpy as jnp

    from lipsync_jax.accelerators import GIB, UnknownTargetError, get_target
    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline.memory import estimate_compiler_options, local_footprints, plan_memory, queued_bytes
    from lipsync_jax.pipeline.models import abstract_models
    from lipsync_jax.pipeline.placement import default_chunk_batch

    device = jax.local_devices()[0]
    kind = f"{device.platform}:{getattr(device, 'device_kind', '')}"
    dtype = jnp.dtype(args.dtype)
    source = local_footprints(device, cache_dir=args.cache_dir, estimate=args.estimate, use_cache=not args.fresh)
    if args.plan_for:
        from lipsync_jax.aot import target_footprints

        jax.config.update("jax_enable_compilation_cache", False)  # compile-only programs are not for the disk
        try:
            target = get_target(args.plan_for)
        except UnknownTargetError as error:
            parser.error(f"--plan_for: {error}")
        source = target_footprints(target, cache_dir=args.cache_dir, estimate=args.estimate)
        kind = f"{target.name} ({target.device}), planned on {kind}"
        if not args.max_vram:
            args.max_vram = f"{target.memory_bytes / GIB:g}"
    print(f"device {kind}, dtype {dtype.name}, {args.steps} steps, CFG {args.guidance}", flush=True)
    print(f"footprints: {source.label}", flush=True)
    if not args.plan_for and estimate_compiler_options(device.platform, args.estimate):
        print("estimate: MODELLED native-bf16 device: CPU compile with XLA options "
              f"{estimate_compiler_options(device.platform, args.estimate)} (the float32 upcasts of the bf16 weights "
              "stay next to their dots instead of living through the whole sampling loop); --estimate raw: the CPU "
              "backend's own compile", flush=True)
    elif not args.plan_for:
        print(f"estimate: the {device.platform} backend's own compile (raw)", flush=True)
    print("| config | res | chunk_batch | VAE frames | attention | Whisper | arguments GB | outputs GB | "
          "temporaries GB | program total GB | Whisper GB | engine estimate GB | estimate | compile s | "
          "measured peak GB | device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|", flush=True)
    paths = args.configs.split(",")
    budgets = [None] * len(paths)
    if args.max_vram:
        budgets = [float(x) for x in args.max_vram.split(",")]
        budgets = budgets * len(paths) if len(budgets) == 1 else budgets
        if len(budgets) != len(paths):
            parser.error(f"--max_vram: {len(budgets)} budgets for {len(paths)} configs")
    kw = dict(num_steps=args.steps, guidance_scale=args.guidance)
    for path, budget in zip(paths, budgets):
        config = load_config(path)
        models = abstract_models(config, dtype)
        whisper = source.whisper(models, models.audio.max_batch).total_bytes
        if budget is not None:  # what infer.py --max_vram picks (largest chunk batch tried: the largest listed)
            largest = max(int(x) for x in args.chunk_batches.split(","))
            if args.plan_for and args.chunk_batches == parser.get_default("chunk_batches"):
                largest = default_chunk_batch(target.platform)  # as infer.py --plan_for
            plan = plan_memory(models, budget, chunk_batch=largest, log=lambda line: print("  " + line, flush=True),
                               footprints=source, **kw)
            print(f"  --max_vram {budget:g}: {plan.describe()}", flush=True)
            settings = [(plan.chunk_batch, plan.vae_frames, plan.attention_backend, plan.whisper_on_host)]
        else:
            settings = [(int(cb), args.vae_frames or models.num_frames, args.attention, False)
                        for cb in args.chunk_batches.split(",")]
        for cb, frames, backend, on_host in settings:
            fp = source.program(models, chunk_batch=cb, vae_frames=frames, attention_backend=backend,
                                sampler_options=None, **kw)
            whole = fp.total_bytes + (0 if on_host else whisper) + queued_bytes(models, cb, 2)
            peak = measure_peak(config, dtype, cb, frames, args.steps, args.guidance, backend) if args.measure else {}
            peak_gb = f"{peak['peak_bytes'] / GB:.2f}" if peak.get("peak_bytes") else "-"
            compile_s = f"{fp.compile_seconds:.0f}" if fp.compile_seconds else "cached"
            row = {"config": os.path.basename(path), "resolution": models.resolution, "chunk_batch": cb,
                   "vae_frames": frames, "attention": backend, "whisper_on_host": on_host, "dtype": dtype.name,
                   "device": kind, "max_vram_gb": budget,
                   **fp.as_dict(), "total_bytes": fp.total_bytes, "whisper_bytes": whisper,
                   "engine_estimate_bytes": whole, "compile_seconds": fp.compile_seconds, "plan_for": args.plan_for,
                   "footprints": source.label, **peak}
            print(f"| {row['config']} | {models.resolution} | {cb} | {frames} | {backend} | "
                  f"{'host' if on_host else 'device'} | {fp.argument_bytes / GB:.2f} | "
                  f"{fp.output_bytes / GB:.3f} | {fp.temp_bytes / GB:.2f} | {fp.total_bytes / GB:.2f} | "
                  f"{whisper / GB:.2f} | {whole / GB:.2f} | {fp.estimate} | {compile_s} | {peak_gb} | {kind} |",
                  flush=True)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - t0:.0f} s")
