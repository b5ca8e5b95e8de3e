"""Live mode numbers (lipsync_jax.live): online audio windows vs offline, and latency.

    .venv/bin/python bench/bench_stream.py --config configs/unet/tiny.py --random_init --steps 2
    # GPU (stage 2, 256 px, fast sampler):
    python bench/bench_stream.py --config configs/unet/stage2.py --unet_checkpoint ... --solver dpmsolver++ --steps 10

1. Window error: demo1_audio.wav fed in 40 ms pieces (``stream_windows``: each chunk's windows
   computed as soon as it is ready) vs the offline windows, relative error per Whisper layer, for
   the whole clip and its first 2.8 s (the case tests/test_stream.py checks).
2. Latency: a live session on a clip of demo1_video (--avatar_seconds, 540x960) fed ``--seconds``
   of audio in 40 ms pieces AT REAL TIME (a feeder thread sleeps between pieces), frames taken
   paced at 25 fps: latency = frame handed out - arrival of the audio sample at its timestamp;
   first frame, steady state (after the first chunk) median / p95, jitter (std of the frame
   intervals minus 1/25 s), achieved fps, generation fps (16 frames / chunk wall time).
Prints a JSON summary and Markdown rows for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ASSETS = os.path.join(ROOT, "tests", "data", "assets")


def window_errors(models, seconds_list, piece):
    from lipsync_jax.pipeline import prepare_audio
    from lipsync_jax.live import stream_windows, window_error

    rows = {}
    for seconds in seconds_list:
        plan = prepare_audio(models, os.path.join(ASSETS, "demo1_audio.wav"), 25.0, seconds)
        begin = time.perf_counter()
        online = stream_windows(models.audio, plan.samples, piece=piece, chunk=models.num_frames)
        took = time.perf_counter() - begin
        offline = plan.windows(np.arange(plan.num_frames))
        rows[f"{len(plan.samples) / 16000:.1f}s"] = dict(
            frames=int(plan.num_frames), per_layer=[round(e, 4) for e in window_error(online, offline,
                                                                                     plan.embeddings.shape[1])],
            last_chunk_max_abs=float(np.abs(online[-(plan.num_frames % 16 or 16):]
                                            - offline[-(plan.num_frames % 16 or 16):]).max()),
            seconds=round(took, 1))
    return rows


def latency(models, args, clip):
    from lipsync_jax.audio import load_audio
    from lipsync_jax.live import LiveAvatar, StreamOptions, StreamSession, warm_up
    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling

    sampling = Sampling(steps=args.steps, solver=args.solver or "ddim", deepcache_interval=args.deepcache_interval)
    sampler = sampling.sampler_options()
    engine = LipsyncEngine(models, RunOptions(chunk_batch=1))
    begin = time.perf_counter()
    warm_up(engine, StreamOptions(sampling=sampling, seed=1))
    compile_s = time.perf_counter() - begin
    samples = load_audio(os.path.join(ASSETS, "demo1_audio.wav"))[:int(args.seconds * 16000)]
    pcm = (np.clip(samples, -1, 1) * 32767).astype(np.int16)
    with LiveAvatar.prepare(models, clip, face_backend="mediapipe") as avatar:
        session = StreamSession(engine, avatar, StreamOptions(sampling=sampling, seed=1, pace=True))

        def feeder():
            t0 = time.perf_counter()
            for k, start in enumerate(range(0, len(pcm), args.piece)):
                wait = t0 + start / 16000 - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                session.push(pcm[start:start + args.piece])
            session.finish()
        thread = threading.Thread(target=feeder)
        thread.start()
        frames = sum(1 for _ in session.frames())
        thread.join()
        metrics, status = session.metrics(), session.status()
        session.close()
    gen = session.chunk_seconds
    return dict(frames=frames, compile_seconds=round(compile_s, 1), steps=args.steps, sampler=sampler or "ddim",
                first_frame_latency=round(metrics["first_frame_latency"], 3),
                steady_latency_median=round(metrics["steady_latency_median"], 3),
                steady_latency_p95=round(metrics["steady_latency_p95"], 3), jitter=round(metrics["jitter"], 4),
                achieved_fps=round(metrics["achieved_fps"], 2), late_frames=status["late_frames"],
                generation_fps=round(models.num_frames / float(np.median(gen)), 2), chunk_seconds_median=round(
                    float(np.median(gen)), 3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "unet", "tiny.py"))
    p.add_argument("--unet_checkpoint", default="")
    p.add_argument("--vae_checkpoint", default="")
    p.add_argument("--whisper_checkpoint", default="")
    p.add_argument("--random_init", action="store_true")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--solver", default="ddim")
    p.add_argument("--deepcache_interval", type=int, default=0)
    p.add_argument("--seconds", type=float, default=6.0, help="audio streamed in the latency run")
    p.add_argument("--avatar_seconds", type=float, default=2.0)
    p.add_argument("--piece", type=int, default=640, help="samples per pushed piece (640 = 40 ms)")
    p.add_argument("--skip_windows", action="store_true")
    p.add_argument("--json", default="")
    args = p.parse_args()

    import jax
    import jax.numpy as jnp

    from lipsync_jax.config_utils import load_config
    from lipsync_jax.media import ffmpeg_exe
    from lipsync_jax.pipeline import build_models

    dtype = jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
    models = build_models(load_config(args.config), unet_checkpoint=args.unet_checkpoint,
                          vae_checkpoint=args.vae_checkpoint, whisper_checkpoint=args.whisper_checkpoint,
                          dtype=dtype, random_init=args.random_init, seed=0)
    out = dict(device=str(jax.devices()[0].device_kind), backend=jax.default_backend(),
               config=os.path.relpath(args.config, ROOT), resolution=models.resolution, dtype=jnp.dtype(dtype).name)
    if not args.skip_windows:
        out["window_error"] = window_errors(models, [None, 2.8], args.piece)
    with tempfile.TemporaryDirectory() as tmp:
        clip = os.path.join(tmp, "avatar.mp4")
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", os.path.join(ASSETS, "demo1_video.mp4"),
                        "-t", str(args.avatar_seconds), "-vf", "scale=540:960", "-an", "-c:v", "libx264", "-preset",
                        "ultrafast", "-crf", "12", clip], check=True)
        out["latency"] = latency(models, args, clip)
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    lat = out["latency"]
    print(f"| {out['device']} | {out['config']} {out['resolution']} px {out['dtype']} | {lat['sampler']} "
          f"{lat['steps']} steps | {lat['frames']} | {lat['first_frame_latency']} | {lat['steady_latency_median']} / "
          f"{lat['steady_latency_p95']} | {lat['jitter']} | {lat['achieved_fps']} | {lat['generation_fps']} |")


if __name__ == "__main__":
    main()
