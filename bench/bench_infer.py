"""Benchmark: the streaming inference engine end to end, with random weights.

    python bench/bench_infer.py                                   # CPU: tiny config (64 px faces)
    python bench/bench_infer.py --config configs/unet/stage2.py --chunk_batch 2    # GPU, 256 px
    python bench/bench_infer.py --config configs/unet/stage2_512.py
    python bench/bench_infer.py --ttff --rss                      # + cold/warm start, memory vs audio length
    python bench/bench_infer.py --attention_check                 # fused vs XLA attention (GPU/TPU)

Runs ``LipsyncEngine.run`` (video in, H.264 + AAC out) on the demo clip: a warm-up job (compiles),
then ``--seconds`` of audio. Reports: end-to-end frames/s; the device program alone (the same
compiled program on fixed inputs, waited for: seconds per call of ``chunk_batch x devices``
chunks) and the device-busy fraction = calls x that time / end-to-end wall time; XLA's
cost-analysis FLOPs per call and the achieved TFLOP/s; per-stage seconds (stages run in
parallel threads, so they overlap and do not add up to the wall time).
``--ttff``: time to first frame of a fresh process (``infer.py``-like child: model build +
engine), with an empty compile cache (cold) and again with it filled (warm).
``--rss``: peak RSS of a child process for ``--seconds`` and 4x as much audio (looped video).
``--seams``: overlapping windows through the engine: for overlap K = 0, 2, 4 (one
job each, ``--seconds`` of audio), the mean absolute change (0..255) between consecutive
generated faces (aligned crops before paste-back, in output order) where the writing window
changes vs inside a window, and the UNet cost 16 / (16 - K) per output frame.
``--json FILE`` appends one JSON line with every number (bench/gpu_suite.sh collects them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ASSETS = os.path.join(ROOT, "tests", "data", "assets")
sys.path.insert(0, ROOT)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/unet/tiny.py")
    parser.add_argument("--override", action="append", default=[], help="config override, e.g. data.resolution=512")
    parser.add_argument("--video", default=os.path.join(ASSETS, "demo1_video.mp4"))
    parser.add_argument("--audio", default=os.path.join(ASSETS, "demo1_audio.wav"))
    parser.add_argument("--seconds", type=float, default=3.84, help="audio seconds to process (96 frames)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=1.5)
    parser.add_argument("--chunk_batch", type=int, default=None, help="chunks per device per call")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                        help="default: bfloat16 on GPU/TPU, float32 on CPU")
    parser.add_argument("--preset", default="medium", help="x264 preset of the output encode")
    parser.add_argument("--compile_cache", default=None, help="persistent cache folder (default: a temp folder)")
    parser.add_argument("--ttff", action="store_true", help="time to first frame, cold and warm compile cache")
    parser.add_argument("--rss", action="store_true", help="peak RSS for --seconds and 4x --seconds of audio")
    parser.add_argument("--attention_check", action="store_true", help="fused vs XLA attention at UNet shapes")
    parser.add_argument("--seams", action="store_true", help="seam metric through the engine for overlap 0, 2, 4")
    parser.add_argument("--json", default=None, help="append the results as one JSON line to this file")
    parser.add_argument("--child", default=None, choices=["ttff", "rss"], help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build(args):
    import jax
    import jax.numpy as jnp

    from lipsync_jax.config_utils import load_config
    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, build_models

    dtype = jnp.dtype(args.dtype or ("float32" if jax.default_backend() == "cpu" else "bfloat16"))
    models = build_models(load_config(args.config, args.override), dtype=dtype, random_init=True, seed=0)
    return models, LipsyncEngine(models, RunOptions(chunk_batch=args.chunk_batch)), dtype


def sampling(args, overlap: int = 0):
    from lipsync_jax.pipeline import Sampling

    return Sampling(steps=args.steps, guidance=args.guidance, overlap=overlap)


def job(args, output, seconds, audio=None):
    from lipsync_jax.pipeline import SyncJob

    return SyncJob(args.video, audio or args.audio, output, max_seconds=seconds, preset=args.preset)


def child(args) -> None:
    """One fresh process: build + one job; prints a JSON line (ttff from process start, peak RSS)."""
    from lipsync_jax.pipeline import enable_compile_cache

    enable_compile_cache(args.compile_cache)
    models, engine, _ = build(args)
    with tempfile.TemporaryDirectory() as tmp:
        result = engine.run(job(args, os.path.join(tmp, "out.mp4"), args.seconds), sampling(args))
        run_began = time.perf_counter() - result.seconds
    ttff = None if result.time_to_first_frame is None else run_began + result.time_to_first_frame - START
    print(json.dumps({"ttff_process": ttff, "ttff_engine": result.time_to_first_frame, "frames": result.num_frames,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def run_child(args, mode: str, cache: str, seconds: float, audio: str | None = None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--config", args.config,
           "--video", args.video, "--audio", audio or args.audio, "--seconds", str(seconds), "--steps",
           str(args.steps), "--guidance", str(args.guidance), "--preset", args.preset, "--compile_cache", cache]
    cmd += [f"--override={o}" for o in args.override]
    cmd += ["--chunk_batch", str(args.chunk_batch)] if args.chunk_batch else []
    cmd += ["--dtype", args.dtype] if args.dtype else []
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def attention_check() -> dict:
    """The platform's fused attention ("auto": cuDNN flash attention on GPU, the Pallas splash kernel
    on TPU) vs XLA at the UNet's attention shapes (bf16): max error and time."""
    import jax
    import jax.numpy as jnp

    from lipsync_jax.models.attention import dot_product_attention, fused_supported, resolve_backend

    rows = {}
    shapes = {"spatial_256_d40": (2, 1024, 8, 40), "spatial_512_d40": (2, 4096, 8, 40),
              "cross_audio_d80": (2, 256, 8, 80), "motion_frames_d40": (2048, 16, 8, 40)}
    for name, shape in shapes.items():
        keys = jax.random.split(jax.random.key(0), 3)
        q, k, v = (jax.random.normal(key, shape, jnp.bfloat16) for key in keys)
        ref = dot_product_attention(q, k, v, backend="naive").astype(jnp.float32)
        row = {}
        fused = resolve_backend("auto", jax.default_backend(), q.dtype)
        for backend in ("xla", "cudnn", "pallas"):
            if backend != "xla" and not (backend == fused and fused_supported(backend, q.shape, k.shape, q.dtype)):
                row[backend] = "n/a on " + jax.default_backend()
                continue
            fn = jax.jit(lambda q, k, v, b=backend: dot_product_attention(q, k, v, backend=b))
            out = fn(q, k, v).block_until_ready()
            begin = time.perf_counter()
            for _ in range(10):
                out = fn(q, k, v)
            out.block_until_ready()
            err = float(jnp.abs(out.astype(jnp.float32) - ref).max())
            row[backend] = {"max_abs_err": err, "ms": (time.perf_counter() - begin) * 100}
        rows[name] = row
    return rows


def device_alone(engine, program, repeats: int = 3) -> float:
    """Seconds per call of the compiled program on fixed inputs (waited for)."""
    import numpy as np

    from lipsync_jax.pipeline.program import start_noise

    shapes = program.input_shapes()
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, shapes["faces"][0], dtype=np.uint8)
    audio = rng.standard_normal(shapes["audio"][0]).astype(np.float32)
    indices = np.arange(program.batch, dtype=np.int32)
    placed = program.put_batch(faces, audio, indices) + program.put_job(*start_noise(engine.models, 0))
    program(engine.unet_params, engine.vae_params, *placed).block_until_ready()
    begin = time.perf_counter()
    for _ in range(repeats):
        program(engine.unet_params, engine.vae_params, *placed).block_until_ready()
    return (time.perf_counter() - begin) / repeats


def seams(args, tmp: str, overlaps=(0, 2, 4)) -> list[dict]:
    """Seam vs inside change of the generated faces through ``LipsyncEngine.run`` (see the doc)."""
    import numpy as np

    from lipsync_jax.pipeline import JobHooks, SyncJob

    models, engine, _ = build(args)
    rows = []
    for k in overlaps:
        chunks = {}
        record = lambda index, start, faces, chunks=chunks: chunks.__setitem__(start, np.array(faces))  # noqa: E731
        begin = time.perf_counter()
        engine.run(SyncJob(args.video, args.audio, os.path.join(tmp, f"seams{k}.mp4"), max_seconds=args.seconds,
                           preset="ultrafast"), sampling(args, k), hooks=JobHooks(on_chunk=record))
        seconds = time.perf_counter() - begin
        starts = sorted(chunks)
        faces = (np.concatenate([chunks[s] for s in starts]) + 1.0) * 127.5  # (n, R, R, 3) in output order
        change = np.abs(np.diff(faces, axis=0)).mean(axis=(1, 2, 3))  # change[i]: frame i -> i + 1
        seam_pairs = [s - 1 for s in starts[1:]]
        inside = np.setdiff1d(np.arange(len(change)), seam_pairs)
        row = dict(overlap=k, windows=len(starts), frames=len(faces), seam=float(change[seam_pairs].mean()),
                   inside=float(change[inside].mean()), cost=16 / (16 - k), seconds=seconds)
        rows.append(row)
        print(f"| {k} | {row['windows']} | {row['seam']:.3f} | {row['inside']:.3f} | "
              f"{row['seam'] / row['inside']:.2f} | {row['cost']:.2f} | {seconds:.1f} |", flush=True)
    return rows


def main() -> None:
    args = parse_args()
    if args.child:
        return child(args)
    if args.seams:
        print(f"seams through the engine: {args.config}, {args.seconds:g} s of {os.path.basename(args.audio)}, "
              f"{args.steps} steps, guidance {args.guidance:g}, chunk_batch {args.chunk_batch or 'default'}")
        print("| overlap K | windows | seam change | inside change | seam / inside | UNet cost per frame | "
              "job seconds |\n|---|---|---|---|---|---|---|")
        with tempfile.TemporaryDirectory() as tmp:
            from lipsync_jax.pipeline import enable_compile_cache

            enable_compile_cache(args.compile_cache or os.path.join(tmp, "xla_cache"))
            rows = seams(args, tmp)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps({"config": args.config, "seams": rows}) + "\n")
        return
    import jax

    from lipsync_jax.pipeline import StageTimer, enable_compile_cache

    results: dict = {"config": args.config, "override": args.override, "steps": args.steps,
                     "guidance": args.guidance, "seconds": args.seconds}
    if args.attention_check:
        results["attention"] = attention_check()
        print("attention (bf16, max |err| vs float32 reference, ms per call):")
        for name, row in results["attention"].items():
            print(f"  {name}: {row}")
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.compile_cache or os.path.join(tmp, "xla_cache")
        enable_compile_cache(cache)
        begin = time.perf_counter()
        models, engine, dtype = build(args)
        f, res = models.num_frames, models.resolution
        device = jax.devices()[0]
        results.update(device=f"{device.platform} {device.device_kind}", devices=engine.num_devices,
                       dtype=dtype.name, chunk_batch=engine.chunk_batch, resolution=res,
                       host=f"{platform.machine()} {os.cpu_count()} cpus", jax=jax.__version__)
        print(f"device: {results['device']} (x{engine.num_devices}), host {results['host']}, jax {jax.__version__}")
        print(f"config: {args.config} {' '.join(args.override)}; dtype {dtype.name}; steps {args.steps}; "
              f"guidance {args.guidance}; chunk_batch {engine.chunk_batch} per device ({engine.batch} chunks "
              f"of {f} frames per call); faces {res}x{res}; latents ({f}, {res // 8}, {res // 8}, 4)")
        print(f"random weights built in {time.perf_counter() - begin:.1f} s")

        warm = engine.run(job(args, os.path.join(tmp, "warm.mp4"), f * engine.batch / 25.0), sampling(args))
        program = engine.program(sampling(args))
        print(f"warm-up job (compiles): {warm.seconds:.1f} s, program compile {program.compile_seconds:.1f} s")
        timer = StageTimer()
        result = engine.run(job(args, os.path.join(tmp, "out.mp4"), args.seconds), sampling(args), timer=timer)
        wall, frames = result.seconds, result.num_frames
        per_call = device_alone(engine, program)
        device_seconds = per_call * result.chunk_batches
        flops = program.flops()
        results.update(frames=frames, wall_s=wall, fps=frames / wall, ttff_s=result.time_to_first_frame,
                       calls=result.chunk_batches, device_s_per_call=per_call, device_s=device_seconds,
                       device_busy=device_seconds / wall, device_alone_fps=frames / device_seconds,
                       e2e_over_device=wall / device_seconds, flops_per_call=flops,
                       tflops_device=flops / per_call / 1e12 if flops else None,
                       tflops_e2e=flops * result.chunk_batches / wall / 1e12 if flops else None,
                       stages={n: s for n, _, s, _ in timer.rows()})
        print(f"\n{frames} output frames in {wall:.2f} s: {frames / wall:.2f} frames/s end to end "
              f"(time to first frame {result.time_to_first_frame:.2f} s in a warm engine)")
        print(f"device program alone: {per_call:.3f} s per call x {result.chunk_batches} calls = "
              f"{device_seconds:.2f} s ({frames / device_seconds:.2f} frames/s); "
              f"device busy {device_seconds / wall:.0%}; end to end / device = {wall / device_seconds:.2f}")
        if flops:
            print(f"XLA cost analysis: {flops / 1e9:.1f} GFLOP per call ({flops / 1e9 / (engine.batch * f):.1f} per "
                  f"frame); achieved {flops / per_call / 1e12:.2f} TFLOP/s on the device alone, "
                  f"{flops * result.chunk_batches / wall / 1e12:.2f} end to end")
        print("\n| stage (threads overlap) | frames | seconds |\n|---|---|---|")
        for name, count, seconds, _ in timer.rows():
            print(f"| {name} | {count or '-'} | {seconds:.2f} |")

        if args.ttff:
            fresh = os.path.join(tmp, "ttff_cache")
            cold = run_child(args, "ttff", fresh, f / 25.0)
            warm_start = run_child(args, "ttff", fresh, f / 25.0)
            results.update(ttff_cold_s=cold["ttff_process"], ttff_warm_s=warm_start["ttff_process"])
            print(f"\ntime to first frame from process start: cold cache {cold['ttff_process']:.1f} s, warm cache "
                  f"{warm_start['ttff_process']:.1f} s ({warm_start['ttff_process'] / cold['ttff_process']:.0%})")
        if args.rss:
            long_audio = os.path.join(ASSETS, "demo2_audio.wav")  # 19.84 s
            short = run_child(args, "rss", cache, args.seconds, long_audio)
            longer = run_child(args, "rss", cache, 4 * args.seconds, long_audio)
            results.update(rss_mb=short["peak_rss_mb"], rss_4x_mb=longer["peak_rss_mb"])
            print(f"peak RSS: {args.seconds:g} s of audio {short['peak_rss_mb']:.0f} MB, {4 * args.seconds:g} s "
                  f"{longer['peak_rss_mb']:.0f} MB ({longer['peak_rss_mb'] / short['peak_rss_mb'] - 1:+.1%})")
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(results) + "\n")
    sys.stdout.flush()


START = time.perf_counter()

if __name__ == "__main__":
    main()
