"""Throughput of data_prep's stages: CPU seconds per step, minutes of video per hour per core.

    python bench/bench_data_prep.py --input_dir videos/ --output_dir /tmp/bench_dp [--models]

Runs ``python -m data_prep`` in-process (``--num_workers 0``, default options: no sync/quality
models) on the sources, then reads the per-step wall and CPU seconds from summary.json (CPU:
the worker's threads, plus ffmpeg's for decoding). ``--models`` also times the model filters
on the first kept clip with full-size RANDOM weights (speed only): the LSE pipeline (classic
SyncNet + S3FD, including writing the clip to a temporary mp4) and HyperIQA on 3 frames, each
run twice (the first includes compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    value = fn()
    return value, {"wall_s": round(time.perf_counter() - wall, 2), "cpu_s": round(time.process_time() - cpu, 2)}


def time_models(output_dir: str) -> dict:
    from data_prep import filters
    from lipsync_jax.data import records
    from lipsync_jax.eval.lse import load_lse_syncnet, load_s3fd
    from lipsync_jax.eval.quality import load_hyperiqa

    record = records.ClipDataSource(output_dir)[0]
    frames, audio = list(record["frames"]), records.audio_to_float(record["audio"])
    sync = filters.LseSyncScorer(syncnet=load_lse_syncnet(random_init=True), detector=load_s3fd(random_init=True))
    quality = filters.HyperIqaQualityScorer(scorer=load_hyperiqa(random_init=True))
    picked = records.decode_frames(frames, filters.quality_frame_indices(len(frames)))
    out = {"clip_seconds": len(frames) / 25.0}
    for attempt in ("first", "second"):
        out[f"lse_{attempt}"] = _timed(lambda: sync.score(frames, audio, 25.0))[1]
        out[f"hyperiqa_{attempt}"] = _timed(lambda: quality(picked))[1]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input_dir", required=True)
    parser.add_argument("--output_dir", required=True, help="scratch folder (emptied first)")
    parser.add_argument("--models", action="store_true", help="also time LSE and HyperIQA (random weights)")
    args = parser.parse_args()
    from data_prep.cli import main as prepare_main

    shutil.rmtree(args.output_dir, ignore_errors=True)
    prepare_main(["--input_dir", args.input_dir, "--output_dir", args.output_dir, "--num_workers", "0"])
    with open(os.path.join(args.output_dir, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    video_minutes = summary["source_frames"] / 25.0 / 60.0
    steps = summary["seconds_by_step"]
    cpu_total = sum(s["cpu"] for s in steps.values())
    report = {"source_minutes": round(video_minutes, 3), "kept_clips": summary["kept_clips"],
              "steps": {name: {**s, "video_minutes_per_core_hour": round(video_minutes * 3600 / s["cpu"], 1)
                               if s["cpu"] else None} for name, s in steps.items()},
              "cpu_total_s": round(cpu_total, 2),
              "video_minutes_per_core_hour": round(video_minutes * 3600 / cpu_total, 1)}
    if args.models:
        report["models"] = time_models(args.output_dir)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
