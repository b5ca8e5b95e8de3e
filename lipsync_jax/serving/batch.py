"""Batch lip sync: many jobs from a table, models loaded and compiled once.

    python -m lipsync_jax.batch jobs.csv [--config ... --checkpoint ... | --random_init] [--avatar_cache DIR]
    python -m lipsync_jax.batch jobs.csv --runner beam [--beam_args "--runner=DataflowRunner ..."]
    lipsync-batch jobs.csv ...          # the same (console script)
    python infer.py --batch jobs.csv ...

The jobs table (CSV with a header row, or JSONL: one JSON object per line; a local file, or with
Apache Beam installed a URL on any file system it reads, e.g. gs://) has the columns ``video``,
``audio``, ``output`` (required) and optionally ``id`` (the job's name in the result table; default
its line number), ``seed``, ``guidance``, ``steps``, ``face``, ``scheduler``, ``deepcache_interval``,
``overlap``, ``audio_windows``, ``max_seconds`` (empty = the command line's value, else the
config's). Relative paths are relative to the table's folder; media given as URLs are staged through
a local temp folder (files.py). Every row's values are parsed when
the table is read (pipeline/job.py: the same messages as infer.py's flags, plus the file and line),
so a bad table fails before any model is loaded.

Each job goes through the same steps (batch_jobs.py) whichever runner runs it: skipped when its
output exists with the same settings (fingerprint.py: a record beside the output; a changed setting
redoes the job; rerun the same command to resume; ``--force`` redoes all), failed with one line
naming the file and the problem when its inputs are bad, else run on a ``LipsyncService`` and its
settings recorded. ``--runner local`` (default): one after another in this process.
``--runner beam``: an Apache Beam pipeline with RunInference (batch_beam.py, docs/batch.md). At the
end a summary table; exit status 1 if any job failed, else 0. ``--summary_csv`` also writes the
result table (CSV, or JSONL for ``*.jsonl``; with Beam always written, by default beside the table
as ``NAME.results.csv``).
"""

from __future__ import annotations

import csv
import json
import os
import shlex
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags

from lipsync_jax import cli_flags
from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.pipeline.job import JobDefaults, OptionError, Request, parse_request, parse_sampling
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.batch_jobs import (
    JSONL_SUFFIXES,
    BatchFileError,
    BatchOutcome,
    BatchRow,
    plan_job,
    row_values,
    run_job,
    write_results,
)
from lipsync_jax.serving.cli import run_command
from lipsync_jax.serving.files import dirname, file_exists, join, open_text
from lipsync_jax.serving.fingerprint import job_settings, model_identity
from lipsync_jax.serving.plan import print_plan
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService

REQUIRED = ("video", "audio", "output")
OPTIONAL = ("id", "seed", "guidance", "steps", "face", "scheduler", "deepcache_interval", "overlap", "audio_windows",
            "max_seconds")
COLUMN_FIELDS = {"scheduler": "solver"}  # table column -> job description field
RUNNERS = ("local", "beam")


def _records(path: str):
    """(line, {column: text}) of a CSV or JSONL table; ``BatchFileError`` naming the file."""
    if path.lower().endswith(JSONL_SUFFIXES):
        with open_text(path) as f:
            for line, text in enumerate(f, 1):
                if not text.strip():
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as error:
                    raise BatchFileError(f"{path} line {line}: not JSON ({error.msg})") from None
                if not isinstance(record, dict):
                    raise BatchFileError(f"{path} line {line}: a job is a JSON object, got {type(record).__name__}")
                yield line, {str(k).strip().lower(): "" if v is None else str(v).strip() for k, v in record.items()}
        return
    with open_text(path) as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise BatchFileError(f"jobs file {path}: missing column(s) {', '.join(missing)} "
                                 f"(need a header row with {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
        reader.fieldnames = header
        for record in reader:
            yield reader.line_num, {k: (v or "").strip() for k, v in record.items() if k is not None}


def read_jobs(path: str) -> list[BatchRow]:
    """Rows of a jobs table; ``BatchFileError`` naming the file and line for a bad table."""
    if not file_exists(path):
        raise BatchFileError(f"jobs file {path}: no such file")
    base = dirname(path)
    resolve = lambda p: p if os.path.isabs(p) or "://" in p else join(base, p)  # noqa: E731

    rows = []
    for line, values in _records(path):
        if not any(values.values()):
            continue  # blank line
        unknown = [k for k in values if k not in REQUIRED + OPTIONAL]
        if unknown:
            raise BatchFileError(f"jobs file {path}: unknown column(s) {', '.join(unknown)}")
        empty = [c for c in REQUIRED if not values.get(c)]
        if empty:
            raise BatchFileError(f"{path} line {line}: empty {', '.join(empty)}")
        extra = {COLUMN_FIELDS.get(k, k): v for k, v in values.items() if k in OPTIONAL and k != "id" and v}
        rows.append(BatchRow(line, resolve(values["video"]), resolve(values["audio"]), resolve(values["output"]),
                             extra, values.get("id") or str(line)))
    if not rows:
        raise BatchFileError(f"jobs file {path}: no jobs")
    for name, key in (("output", lambda r: r.output), ("id", lambda r: r.job_id)):
        seen: dict[str, int] = {}
        for row in rows:
            if key(row) in seen:
                raise BatchFileError(f"{path} line {row.line}: {name} {key(row)} is also the {name} of line "
                                     f"{seen[key(row)]}")
            seen[key(row)] = row.line
    return rows


def parse_rows(path: str, rows: Sequence[BatchRow], defaults: JobDefaults,
               command_line: Mapping[str, Any] | None = None) -> list[Request]:
    """Each row's ``Request``: its own values over the command line's over the config's."""
    requests = []
    for row in rows:
        try:
            requests.append(parse_request(row.video, row.audio, row.output, row_values(row, command_line), defaults))
        except OptionError as error:
            raise BatchFileError(f"{path} line {row.line}: {error}") from None
    return requests


def run_jobs(service: Any, rows: Sequence[BatchRow], requests: Sequence[Request], *, model: Mapping[str, Any],
             force: bool = False, progress: bool = False, log: Callable[[str], None] = print,
             outcomes: dict[int, BatchOutcome] | None = None) -> list[BatchOutcome]:
    """Run every row on ``service`` (a ``LipsyncService``, or a function making one: called only if
    some job is to run) in this process; never raises for a failed job. ``model``: the service's
    ``fingerprint.model_identity`` (finished outputs are recognised by it). Every row is planned
    first (skipped, or its files checked), so bad rows fail before the models are loaded.
    ``outcomes`` (row number -> outcome) is filled as rows finish (a stopped batch reports from it)."""
    outcomes = {} if outcomes is None else outcomes
    settings = [job_settings(request, model) for request in requests]
    for number, row in enumerate(rows, 1):
        planned = plan_job(row, settings[number - 1], force=force, tag=f"[{number}/{len(rows)}]", log=log)
        if planned is not None:
            outcomes[number] = planned
    for number, (row, request) in enumerate(zip(rows, requests), 1):
        if number in outcomes:
            continue
        if callable(service) and not hasattr(service, "run"):
            service = service()
        outcomes[number] = run_job(service, row, request, settings[number - 1], progress=progress,
                                   tag=f"[{number}/{len(rows)}]", log=log)
    return [outcomes[number] for number in range(1, len(rows) + 1)]


def stopped_outcomes(rows: Sequence[BatchRow], outcomes: dict[int, BatchOutcome]) -> list[BatchOutcome]:
    """Every row's outcome so far; rows not finished are "stopped"."""
    return [outcomes.get(number) or BatchOutcome(row, "stopped", 0.0, "not finished: rerun to do it")
            for number, row in enumerate(rows, 1)]


def summary_table(outcomes: Sequence[BatchOutcome]) -> str:
    rows = [("line", "status", "seconds", "output", "note")]
    for o in outcomes:
        rows.append((str(o.row.line), o.status, f"{o.seconds:.1f}" if o.status != "skipped" else "-",
                     o.row.output, o.message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed", "stopped")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed"
                 + (f", {counts['stopped']} stopped" if counts["stopped"] else ""))
    return "\n".join(line.rstrip() for line in lines)


def run_batch_command(jobs_path: str, fv, state: dict | None = None) -> int:
    """Shared by ``python -m lipsync_jax.batch`` and ``infer.py --batch``: ``fv`` is absl's FlagValues
    with the shared serving flags (``--runner`` etc. where defined); ``state`` receives the rows and
    the outcomes so far (for the summary of a stopped batch: ``stopped_summary``). Returns the exit
    status."""
    state = {} if state is None else state
    config, defaults = shared.config_and_defaults(fv)
    run_options = shared.run_options(fv, defaults)
    if run_options.plans_only:  # --plan_only / --plan_for: the plan for the command line's sampling, no jobs run
        return print_plan(config, run_options, parse_sampling(shared.sampling_values(fv), defaults))

    rows = state["rows"] = read_jobs(jobs_path)  # a bad table fails before loading models
    state["outcomes"] = {}
    command_line = {**shared.job_values(fv), **shared.sampling_values(fv)}
    requests = parse_rows(jobs_path, rows, defaults, command_line)
    if fv["random_init"].value:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)
    results_path = fv["summary_csv"].value
    runner = fv["runner"].value if "runner" in fv else "local"

    if runner == "beam":
        outcomes = _run_on_beam(jobs_path, rows, fv, state, config=config, run_options=run_options,
                                command_line=command_line)
    else:
        def service() -> LipsyncService:  # built only if some job needs it
            built = LipsyncService.from_config(config, **shared.model_sources(fv), run=run_options,
                                               avatar_cache=fv["avatar_cache"].value, log=print)
            print(built.describe(), flush=True)
            return built

        model = model_identity(config, **shared.model_sources(fv), run=run_options)
        outcomes = run_jobs(service, rows, requests, model=model, force=fv["force"].value,
                            progress=fv["progress"].value, outcomes=state["outcomes"])
        if results_path:
            write_results(results_path, outcomes)
    print(summary_table(outcomes))
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _run_on_beam(jobs_path: str, rows: Sequence[BatchRow], fv, state: dict, *, config, run_options,
                 command_line: Mapping[str, Any]) -> list[BatchOutcome]:
    try:  # optional dependency (pip install -r requirements-beam.txt): only --runner beam needs Apache Beam
        from lipsync_jax.serving import batch_beam
    except ImportError as error:
        if not (error.name or "").startswith("apache_beam"):
            raise
        raise BatchFileError("--runner beam needs Apache Beam: pip install -r requirements-beam.txt") from None
    spec = batch_beam.ServiceSpec(config, shared.model_sources(fv), run_options, fv["avatar_cache"].value,
                                  dict(command_line))
    results_path = fv["summary_csv"].value or batch_beam.default_results_path(jobs_path)
    copies = fv["model_copies"].value
    beam_args = shlex.split(fv["beam_args"].value or "")
    state["stop"] = lambda: batch_beam.stop_workers(rows, beam_args)
    outcomes, _metrics = batch_beam.run_pipeline(rows, spec, results_path=results_path, beam_args=beam_args,
                                                 force=fv["force"].value, model_copies=copies or None)
    return outcomes


def stopped_summary(state: dict) -> None:
    """A stopped batch: the local runner prints what finished (the rest "stopped"); on Beam's local
    runner the worker processes are stopped and what they left deleted (batch_beam.stop_workers)."""
    if state.get("stop"):
        print(state["stop"](), flush=True)
    elif state.get("rows"):
        print(summary_table(stopped_outcomes(state["rows"], state.get("outcomes", {}))), flush=True)


def define_flags(fv) -> None:
    shared.define_model_flags(fv)
    shared.define_sampling_flags(fv)
    shared.define_job_flags(fv)
    shared.define_run_flags(fv)
    flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks (reused across jobs and runs).",
                        flag_values=fv)
    flags.DEFINE_bool("force", False, "Redo jobs whose output exists (even with the same settings).", flag_values=fv)
    flags.DEFINE_string("summary_csv", None, "Also write the result table here: CSV, or JSONL for *.jsonl; with "
                        "Apache Beam installed any file system it writes (gs://...). --runner beam: default "
                        "NAME.results.csv beside the jobs table.", flag_values=fv)
    flags.DEFINE_bool("progress", False, "A progress bar per job (--runner local).", flag_values=fv)
    flags.DEFINE_enum("runner", "local", list(RUNNERS), "local: the jobs one after another in this process; beam: "
                      "an Apache Beam pipeline with RunInference (docs/batch.md).", flag_values=fv)
    flags.DEFINE_string("beam_args", None, "With --runner beam: Beam's pipeline options in one string, e.g. "
                        "\"--direct_num_workers=2 --direct_running_mode=multi_processing\" or "
                        "\"--runner=DataflowRunner --project=P --region=R ...\" (default: the DirectRunner).",
                        flag_values=fv)
    flags.DEFINE_integer("model_copies", 0, "With --runner beam: 0 = one service per worker process; N = N "
                         "services per machine shared by all its worker processes (Beam's "
                         "share_model_across_processes; one GPU per machine: 1).", lower_bound=0, flag_values=fv)
    flags.DEFINE_bool("traceback", False, "On an error, print the full traceback (for bug reports).",
                      flag_values=fv)


def main(argv) -> None:
    configure_terminal(verbose=flags.FLAGS.verbose)  # before JAX starts: only our own warnings and errors
    if len(argv) != 2:
        print(f"usage: python -m lipsync_jax.batch JOBS.csv [flags] (got {' '.join(argv[1:]) or 'no jobs file'})",
              file=sys.stderr)
        sys.exit(2)
    state: dict = {}
    run_command(lambda: run_batch_command(argv[1], flags.FLAGS, state), show_traceback=lambda: flags.FLAGS.traceback,
                stopped_message="stopped; finished outputs kept, the running jobs' temp files deleted",
                on_stop=lambda: stopped_summary(state))


def entry() -> None:
    """The console script (``lipsync-batch``) and ``python -m lipsync_jax.batch``."""
    configure_gpu_memory()
    define_flags(flags.FLAGS)
    cli_flags.show_in_help(flags.FLAGS)
    app.run(main)
