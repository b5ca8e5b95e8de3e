"""How much a cached avatar saves: the same video lip-synced to new audio, without and with the
avatar cache (lipsync_jax/pipeline/avatar_cache.py), on one LipsyncService (models and programs
compiled once, before anything is timed).

    python bench/bench_avatar_cache.py [--config configs/unet/tiny.py] [--random_init] \\
        [--video tests/data/assets/demo1_video.mp4] [--seconds 2.0] [--steps 20] [--repeats 2]

Rows: "no cache" (decode + landmarks + alignment + VAE encodes in the device program), "first
run, cache on" (the same, plus storing the track and encoding its VAE moments), "cached" (the
face track replayed, latents sampled from the stored moments: no landmarks, no warps, no VAE
encoder). Times are wall seconds of ``service.run`` (best of ``--repeats``), compiles excluded
by a warm-up on a short clip of the same video; the stage columns are the engine's per-stage
seconds (its threads overlap, so they do not add up to the total).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default=os.path.join(ROOT, "configs", "unet", "tiny.py"))
    p.add_argument("--random_init", action="store_true", default=True)
    p.add_argument("--video", default=os.path.join(ROOT, "tests", "data", "assets", "demo1_video.mp4"))
    p.add_argument("--audio", default=os.path.join(ROOT, "tests", "data", "assets", "demo2_audio.wav"))
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import jax

    from lipsync_jax.media import ffmpeg_exe, probe_video
    from lipsync_jax.pipeline import Request, Sampling, StageTimer, SyncJob
    from lipsync_jax.serving.service import LipsyncService

    work = tempfile.mkdtemp(prefix="bench_avatar_")
    try:
        warm = os.path.join(work, "warm.mp4")  # same size as the video: the same programs
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", args.video, "-t", "0.7", "-an", "-c:v",
                        "libx264", "-preset", "ultrafast", warm], check=True)
        service = LipsyncService.from_config(args.config, random_init=args.random_init,
                                             avatar_cache=os.path.join(work, "avatars"))
        cache = service.avatar_cache

        def run(video, name, max_seconds, use_cache=True):
            service.avatar_cache = cache if use_cache else None
            timer = StageTimer()
            begin = time.perf_counter()
            request = Request(SyncJob(video, args.audio, os.path.join(work, name), max_seconds=max_seconds),
                              Sampling(steps=args.steps))
            result = service.run(request, timer=timer)
            return time.perf_counter() - begin, result, timer

        for i, use in enumerate((False, True, True)):  # compile the encoding program, the moments one, the encoder
            run(warm, f"warm{i}.mp4", 0.64, use)
        compiles = service.monitor.snapshot()["compiles"]
        rows = {"no cache": [], "first run, cache on": [], "cached": []}
        for r in range(args.repeats):
            rows["no cache"].append(run(args.video, f"plain{r}.mp4", args.seconds, False))
            for name in os.listdir(cache.root):
                os.remove(os.path.join(cache.root, name))
            rows["first run, cache on"].append(run(args.video, f"first{r}.mp4", args.seconds))
            rows["cached"].append(run(args.video, f"cached{r}.mp4", args.seconds))
        info = probe_video(args.video)
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); "
              f"config {os.path.basename(args.config)} "
              f"({service.models.resolution} px faces, {service.models.dtype}); video {info.width}x{info.height}; "
              f"{args.seconds:g} s of audio ({rows['cached'][0][1].num_frames} frames); {args.steps} steps; "
              f"compiles during the timed runs: {service.monitor.snapshot()['compiles'] - compiles}")
        base = min(r[0] for r in rows["no cache"])
        stages = ("setup", "face_alignment", "video_decode", "device_wait", "restore", "video_encode")
        print("| run | avatar cache | seconds (best) | frames/s | vs no cache | " + " | ".join(stages) + " |")
        print("|---|---|---|---|---|" + "---|" * len(stages))
        for name, results in rows.items():
            best, result, timer = min(results, key=lambda x: x[0])
            cells = " | ".join(f"{timer.seconds.get(s, 0.0):.1f}" for s in stages)
            print(f"| {name} | {result.avatar} | {best:.2f} | {result.num_frames / best:.2f} | {base / best:.2f}x | "
                  f"{cells} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
