"""``python -m data_prep``: raw talking-head videos -> an ArrayRecord/tfds clip dataset.

    python -m data_prep --input_dir videos/ --output_dir data/clips --num_workers 8 \
        [--file_list list.txt] [--resolution 256] [--syncnet_ckpt converted/syncnet]

Resumable: each source's clips go to ``output_dir/_work/<source key>/clips.array_record`` and a
``result.json`` marker written after them; a rerun skips every source whose marker matches the
file (size, mtime) and the options, and retries failed ones only with ``--retry_failed``.
At the end all finished sources (of this input list) are packed into the dataset
``output_dir/<name>/<version>/`` (see ``lipsync_jax.data.records``) and a summary (kept clips,
dropped clips and skipped sources by reason) is logged and written to
``output_dir/summary.json``. One bad file is logged and skipped; it never stops the run.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
import time
from typing import Any, Iterator, Sequence

from data_prep.clips import PrepOptions, SourceError, process_source, source_key

VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".flv", ".mpg", ".mpeg")
WORK_DIR = "_work"
MARKER = "result.json"
CLIPS_FILE = "clips.array_record"

log = logging.getLogger("data_prep")


class PrepError(Exception):
    """Bad command-line input (no sources, unreadable list, ...)."""


# ---- inputs ---------------------------------------------------------------------------------

def list_sources(input_dir: str | None, file_list: str | None) -> list[str]:
    """Absolute, de-duplicated, sorted video paths from a folder (recursive) and/or a list file
    (one path per line, relative paths are relative to the list file, # comments allowed)."""
    paths: list[str] = []
    if input_dir:
        if not os.path.isdir(input_dir):
            raise PrepError(f"--input_dir {input_dir}: not a folder")
        for root, _, files in os.walk(input_dir):
            paths += [os.path.join(root, f) for f in files if f.lower().endswith(VIDEO_EXTENSIONS)]
    if file_list:
        try:
            with open(file_list, encoding="utf-8-sig") as f:
                lines = [line.strip() for line in f]
        except OSError as e:
            raise PrepError(f"--file_list {file_list}: {e.strerror}") from None
        base = os.path.dirname(os.path.abspath(file_list))
        paths += [line if os.path.isabs(line) else os.path.join(base, line)
                  for line in lines if line and not line.startswith("#")]
    if not input_dir and not file_list:
        raise PrepError("give --input_dir and/or --file_list")
    unique = sorted({os.path.abspath(p) for p in paths})
    if not unique:
        raise PrepError(f"no videos found (extensions {', '.join(VIDEO_EXTENSIONS)})")
    return unique


def _fingerprint(path: str) -> dict[str, Any]:
    try:
        stat = os.stat(path)
        return {"size": stat.st_size, "mtime": int(stat.st_mtime)}
    except OSError:
        return {"size": None, "mtime": None}


# ---- one source (runs in a worker process) ---------------------------------------------------

_WORKER_TOOLS: dict[tuple, tuple[Any, Any]] = {}  # per process: landmarker and SyncNet, built once per setting


def _worker_tools(options: PrepOptions) -> tuple[Any, Any]:
    key = (options.face_backend, options.syncnet_ckpt, options.sync_search_offset)
    if key not in _WORKER_TOOLS:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's native INFO/WARNING chatter
        from data_prep.sync_filter import scorer_or_none
        from lipsync_jax.face import make_landmarker

        for landmarker, _ in _WORKER_TOOLS.values():
            if hasattr(landmarker, "close"):
                landmarker.close()
        _WORKER_TOOLS.clear()
        _WORKER_TOOLS[key] = (make_landmarker(options.face_backend),
                              scorer_or_none(options.syncnet_ckpt, search_offset=options.sync_search_offset))
    return _WORKER_TOOLS[key]


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def run_source(path: str, work_dir: str, options: PrepOptions) -> dict[str, Any]:
    """Process one source and write its clips + marker; never raises for a bad source."""
    from lipsync_jax.data.records import features, serialize, write_records

    key = source_key(path)
    out = os.path.join(work_dir, key)
    os.makedirs(out, exist_ok=True)
    marker = {"source": path, "key": key, "file": _fingerprint(path), "options": dataclasses.asdict(options)}
    started = time.time()
    try:
        landmarker, scorer = _worker_tools(options)
        result = process_source(path, options, landmarker=landmarker, scorer=scorer)
        feature_dict = features()
        count = write_records(os.path.join(out, CLIPS_FILE), (serialize(c, feature_dict) for c in result.clips))
        marker.update(status="done", num_clips=count, num_frames=result.num_frames, num_shots=result.num_shots,
                      clip_seconds=sum(len(c.frames) for c in result.clips) / options.fps,
                      clips=[{"clip_id": c.clip_id, "start_time": c.start_time, "num_frames": len(c.frames),
                              "sync_score": c.sync_score, "sync_offset": c.sync_offset} for c in result.clips],
                      drops=[dataclasses.asdict(d) for d in result.drops])
    except SourceError as e:
        marker.update(status="skipped", reason=e.reason, message=str(e))
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the run
        marker.update(status="failed", reason=f"error:{type(e).__name__}", message=f"{path}: {e}")
    marker["seconds"] = round(time.time() - started, 2)
    _write_json(os.path.join(out, MARKER), marker)
    return marker


def read_marker(work_dir: str, path: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(work_dir, source_key(path), MARKER), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def is_finished(marker: dict[str, Any] | None, path: str, options: PrepOptions, retry_failed: bool) -> bool:
    if marker is None or marker.get("file") != _fingerprint(path):
        return False
    if marker.get("options") != json.loads(json.dumps(dataclasses.asdict(options))):
        return False
    return not (retry_failed and marker.get("status") == "failed")


# ---- the run --------------------------------------------------------------------------------

def _log_marker(marker: dict[str, Any]) -> None:
    if marker["status"] == "done":
        reasons = collections.Counter(d["reason"] for d in marker["drops"])
        log.info("%s: %d clips (%.1f s) kept, %d dropped %s [%.1f s]", marker["source"], marker["num_clips"],
                 marker["clip_seconds"], sum(reasons.values()), dict(reasons), marker["seconds"])
    else:
        log.warning("%s: %s (%s): %s", marker["source"], marker["status"], marker["reason"], marker["message"])


def _run_pool(todo: list[str], work_dir: str, options: PrepOptions, num_workers: int) -> Iterator[dict[str, Any]]:
    """Markers of ``todo`` as they finish. A worker that dies (e.g. a native crash) breaks the
    pool: the sources it held are retried one at a time, and marked failed if they crash again."""
    ctx = multiprocessing.get_context("spawn")  # JAX/MediaPipe are not fork-safe
    crashed: list[str] = []
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=ctx) as pool:
        futures = {pool.submit(run_source, p, work_dir, options): p for p in todo}
        for future in concurrent.futures.as_completed(futures):
            try:
                yield future.result()
            except concurrent.futures.process.BrokenProcessPool:
                crashed.append(futures[future])
    for path in crashed:
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            try:
                yield pool.submit(run_source, path, work_dir, options).result()
            except concurrent.futures.process.BrokenProcessPool:
                marker = {"source": path, "key": source_key(path), "file": _fingerprint(path),
                          "options": dataclasses.asdict(options), "status": "failed",
                          "reason": "error:worker_crashed", "message": f"{path}: the worker process died",
                          "seconds": 0.0}
                os.makedirs(os.path.join(work_dir, source_key(path)), exist_ok=True)
                _write_json(os.path.join(work_dir, source_key(path), MARKER), marker)
                yield marker


def summarize(markers: Sequence[dict[str, Any]], processed: int, dataset: str | None,
              num_records: int) -> dict[str, Any]:
    status = collections.Counter(m["status"] for m in markers)
    dropped = collections.Counter(d["reason"] for m in markers if m["status"] == "done" for d in m["drops"])
    skipped = collections.defaultdict(list)
    for m in markers:
        if m["status"] != "done":
            skipped[m["reason"]].append({"source": m["source"], "message": m["message"]})
    return {
        "sources": len(markers), "processed_this_run": processed, "reused": len(markers) - processed,
        "sources_by_status": dict(status),
        "kept_clips": sum(m.get("num_clips", 0) for m in markers),
        "kept_seconds": round(sum(m.get("clip_seconds", 0.0) for m in markers), 2),
        "dropped_clips_by_reason": dict(dropped),
        "skipped_sources_by_reason": {k: v for k, v in sorted(skipped.items())},
        "dataset_dir": dataset, "dataset_records": num_records,
    }


def prepare(sources: Sequence[str], output_dir: str, options: PrepOptions, *, num_workers: int = 1,
            retry_failed: bool = False, name: str | None = None, version: str | None = None,
            records_per_shard: int = 256) -> dict[str, Any]:
    """Process ``sources`` into ``output_dir`` (skipping finished ones) and rebuild the dataset.
    Returns the summary (also written to ``output_dir/summary.json``)."""
    from lipsync_jax.data import records

    work_dir = os.path.join(output_dir, WORK_DIR)
    os.makedirs(work_dir, exist_ok=True)
    markers = {p: read_marker(work_dir, p) for p in sources}
    todo = [p for p in sources if not is_finished(markers[p], p, options, retry_failed)]
    log.info("%d sources: %d to process, %d already finished", len(sources), len(todo), len(sources) - len(todo))
    results = (map(lambda p: run_source(p, work_dir, options), todo) if num_workers <= 0
               else _run_pool(todo, work_dir, options, num_workers))
    for marker in results:
        _log_marker(marker)
        markers[marker["source"]] = marker
    done = [markers[p] for p in sources if markers[p] is not None]
    kept = sorted((m for m in done if m["status"] == "done" and m["num_clips"]), key=lambda m: m["key"])
    groups = (records.read_records(os.path.join(work_dir, m["key"], CLIPS_FILE)) for m in kept)
    dataset, count = None, 0
    if kept:
        dataset, count = records.write_dataset(output_dir, groups, name=name or records.DEFAULT_NAME,
                                               version=version or records.DEFAULT_VERSION,
                                               records_per_shard=records_per_shard)
    summary = summarize(done, len(todo), dataset, count)
    _write_json(os.path.join(output_dir, "summary.json"), summary)
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items() if k != "skipped_sources_by_reason"}))
    for reason, items in summary["skipped_sources_by_reason"].items():
        log.info("skipped (%s): %s", reason, ", ".join(i["source"] for i in items))
    return summary


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_dir", help="folder of source videos (searched recursively)")
    p.add_argument("--file_list", help="text file with one video path per line")
    p.add_argument("--output_dir", required=True, help="dataset root (work files, dataset, summary.json)")
    p.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="worker processes (0: run in this process)")
    p.add_argument("--resolution", type=int, default=256, help="aligned face size in pixels")
    p.add_argument("--min_seconds", type=float, default=5.0, help="shortest clip")
    p.add_argument("--max_seconds", type=float, default=10.0, help="longest clip")
    p.add_argument("--max_source_seconds", type=float, default=None, help="use only the first N s of each video")
    p.add_argument("--shot_threshold", type=float, default=0.3, help="histogram distance that counts as a cut")
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--face_backend", default="mediapipe", choices=("mediapipe", "insightface"))
    p.add_argument("--syncnet_ckpt", default=None, help="converted SyncNet folder: score, filter, fix offsets")
    p.add_argument("--sync_search_offset", type=int, default=15, help="offsets tried, in frames (+-)")
    p.add_argument("--sync_max_offset", type=int, default=6, help="drop clips whose best offset is larger")
    p.add_argument("--sync_min_confidence", type=float, default=0.0, help="drop clips below this confidence")
    p.add_argument("--retry_failed", action="store_true", help="reprocess sources that failed before")
    p.add_argument("--name", default=None, help="dataset name (default lipsync_clips)")
    p.add_argument("--version", default=None, help="dataset version (default 1.0.0)")
    p.add_argument("--records_per_shard", type=int, default=256)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    options = PrepOptions(resolution=args.resolution, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                          max_source_seconds=args.max_source_seconds, shot_threshold=args.shot_threshold,
                          jpeg_quality=args.jpeg_quality, face_backend=args.face_backend,
                          syncnet_ckpt=os.path.abspath(args.syncnet_ckpt) if args.syncnet_ckpt else None,
                          sync_search_offset=args.sync_search_offset, sync_max_offset=args.sync_max_offset,
                          sync_min_confidence=args.sync_min_confidence)
    try:
        sources = list_sources(args.input_dir, args.file_list)
        if options.min_seconds <= 0 or options.max_seconds < options.min_seconds:
            raise PrepError(f"need 0 < --min_seconds <= --max_seconds, got {options.min_seconds}, "
                            f"{options.max_seconds}")
        os.makedirs(args.output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(args.output_dir, "data_prep.log"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(file_handler)
        summary = prepare(sources, args.output_dir, options, num_workers=args.num_workers,
                          retry_failed=args.retry_failed, name=args.name, version=args.version,
                          records_per_shard=args.records_per_shard)
    except PrepError as e:
        print(f"data_prep: {e}", file=sys.stderr)
        return 2
    return 0 if summary["kept_clips"] else 1
