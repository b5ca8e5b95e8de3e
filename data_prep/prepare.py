"""The per-source work of ``python -m data_prep`` (data_prep/cli.py) and its local run.

Resumable: each source's clips go to ``output_dir/_work/<source key>/clips.array_record`` and a
``result.json`` marker written after them; a rerun skips every source whose marker matches the
file (size, mtime) and the options, and retries failed ones only with ``retry_failed``.
At the end all finished sources (of this input list) are packed into the dataset
``output_dir/<name>/<version>/`` (see ``lipsync_jax.data.records``) and a summary (kept clips,
dropped clips and skipped sources by reason) is logged and written to
``output_dir/summary.json``, with the per-clip table ``output_dir/clips.csv`` and plots in
``output_dir/stats/`` (``data_prep.stats``). One bad file is logged and skipped; it never stops
the run. ``prepare`` runs sources in local worker processes; ``data_prep.beam_pipeline`` runs the
same ``run_source`` as an Apache Beam pipeline.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from typing import Any

from tqdm import tqdm

from data_prep import filters
from data_prep.clips import PrepOptions, SourceError, Tools, process_source, source_key

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

_WORKER_TOOLS: dict[tuple, Tools] = {}  # per process: the models each setting needs, built once


def _tools_key(options: PrepOptions) -> tuple:
    return (options.face_backend, options.detects_faces, options.multi_face, options.sync_scorer,
            options.syncnet_ckpt, options.detector_ckpt, options.sync_search_offset, options.quality_ckpt)


def _worker_tools(options: PrepOptions) -> Tools:
    key = _tools_key(options)
    if key not in _WORKER_TOOLS:
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's native INFO/WARNING chatter
        from lipsync_jax.face import make_landmarker

        for tools in _WORKER_TOOLS.values():
            for tool in (tools.landmarker, tools.face_detector):
                if hasattr(tool, "close"):
                    tool.close()
        _WORKER_TOOLS.clear()
        _WORKER_TOOLS[key] = Tools(
            landmarker=make_landmarker(options.face_backend),
            face_detector=filters.MediaPipeFaceDetector() if options.detects_faces else None,
            sync_scorer=filters.build_sync_scorer(options.sync_scorer, options.syncnet_ckpt,
                                                  search_offset=options.sync_search_offset,
                                                  detector_ckpt=options.detector_ckpt),
            quality_scorer=filters.build_quality_scorer(options.quality_ckpt),
            track_finder=filters.load_track_finder() if options.multi_face == "split" else None)
    return _WORKER_TOOLS[key]


def check_tools(options: PrepOptions) -> None:
    """Fail early, with one line, when a filter asked for cannot be built (missing or unusable checkpoint)."""
    if options.syncnet_ckpt and options.sync_scorer == "lse" and not options.detector_ckpt:
        raise PrepError("--sync_scorer lse needs --detector_ckpt (S3FD: sfd_face.pth or a converted folder)")
    if options.quality_ckpt and options.resolution < 224:
        raise PrepError(f"--quality_ckpt needs --resolution >= 224 (HyperIQA's centre crop), got {options.resolution}")
    for flag, path in (("--syncnet_ckpt", options.syncnet_ckpt), ("--detector_ckpt", options.detector_ckpt),
                       ("--quality_ckpt", options.quality_ckpt)):
        if path and not os.path.exists(path):
            raise PrepError(f"{flag} {path}: no such file or folder")


def _write_json(path: str, data: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, allow_nan=True)
    os.replace(tmp, path)


def run_source(path: str, work_dir: str, options: PrepOptions, tools: Tools | None = None) -> dict[str, Any]:
    """Process one source and write its clips + marker; never raises for a bad source.
    ``tools``: models to use instead of the worker's (tests pass doubles)."""
    from lipsync_jax.data.records import features, serialize, write_records

    key = source_key(path)
    out = os.path.join(work_dir, key)
    os.makedirs(out, exist_ok=True)
    marker = {"source": path, "key": key, "file": _fingerprint(path), "options": dataclasses.asdict(options)}
    started = time.time()
    try:
        result = process_source(path, options, tools=tools or _worker_tools(options))
        feature_dict = features()
        count = write_records(os.path.join(out, CLIPS_FILE), (serialize(c, feature_dict) for c in result.clips))
        marker.update(status="done", num_clips=count, num_frames=result.num_frames, num_shots=result.num_shots,
                      clip_seconds=sum(len(c.frames) for c in result.clips) / options.fps,
                      clips=[{"clip_id": c.clip_id, "start_time": c.start_time, "num_frames": len(c.frames),
                              "sync_score": c.sync_score, "sync_offset": c.sync_offset} for c in result.clips],
                      stats=[dataclasses.asdict(s) for s in result.stats],
                      seconds_by_step=result.seconds_by_step)
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
        reasons = collections.Counter(d["reason"] for d in marker["stats"] if d["status"] != "kept")
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
    dropped = collections.Counter(d["reason"] for m in markers if m["status"] == "done" for d in m["stats"]
                                  if d["status"] != "kept")
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


def thresholds(options: PrepOptions) -> dict[str, float]:
    return {"sync_confidence": options.conf_threshold, "sync_max_offset": options.sync_max_offset,
            "quality": options.min_quality, "min_face_size": options.min_face_size}


def finish_run(output_dir: str, sources: Sequence[str], markers: dict[str, dict[str, Any] | None], processed: int,
               options: PrepOptions, dataset: str | None, num_records: int) -> dict[str, Any]:
    """Statistics (clips.csv, stats/) and summary.json of a finished run (local or Beam)."""
    from data_prep import stats

    done = [markers[p] for p in sources if markers.get(p) is not None]
    summary = summarize(done, processed, dataset, num_records)
    rows = [row for m in sorted(done, key=lambda m: m["key"]) if m["status"] == "done" for row in m["stats"]]
    steps: dict[str, dict[str, float]] = collections.defaultdict(lambda: {"wall": 0.0, "cpu": 0.0})
    for m in done:
        for step, seconds in m.get("seconds_by_step", {}).items():
            for kind in ("wall", "cpu"):
                steps[step][kind] = round(steps[step][kind] + seconds[kind], 3)
    summary["seconds_by_step"] = dict(sorted(steps.items()))  # this run's and reused sources'

    summary["source_frames"] = sum(m.get("num_frames", 0) for m in done if m["status"] == "done")
    summary["statistics"] = stats.write_statistics(output_dir, rows, thresholds(options))
    _write_json(os.path.join(output_dir, "summary.json"), summary)
    log.info("summary: %s", json.dumps({k: v for k, v in summary.items()
                                        if k not in ("skipped_sources_by_reason", "statistics")}))
    for reason, items in summary["skipped_sources_by_reason"].items():
        log.info("skipped (%s): %s", reason, ", ".join(i["source"] for i in items))
    log.info("per-clip table %s, plots in %s", os.path.join(output_dir, stats.TABLE),
             os.path.join(output_dir, stats.STATS_DIR))
    return summary


def pack_dataset(output_dir: str, markers: Sequence[dict[str, Any] | None], name: str | None = None,
                 version: str | None = None, records_per_shard: int = 256) -> tuple[str | None, int]:
    """The dataset from the finished sources' clip files, shard by shard (``data_prep.packing``)."""
    from data_prep import packing
    from lipsync_jax.data import records

    files = packing.clips_files(os.path.join(output_dir, WORK_DIR), markers, CLIPS_FILE)
    if not files:
        return None, 0
    name, version = name or records.DEFAULT_NAME, version or records.DEFAULT_VERSION
    final = records.dataset_dir(output_dir, name, version)
    staging = packing.staging_dir(final, str(os.getpid()))
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    plan = packing.shard_plan(files, records_per_shard)
    written = [packing.write_shard(staging, name, i, len(plan), slices) for i, slices in enumerate(plan)]
    return final, packing.finish_dataset(staging, final, name, version, written)


def prepare(sources: Sequence[str], output_dir: str, options: PrepOptions, *, num_workers: int = 1,
            retry_failed: bool = False, name: str | None = None, version: str | None = None,
            records_per_shard: int = 256, tools: Tools | None = None) -> dict[str, Any]:
    """Process ``sources`` into ``output_dir`` (skipping finished ones) and rebuild the dataset.
    Returns the summary (also written to ``output_dir/summary.json``). ``tools`` (in-process
    only, ``num_workers=0``): models to use instead of the worker's."""
    work_dir = os.path.join(output_dir, WORK_DIR)
    os.makedirs(work_dir, exist_ok=True)
    markers = {p: read_marker(work_dir, p) for p in sources}
    todo = [p for p in sources if not is_finished(markers[p], p, options, retry_failed)]
    log.info("%d sources: %d to process, %d already finished", len(sources), len(todo), len(sources) - len(todo))
    results = (map(lambda p: run_source(p, work_dir, options, tools), todo) if num_workers <= 0
               else _run_pool(todo, work_dir, options, num_workers))
    for marker in tqdm(results, total=len(todo), desc="Sources", unit="video", disable=not todo):
        _log_marker(marker)
        markers[marker["source"]] = marker
    dataset, count = pack_dataset(output_dir, [markers[p] for p in sources], name, version, records_per_shard)
    return finish_run(output_dir, sources, markers, len(todo), options, dataset, count)
