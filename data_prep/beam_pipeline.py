"""``python -m data_prep ... --runner=DirectRunner``: the same per-source work as an Apache Beam
pipeline (optional extra: ``pip install -r requirements-beam.txt``).

    sources to process ─Reshuffle─> run_source (the local path's function: decode, faces,
        filters, the source's clips file + marker in output_dir/_work/<key>/)
    all markers (new + reused) ─> shard plan (``data_prep.packing``) ─Reshuffle─> write_shard
        (one ArrayRecord shard each, in parallel) ─> dataset_info.json + swap in, clips.csv,
        stats/*.png, summary.json (``prepare.finish_run``)

The shards, records and statistics equal the local path's (same functions, same order: sources
by key, shards cut every ``--records_per_shard`` records). Resuming works as locally: sources
whose marker matches are not processed again.

Runners: any Beam runner through Beam's own options, passed through by ``python -m data_prep``
(e.g. ``--runner=DataflowRunner --project=... --region=... --temp_location=gs://...
--requirements_file=requirements.txt``, or ``--runner=FlinkRunner --flink_master=...``;
``--direct_num_workers=4 --direct_running_mode=multi_processing`` parallelises DirectRunner).
Workers read the sources and write ``output_dir`` with ordinary file I/O, so on a cluster both
must be paths every worker sees (a shared or FUSE-mounted file system).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Sequence
from typing import Any

from data_prep import packing
from data_prep.clips import PrepOptions
from data_prep.prepare import CLIPS_FILE, WORK_DIR, PrepError, finish_run, is_finished, read_marker, run_source

log = logging.getLogger("data_prep")


def _beam():
    try:
        import apache_beam as beam
    except ImportError:
        raise PrepError("--runner needs Apache Beam: pip install -r requirements-beam.txt") from None
    return beam


def _plan(markers: list[dict[str, Any]], work_dir: str, records_per_shard: int) -> list[tuple[int, int, list]]:
    files = packing.clips_files(work_dir, markers, CLIPS_FILE)
    if not files:
        return []
    plan = packing.shard_plan(files, records_per_shard)
    return [(index, len(plan), slices) for index, slices in enumerate(plan)]


def _write(item: tuple[int, int, list], staging: str, name: str) -> tuple[int, int, int]:
    """Write one shard; its (index, records, bytes) also go to a small file next to the staging
    folder, which the driver reads back (a pipeline's results stay on the workers)."""
    index, count, slices = item
    os.makedirs(staging, exist_ok=True)
    os.makedirs(_meta_dir(staging), exist_ok=True)
    written = packing.write_shard(staging, name, index, count, slices)
    with open(os.path.join(_meta_dir(staging), f"shard-{index:05d}.json"), "w", encoding="utf-8") as f:
        json.dump(list(written), f)
    return written


def _meta_dir(staging: str) -> str:
    return f"{staging}.written"


def build_pipeline(pipeline, todo: Sequence[str], reused: Sequence[dict[str, Any]], output_dir: str,
                   options: PrepOptions, *, staging: str, name: str, records_per_shard: int):
    """Add the data_prep transforms to ``pipeline``; returns the PCollection of written shards."""
    beam = _beam()
    work_dir = os.path.join(output_dir, WORK_DIR)
    new_markers = (pipeline
                   | "Sources" >> beam.Create(list(todo))
                   | "Spread" >> beam.Reshuffle()
                   | "ProcessSource" >> beam.Map(run_source, work_dir, options))
    markers = ((new_markers, pipeline | "Reused" >> beam.Create(list(reused)))
               | "AllMarkers" >> beam.Flatten()
               | "MarkerList" >> beam.combiners.ToList())
    return (markers
            | "ShardPlan" >> beam.FlatMap(_plan, work_dir, records_per_shard)
            | "SpreadShards" >> beam.Reshuffle()
            | "WriteShard" >> beam.Map(_write, staging, name))


def prepare_with_beam(sources: Sequence[str], output_dir: str, options: PrepOptions, *,
                      beam_args: Sequence[str] = ("--runner=DirectRunner",), retry_failed: bool = False,
                      name: str | None = None, version: str | None = None,
                      records_per_shard: int = 256) -> dict[str, Any]:
    """``prepare`` on a Beam runner; returns the same summary. The pipeline processes sources and
    writes shards; the driver then reads the markers back, registers the dataset and writes the
    statistics (small files)."""
    beam = _beam()
    from apache_beam.options.pipeline_options import PipelineOptions

    from lipsync_jax.data import records

    name, version = name or records.DEFAULT_NAME, version or records.DEFAULT_VERSION
    work_dir = os.path.join(output_dir, WORK_DIR)
    os.makedirs(work_dir, exist_ok=True)
    markers = {p: read_marker(work_dir, p) for p in sources}
    todo = [p for p in sources if not is_finished(markers[p], p, options, retry_failed)]
    reused = [markers[p] for p in sources if p not in set(todo) and markers[p] is not None]
    log.info("%d sources: %d to process, %d already finished (Beam: %s)", len(sources), len(todo),
             len(sources) - len(todo), " ".join(beam_args))
    final = records.dataset_dir(output_dir, name, version)
    staging = packing.staging_dir(final, uuid.uuid4().hex[:12])
    try:
        with beam.Pipeline(options=PipelineOptions(list(beam_args))) as pipeline:
            written = build_pipeline(pipeline, todo, reused, output_dir, options, staging=staging, name=name,
                                     records_per_shard=records_per_shard)
            _ = written | "ShardCount" >> beam.combiners.Count.Globally()
        markers = {p: read_marker(work_dir, p) for p in sources}
        dataset, count = None, 0
        meta = _meta_dir(staging)
        names = sorted(os.listdir(meta)) if os.path.isdir(meta) else []
        written_list = [_read_json(os.path.join(meta, f)) for f in names]
        if written_list:
            count = packing.finish_dataset(staging, final, name, version, written_list)
            dataset = final
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(_meta_dir(staging), ignore_errors=True)
    return finish_run(output_dir, sources, markers, len(todo), options, dataset, count)


def _read_json(path: str) -> tuple:
    with open(path, encoding="utf-8") as f:
        return tuple(json.load(f))
