"""Batch throughput on Apache Beam's local runner with 1 vs 2 worker processes
(``python -m lipsync_jax.batch --runner beam``, lipsync_jax/serving/batch_beam.py).

    python bench/bench_batch_beam.py [--jobs 6] [--steps 20] [--seconds 0.64] [--workers 1,2]

A table of ``--jobs`` jobs (one 0.8 s 270x480 clip of demo1, lip-synced with seeds 1..N to the first
``--seconds`` of demo1/demo2 audio, tiny random config) runs once with the local runner to fill a
fresh compile cache, then, for each worker count W, with ``--force`` on
``--beam_args "--direct_num_workers=W --direct_running_mode=multi_processing"``: each worker process
starts Python, JAX and its own LipsyncService (programs loaded from the compile cache), then takes
jobs. Reported per W: wall seconds of the whole command, jobs per minute, the mean and sum of the
jobs' own seconds (from the result table), and the load average before the run.
"""

from __future__ import annotations

import argparse
import csv
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
    p.add_argument("--jobs", type=int, default=6)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seconds", type=float, default=0.64)
    p.add_argument("--workers", default="1,2")
    args = p.parse_args()

    from lipsync_jax.media import ffmpeg_exe

    assets = os.path.join(ROOT, "tests", "data", "assets")
    work = tempfile.mkdtemp(prefix="bench_batch_beam_")
    try:
        clip = os.path.join(work, "clip.mp4")
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", os.path.join(assets, "demo1_video.mp4"),
                        "-t", "0.8", "-vf", "scale=270:480", "-an", "-c:v", "libx264", "-preset", "ultrafast",
                        "-crf", "12", clip], check=True)
        jobs = os.path.join(work, "jobs.csv")
        with open(jobs, "w") as f:
            f.write("video,audio,output,seed\n")
            for n in range(1, args.jobs + 1):
                audio = os.path.join(assets, f"demo{1 + n % 2}_audio.wav")
                f.write(f"{clip},{audio},out/job{n}.mp4,{n}\n")
        base = [sys.executable, "-m", "lipsync_jax.batch", jobs, f"--config={args.config}", "--random_init",
                f"--steps={args.steps}", f"--max_seconds={args.seconds}", f"--compile_cache={work}/xla"]
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        warm = os.path.join(work, "warm.csv")
        with open(warm, "w") as f:
            f.write(f"video,audio,output\n{clip},{os.path.join(assets, 'demo1_audio.wav')},warm.mp4\n")
        subprocess.run([*base[:3], warm, *base[4:]], cwd=ROOT, env=env, check=True, capture_output=True)

        print(f"{args.jobs} jobs, tiny random config, {args.steps} DDIM steps, {args.seconds} s of audio each "
              f"(16 frames at 64 px), float32, CPU ({os.cpu_count()} cores)")
        print("| worker processes | wall s | jobs/min | mean job s | sum of job s | load before |")
        print("|---|---|---|---|---|---|")
        for workers in [int(w) for w in args.workers.split(",")]:
            load = os.getloadavg()[0]
            results = os.path.join(work, f"results_{workers}.csv")
            begin = time.perf_counter()
            subprocess.run([*base, "--runner=beam", "--force", f"--summary_csv={results}",
                            f"--beam_args=--direct_num_workers={workers} --direct_running_mode=multi_processing"],
                           cwd=ROOT, env=env, check=True, capture_output=True)
            wall = time.perf_counter() - begin
            with open(results) as f:
                rows = list(csv.DictReader(f))
            assert all(r["status"] == "done" for r in rows), rows
            seconds = [float(r["seconds"]) for r in rows]
            print(f"| {workers} | {wall:.1f} | {60 * len(rows) / wall:.2f} | {sum(seconds) / len(seconds):.1f} | "
                  f"{sum(seconds):.1f} | {load:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
