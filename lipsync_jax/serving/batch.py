"""Batch lip sync: many jobs from a table, models loaded and compiled once.

    python -m lipsync_jax.batch jobs.csv [--config ... --checkpoint ... | --random_init] [--avatar_cache DIR]
    lipsync-batch jobs.csv ...          # the same (console script)
    python infer.py --batch jobs.csv ...

The jobs table (CSV with a header row, or JSONL: one JSON object per line) has the columns
``video``, ``audio``, ``output`` (required) and optionally ``seed``, ``guidance``, ``steps``,
``face``, ``scheduler``, ``deepcache_interval``, ``overlap``, ``audio_windows``, ``max_seconds`` (empty = the command
line's value, else the config's). Relative paths are relative to the table's folder. Every row's
values are parsed when the table is read (pipeline/job.py: the same messages as infer.py's flags,
plus the file and line), so a bad table fails before any model is loaded. Jobs run one after
another on one ``LipsyncService``; a failed job (missing file, no face, corrupt audio) is a failed
row with one line naming the file and the problem, and the others go on. A job whose output exists
is skipped (rerun the same command to resume; ``--force`` redoes them). At the end a summary
table; exit status 1 if any job failed, else 0. ``--summary_csv`` also writes it as CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import app, flags

from lipsync_jax.device_memory import configure_gpu_memory
from lipsync_jax.pipeline.inputs import check_inputs
from lipsync_jax.pipeline.job import JobDefaults, OptionError, Request, parse_request
from lipsync_jax.quiet import configure_terminal
from lipsync_jax.serving import flags as shared
from lipsync_jax.serving.cli import error_line, run_command
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING, LipsyncService

REQUIRED = ("video", "audio", "output")
OPTIONAL = ("seed", "guidance", "steps", "face", "scheduler", "deepcache_interval", "overlap", "audio_windows",
            "max_seconds")
COLUMN_FIELDS = {"scheduler": "solver"}  # table column -> job description field


class BatchFileError(ValueError):
    """The jobs table itself is unusable (missing, no header, missing columns, a bad value)."""


@dataclasses.dataclass(frozen=True)
class BatchRow:
    line: int  # line number in the table (the CSV header is line 1)
    video: str
    audio: str
    output: str
    values: Mapping[str, str]  # the optional columns as written (field name -> text; empty ones left out)


@dataclasses.dataclass
class BatchOutcome:
    row: BatchRow
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    message: str = ""


def _records(path: str):
    """(line, {column: text}) of a CSV or JSONL table; ``BatchFileError`` naming the file."""
    if path.lower().endswith((".jsonl", ".ndjson")):
        with open(path, encoding="utf-8") as f:
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
    with open(path, newline="", encoding="utf-8-sig") as f:
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
    if not os.path.isfile(path):
        raise BatchFileError(f"jobs file {path}: no such file")
    base = os.path.dirname(os.path.abspath(path))
    resolve = lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))  # noqa: E731
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
        extra = {COLUMN_FIELDS.get(k, k): v for k, v in values.items() if k in OPTIONAL and v}
        rows.append(BatchRow(line, resolve(values["video"]), resolve(values["audio"]), resolve(values["output"]),
                             extra))
    if not rows:
        raise BatchFileError(f"jobs file {path}: no jobs")
    outputs: dict[str, int] = {}
    for row in rows:
        if row.output in outputs:
            raise BatchFileError(f"{path} line {row.line}: output {row.output} is also the output of line "
                                 f"{outputs[row.output]}")
        outputs[row.output] = row.line
    return rows


def parse_rows(path: str, rows: Sequence[BatchRow], defaults: JobDefaults,
               command_line: Mapping[str, Any] | None = None) -> list[Request]:
    """Each row's ``Request``: its own values over the command line's over the config's."""
    requests = []
    for row in rows:
        values = {**{k: v for k, v in (command_line or {}).items() if v not in (None, "")}, **row.values}
        try:
            requests.append(parse_request(row.video, row.audio, row.output, values, defaults))
        except OptionError as error:
            raise BatchFileError(f"{path} line {row.line}: {error}") from None
    return requests


def run_jobs(service: Any, rows: Sequence[BatchRow], requests: Sequence[Request], *, force: bool = False,
             progress: bool = False, log: Callable[[str], None] = print,
             outcomes: dict[int, BatchOutcome] | None = None) -> list[BatchOutcome]:
    """Run every row on ``service`` (a ``LipsyncService``, or a function making one: called only if
    some job passes the input checks); never raises for a failed job. Every pending row's files are
    checked first, so bad rows fail before the models are loaded. ``outcomes`` (row number -> outcome)
    is filled as rows finish (a stopped batch reports from it)."""
    outcomes = {} if outcomes is None else outcomes
    for number, row in enumerate(rows, 1):
        tag = f"[{number}/{len(rows)}]"
        if os.path.exists(row.output) and not force:
            log(f"{tag} skip {row.output} (exists)")
            outcomes[number] = BatchOutcome(row, "skipped")
            continue
        try:
            check_inputs(row.video, row.audio, row.output)
        except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
            outcomes[number] = BatchOutcome(row, "failed", 0.0, error_line(error))
            log(f"{tag} FAILED line {row.line}: {outcomes[number].message}")
    for number, (row, request) in enumerate(zip(rows, requests), 1):
        if number in outcomes:
            continue
        tag = f"[{number}/{len(rows)}]"
        if callable(service) and not hasattr(service, "run"):
            service = service()
        begin = time.perf_counter()
        try:
            done = service.run(request, progress=progress)
        except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
            outcomes[number] = BatchOutcome(row, "failed", time.perf_counter() - begin, error_line(error))
            log(f"{tag} FAILED line {row.line}: {outcomes[number].message}")
            continue
        seconds = time.perf_counter() - begin
        compiled = f", compiled {done.compiles} program(s)" if done.compiles else ""
        log(f"{tag} wrote {row.output} ({done.num_frames} frames, {seconds:.1f} s, avatar cache {done.avatar}"
            f"{compiled})")
        note = f"{done.num_frames} frames" + (f", avatar cache {done.avatar}" if done.avatar != "off" else "")
        outcomes[number] = BatchOutcome(row, "done", seconds, note)
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


def write_summary_csv(path: str, outcomes: Sequence[BatchOutcome]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "video", "audio", "output", "status", "seconds", "message"])
        for o in outcomes:
            writer.writerow([o.row.line, o.row.video, o.row.audio, o.row.output, o.status, f"{o.seconds:.2f}",
                             o.message])


def run_batch_command(jobs_path: str, fv, state: dict | None = None) -> int:
    """Shared by ``python -m lipsync_jax.batch`` and ``infer.py --batch``: ``fv`` is absl's FlagValues
    with the shared serving flags; ``state`` receives the rows and the outcomes so far (for the
    summary of a stopped batch: ``stopped_summary``). Returns the exit status."""
    state = {} if state is None else state

    rows = state["rows"] = read_jobs(jobs_path)  # a bad table fails before loading models
    state["outcomes"] = {}
    config, defaults = shared.config_and_defaults(fv)
    run_options = shared.run_options(fv, defaults)
    requests = parse_rows(jobs_path, rows, defaults, {**shared.job_values(fv), **shared.sampling_values(fv)})
    if fv["random_init"].value:
        print(RANDOM_WEIGHTS_WARNING, file=sys.stderr, flush=True)

    def service() -> LipsyncService:  # built only if some job needs it
        built = LipsyncService.from_config(config, **shared.model_sources(fv), run=run_options,
                                           avatar_cache=fv["avatar_cache"].value, log=print)
        print(built.describe(), flush=True)
        return built

    outcomes = run_jobs(service, rows, requests, force=fv["force"].value, progress=fv["progress"].value,
                        outcomes=state["outcomes"])
    print(summary_table(outcomes))
    if fv["summary_csv"].value:
        write_summary_csv(fv["summary_csv"].value, outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def stopped_summary(state: dict) -> None:
    """Print the summary of a stopped batch (what finished; the rest "stopped")."""
    if state.get("rows"):
        print(summary_table(stopped_outcomes(state["rows"], state.get("outcomes", {}))), flush=True)


def define_flags(fv) -> None:


    shared.define_model_flags(fv)
    shared.define_sampling_flags(fv)
    shared.define_job_flags(fv)
    shared.define_run_flags(fv)
    flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks (reused across jobs and runs).",
                        flag_values=fv)
    flags.DEFINE_bool("force", False, "Redo jobs whose output exists.", flag_values=fv)
    flags.DEFINE_string("summary_csv", None, "Also write the summary table as CSV here.", flag_values=fv)
    flags.DEFINE_bool("progress", False, "A progress bar per job.", flag_values=fv)
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
                stopped_message="stopped; finished outputs kept, the running job's temp files deleted",
                on_stop=lambda: stopped_summary(state))


def entry() -> None:
    """The console script (``lipsync-batch``) and ``python -m lipsync_jax.batch``."""
    configure_gpu_memory()
    define_flags(flags.FLAGS)
    app.run(main)
