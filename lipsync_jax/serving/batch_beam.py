"""``python -m lipsync_jax.batch jobs.csv --runner beam [--beam_args "..."]``: the batch on Apache Beam's
RunInference, so a job table runs on any Beam runner (the DirectRunner by default; Dataflow with GPU
workers, Flink, Spark by their pipeline options). Usage and the Dataflow command: docs/batch.md.

This module imports Apache Beam at its top: batch.py imports it only for ``--runner beam``
(optional dependency: ``pip install -r requirements-beam.txt``).

    table rows (read and checked on the driver) -> Create -> Reshuffle (spread over workers)
      -> RunInference(LipsyncModelHandler): per job, on the worker, the same steps as the local
         batch (batch_jobs.py): skip a finished output (settings fingerprint), check the inputs,
         run on the worker's LipsyncService, record the settings
      -> Count (Beam metrics) -> ToList -> the result table (any file system Beam writes)

The model RunInference loads is a ``LipsyncWorker``: the ``LipsyncService`` is built on the first
job that needs it, once per worker process (Beam shares it between the process's threads), or
with ``model_copies=N`` N times per machine, shared by all its worker processes through Beam's
``multi_process_shared`` (one GPU per machine: 1). Jobs run one at a time per service (its device
lock). A failed job (missing file, no face, corrupt audio, even a service that cannot be built) is
a failed row with its one-line error; it never fails the bundle or the pipeline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import apache_beam as beam
import psutil
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from lipsync_jax.cleanup import remove_path
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.pipeline.job import JobDefaults, RunOptions, parse_request
from lipsync_jax.pipeline.work_dirs import stale_folders
from lipsync_jax.quiet import drop_library_noise
from lipsync_jax.serving.batch_jobs import (
    BatchFileError,
    BatchOutcome,
    BatchRow,
    plan_job,
    read_results,
    row_values,
    run_job,
    write_results,
)
from lipsync_jax.serving.cli import error_line
from lipsync_jax.serving.files import file_exists, is_local
from lipsync_jax.serving.fingerprint import job_settings, model_identity, remove_leftovers
from lipsync_jax.serving.service import LipsyncService

NAMESPACE = "lipsync"
DEFAULT_RUNNER = "FnApiRunner"
LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner", "SwitchingDirectRunner")
COUNTERS = ("jobs_done", "jobs_failed", "jobs_skipped", "frames", "device_milliseconds")


@dataclasses.dataclass(frozen=True)
class ServiceSpec:
    """How a worker builds its ``LipsyncService`` (pickled into the pipeline): the resolved config,
    the model sources (checkpoint paths every worker sees, or random weights), where to run, the
    avatar cache folder, and the command line's job values (under each row's own)."""

    config: Any  # a resolved ml_collections ConfigDict
    sources: Mapping[str, Any]  # LipsyncService.from_config's unet/vae/whisper_checkpoint, random_init
    run: RunOptions
    avatar_cache: str | None = None
    command_line: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def build(self) -> LipsyncService:
        return LipsyncService.from_config(self.config, **self.sources, run=self.run, avatar_cache=self.avatar_cache)

    def model_identity(self) -> dict[str, Any]:
        return model_identity(self.config, **self.sources, run=self.run)


@dataclasses.dataclass(frozen=True)
class BatchJob:
    """One element of the pipeline: a table row and its place in the table."""

    number: int  # 1-based row number
    total: int
    row: BatchRow


def _log(line: str) -> None:
    print(line, flush=True)


class LipsyncWorker:
    """The "model" RunInference loads and shares: one job at a time through the batch steps, the
    service built on the first job that needs it (a worker whose jobs are all finished or bad loads
    no weights). A service that cannot be built fails every job of this worker with its one line."""

    def __init__(self, spec: ServiceSpec, *, force: bool = False, log: Callable[[str], None] = _log):
        self.spec, self.force, self.log = spec, force, log
        self.defaults = JobDefaults.from_config(spec.config, unet_checkpoint=spec.sources.get("unet_checkpoint"),
                                                random_init=bool(spec.sources.get("random_init")))
        self._lock = threading.Lock()
        self._identity: dict[str, Any] | None = None
        self._service: LipsyncService | None = None
        self._build_error: Exception | None = None

    def identity(self) -> dict[str, Any]:
        with self._lock:
            if self._identity is None:
                self._identity = self.spec.model_identity()
            return self._identity

    def service(self) -> LipsyncService:
        with self._lock:
            if self._build_error is not None:
                raise self._build_error
            if self._service is None:
                try:
                    self._service = self.spec.build()
                except Exception as error:  # noqa: BLE001 - every job of this worker reports it
                    self._build_error = error
                    raise
                self.log(f"worker {os.getpid()}: {self._service.describe()}")
            return self._service

    def process(self, job: BatchJob) -> BatchOutcome:
        row, tag = job.row, f"[{job.number}/{job.total}]"
        try:
            request = parse_request(row.video, row.audio, row.output, row_values(row, self.spec.command_line),
                                    self.defaults)
            settings = job_settings(request, self.identity())
        except Exception as error:  # noqa: BLE001 - a failed row, never a failed bundle
            self.log(f"{tag} FAILED line {row.line}: {error_line(error)}")
            return BatchOutcome(row, "failed", 0.0, error_line(error))
        outcome = plan_job(row, settings, force=self.force, tag=tag, log=self.log)
        if outcome is not None:
            return outcome
        try:
            service = self.service()
        except Exception as error:  # noqa: BLE001
            self.log(f"{tag} FAILED line {row.line}: {error_line(error)}")
            return BatchOutcome(row, "failed", 0.0, error_line(error))
        return run_job(service, row, request, settings, tag=tag, log=self.log)


class LipsyncModelHandler(ModelHandler[BatchJob, BatchOutcome, LipsyncWorker]):
    """RunInference's handler: one job per batch (each takes seconds to minutes); ``model_copies``
    None: one ``LipsyncWorker`` per worker process, shared by its threads (Beam's ``Shared``); N:
    N per machine, shared by all its worker processes (``share_model_across_processes``)."""

    def __init__(self, spec: ServiceSpec, *, force: bool = False, model_copies: int | None = None):
        super().__init__(min_batch_size=1, max_batch_size=1, model_copies=model_copies)
        self.spec, self.force = spec, force

    def load_model(self) -> LipsyncWorker:
        configure_gpu_memory()  # before this worker process starts a JAX GPU backend
        drop_library_noise()  # Beam's "Resource module is not available" once per bundle
        return LipsyncWorker(self.spec, force=self.force)

    def run_inference(self, batch: Sequence[BatchJob], model: LipsyncWorker,
                      inference_args: dict[str, Any] | None = None) -> list[PredictionResult]:
        return [PredictionResult(job, model.process(job)) for job in batch]

    def get_metrics_namespace(self) -> str:
        return f"{NAMESPACE}_runinference"


def count_outcome(outcome: BatchOutcome) -> BatchOutcome:
    """Beam metrics of a finished job: jobs done / failed / skipped, frames written, device time."""
    Metrics.counter(NAMESPACE, f"jobs_{outcome.status}").inc()
    if outcome.status == "done":
        Metrics.counter(NAMESPACE, "frames").inc(outcome.frames)
        Metrics.counter(NAMESPACE, "device_milliseconds").inc(int(round(outcome.seconds * 1000)))
    return outcome


def write_sorted_results(outcomes: list[BatchOutcome], path: str) -> str:
    write_results(path, sorted(outcomes, key=lambda o: o.row.line))
    return path


def build_pipeline(pipeline: beam.Pipeline, jobs: Sequence[BatchJob], handler: LipsyncModelHandler,
                   results_path: str) -> beam.PCollection:
    """Add the batch's transforms to ``pipeline``; returns the PCollection of outcomes."""
    outcomes = (pipeline
                | "Jobs" >> beam.Create(list(jobs))
                | "Spread" >> beam.Reshuffle()
                | "LipSync" >> RunInference(handler)
                | "Outcome" >> beam.Map(lambda result: result.inference)
                | "Count" >> beam.Map(count_outcome))
    _ = (outcomes
         | "Collect" >> beam.combiners.ToList()
         | "WriteResults" >> beam.Map(write_sorted_results, results_path))
    return outcomes


# ---------------------------------------------------------------------------- the driver
def pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    """Beam's own options (``--runner``, ``--direct_num_workers``, Dataflow's, ...). Without ``--runner``:
    the FnApiRunner, the DirectRunner's local engine, whose ``--direct_running_mode`` and
    ``--direct_num_workers`` set the worker processes (``--runner=DirectRunner`` in Beam 2.77 first
    tries to download and start the Prism runner). An option Beam does not know is refused with one
    line."""
    options = PipelineOptions(list(beam_args))
    unknown = options.get_all_options(retain_unknown_options=True).keys() - options.get_all_options().keys()
    if unknown:
        raise BatchFileError(f"--beam_args: unknown Beam option(s) {', '.join(sorted(unknown))}")
    if not options.view_as(StandardOptions).runner:
        options.view_as(StandardOptions).runner = DEFAULT_RUNNER
    return options


def describe_options(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner
    if str(runner) not in LOCAL_RUNNERS:
        return str(runner)
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers or 1
    return f"{runner} ({direct.direct_running_mode}, {workers} worker{'s' * (workers != 1)})"


def metric_totals(result) -> dict[str, int]:
    """The batch's counters summed over steps (committed values where the runner has them)."""
    totals = dict.fromkeys(COUNTERS, 0)
    with contextlib.suppress(Exception):  # a runner without metrics leaves zeros
        for counter in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]:
            value = counter.committed if counter.committed is not None else counter.attempted
            totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def metrics_line(totals: Mapping[str, int]) -> str:
    return (f"beam metrics: {totals['jobs_done']} done, {totals['jobs_skipped']} skipped, {totals['jobs_failed']} "
            f"failed, {totals['frames']} frames, {totals['device_milliseconds'] / 1000:.1f} device seconds")


def outcomes_from_results(path: str, rows: Sequence[BatchRow]) -> list[BatchOutcome]:
    """The driver's outcomes, read back from the result table the pipeline wrote."""
    if not file_exists(path):
        raise BatchFileError(f"result table {path}: the pipeline wrote none that this machine can read (with a "
                             f"remote runner give --summary_csv on a file system both see, e.g. gs://...)")
    by_line = {int(r["line"]): r for r in read_results(path)}
    outcomes = []
    for row in rows:
        r = by_line.get(row.line)
        outcomes.append(BatchOutcome(row, "stopped", 0.0, "no result: rerun to do it") if r is None else
                        BatchOutcome(row, r["status"], float(r["seconds"] or 0), r["message"], int(r["frames"] or 0)))
    return outcomes


def stop_workers(rows: Sequence[BatchRow], beam_args: Sequence[str] = ()) -> str:
    """A stopped driver; returns what it did, in one line. On Beam's local runner: kill the worker
    processes it started (``multi_processing`` workers and their ffmpeg), then delete what they
    left beside the outputs (temp files, work folders); finished outputs and their records stay. On
    any other runner the pipeline runs on in the cluster (cancel it there) and nothing is touched:
    its workers may be writing beside the outputs."""
    runner = str(pipeline_options(beam_args).view_as(StandardOptions).runner)
    if runner not in LOCAL_RUNNERS:
        return (f"beam: this launcher stopped; the pipeline runs on in {runner} (cancel it there); rerun the same "
                f"command after it ends to do what is missing")
    children = psutil.Process().children(recursive=True)
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.kill()
    psutil.wait_procs(children, timeout=5)
    folders = sorted({os.path.dirname(os.path.abspath(row.output)) for row in rows if is_local(row.output)})
    for row in rows:
        remove_leftovers(row.output)
    for folder in folders:
        for path in stale_folders(folder):
            remove_path(path)
    return "beam: stopped; finished outputs and their settings records kept, rerun the same command to do the rest"


def run_pipeline(rows: Sequence[BatchRow], spec: ServiceSpec, *, results_path: str, beam_args: Sequence[str] = (),
                 force: bool = False, model_copies: int | None = None,
                 log: Callable[[str], None] = _log) -> tuple[list[BatchOutcome], dict[str, int]]:
    """Run the batch as a Beam pipeline and wait for it; returns every row's outcome (from the result
    table at ``results_path``) and the Beam metrics."""
    options = pipeline_options(beam_args)
    jobs = [BatchJob(number, len(rows), row) for number, row in enumerate(rows, 1)]
    handler = LipsyncModelHandler(spec, force=force, model_copies=model_copies)
    log(f"beam: {len(jobs)} job(s) on {describe_options(options)}; result table {results_path}")
    begin = time.perf_counter()
    pipeline = beam.Pipeline(options=options)
    build_pipeline(pipeline, jobs, handler, results_path)
    result = pipeline.run()
    result.wait_until_finish()
    totals = metric_totals(result)
    log(metrics_line(totals) + f"; {time.perf_counter() - begin:.1f} s in the pipeline")
    return outcomes_from_results(results_path, rows), totals


def default_results_path(jobs_path: str) -> str:
    """``jobs.results.csv`` beside ``jobs.csv`` (the pipeline always writes a result table)."""
    stem, _ext = os.path.splitext(jobs_path)
    return f"{stem}.results.csv"
