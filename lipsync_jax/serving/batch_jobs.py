"""One job of a batch, the same whichever runner runs it (the local loop in batch.py, Beam's workers in
batch_beam.py): its table row, its outcome, the steps (skip a finished output, check the inputs, run
on a ``LipsyncService`` and record the settings), the log line, and the result table. A job whose
video, audio or output is a URL (gs://...) is staged through a local temp folder (files.py).

Result table (``--summary_csv``; CSV, or JSONL when the name ends in ``.jsonl``; a path on any file
system Apache Beam reads, e.g. ``gs://``, when Beam is installed): one row per job in table order
with ``id, line, status, frames, seconds, output, video, audio, message``. ``status`` is ``done``,
``skipped``, ``failed`` or ``stopped``; ``seconds`` is the job's time on the service (waiting for
the device excluded); ``message`` is the failure's one line, or what was done or why it was skipped.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from lipsync_jax.cleanup import tracked_path
from lipsync_jax.pipeline.errors import InputError
from lipsync_jax.pipeline.inputs import check_inputs
from lipsync_jax.pipeline.job import Request
from lipsync_jax.serving.cli import error_line
from lipsync_jax.serving.files import basename, download, file_exists, is_local, open_text, upload, write_text
from lipsync_jax.serving.fingerprint import check_finished, remove_leftovers, write_record

RESULT_COLUMNS = ("id", "line", "status", "frames", "seconds", "output", "video", "audio", "message")
JSONL_SUFFIXES = (".jsonl", ".ndjson")


class BatchFileError(ValueError):
    """The jobs table itself is unusable (missing, no header, missing columns, a bad value), or the
    result table cannot be written."""


@dataclasses.dataclass(frozen=True)
class BatchRow:
    line: int  # line number in the table (the CSV header is line 1)
    video: str
    audio: str
    output: str
    values: Mapping[str, str]  # the optional columns as written (field name -> text; empty ones left out)
    job_id: str = ""  # the table's ``id`` column (default: the line number)


@dataclasses.dataclass
class BatchOutcome:
    row: BatchRow
    status: str  # "done" | "skipped" | "failed" | "stopped"
    seconds: float = 0.0
    message: str = ""
    frames: int = 0


def row_values(row: BatchRow, command_line: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The raw values of one job: its row's over the command line's (the config's fill the rest)."""
    return {**{k: v for k, v in (command_line or {}).items() if v not in (None, "")}, **row.values}


# ---------------------------------------------------------------------------- the steps of one job
def plan_job(row: BatchRow, settings: Mapping[str, Any], *, force: bool = False, tag: str = "",
             log: Callable[[str], None] = print) -> BatchOutcome | None:
    """Before a job runs: "skipped" when its output is finished with these ``settings``
    (fingerprint.py), "failed" when its files do not pass the input checks, else None (run it; the
    temp files a killed run of it left are deleted first)."""
    if not force:
        finished = check_finished(row.output, settings)
        if finished.skip:
            log(f"{tag} skip {row.output} ({finished.reason})")
            return BatchOutcome(row, "skipped", 0.0, finished.reason, finished.frames)
        if finished.reason:
            log(f"{tag} redo {row.output}: {finished.reason}")
    try:
        if is_staged(row):  # probed once copied (run_job); here only whether they are there
            for role, path in (("video", row.video), ("audio", row.audio)):
                if not file_exists(path):
                    raise InputError(f"{role} {path}: no such file")
        else:
            check_inputs(row.video, row.audio, row.output)
    except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
        outcome = BatchOutcome(row, "failed", 0.0, error_line(error))
        log(f"{tag} FAILED line {row.line}: {outcome.message}")
        return outcome
    remove_leftovers(row.output)
    return None


def run_job(service: Any, row: BatchRow, request: Request, settings: Mapping[str, Any], *, progress: bool = False,
            tag: str = "", log: Callable[[str], None] = print) -> BatchOutcome:
    """Run one job on ``service`` (a ``LipsyncService``; files that are URLs staged through a local
    temp folder) and record its settings beside the output; never raises for a failed job."""
    begin = time.perf_counter()
    local: StagedRequest | None = None
    with contextlib.ExitStack() as stack:
        try:
            local = stack.enter_context(staged(request)) if is_staged(row) else None
            done = service.run(request if local is None else local.request, progress=progress)
            if local is not None:
                upload(local.request.job.output, row.output)
        except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
            message = error_line(error)
            for remote, path in ({} if local is None else local.names).items():
                message = message.replace(path, remote)
            outcome = BatchOutcome(row, "failed", time.perf_counter() - begin, message)
            log(f"{tag} FAILED line {row.line}: {outcome.message}")
            return outcome
    note = f"{done.num_frames} frames" + (f", avatar cache {done.avatar}" if done.avatar != "off" else "")
    try:
        write_record(row.output, settings, frames=done.num_frames, seconds=done.seconds)
    except OSError as error:
        note += f"; settings record not written ({error_line(error)})"
    compiled = f", compiled {done.compiles} program(s)" if done.compiles else ""
    log(f"{tag} wrote {row.output} ({done.num_frames} frames, {done.seconds:.1f} s, avatar cache {done.avatar}"
        f"{compiled})")
    return BatchOutcome(row, "done", done.seconds, note, done.num_frames)


# ---------------------------------------------------------------------------- files given as URLs
def is_staged(row: BatchRow) -> bool:
    """Whether the job's media are URLs (gs://...): copied to a local temp folder to run."""
    return not all(is_local(path) for path in (row.video, row.audio, row.output))


@dataclasses.dataclass(frozen=True)
class StagedRequest:
    request: Request  # the job on local copies, its output in the temp folder
    names: Mapping[str, str]  # URL -> its local copy (to name the URL in messages)


@contextlib.contextmanager
def staged(request: Request) -> Iterator[StagedRequest]:
    """``request`` with each URL among its video, audio and output replaced by a path in a local temp
    folder (inputs copied there); the folder is deleted at the end (and on a stop)."""
    job = request.job
    with tracked_path(tempfile.mkdtemp(prefix="lipsync_stage_")) as folder:
        names = {}
        for n, (field, path) in enumerate((("video", job.video), ("audio", job.audio), ("output", job.output))):
            if is_local(path):
                continue
            names[path] = os.path.join(folder, f"{n}_{basename(path)}")
            if field != "output":
                download(path, names[path])
        local = dataclasses.replace(job, **{field: names.get(getattr(job, field), getattr(job, field))
                                            for field in ("video", "audio", "output")})
        yield StagedRequest(dataclasses.replace(request, job=local), names)


# ---------------------------------------------------------------------------- the result table
def result_row(outcome: BatchOutcome) -> dict[str, Any]:
    row = outcome.row
    return {"id": row.job_id or str(row.line), "line": row.line, "status": outcome.status,
            "frames": outcome.frames, "seconds": round(outcome.seconds, 2), "output": row.output,
            "video": row.video, "audio": row.audio, "message": outcome.message}


def format_results(path: str, outcomes: Iterable[BatchOutcome]) -> str:
    """The result table's text: JSONL for ``*.jsonl`` / ``*.ndjson``, else CSV with a header row."""
    rows = [result_row(o) for o in outcomes]
    if path.lower().endswith(JSONL_SUFFIXES):
        return "".join(json.dumps(r) + "\n" for r in rows)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({**r, "seconds": f"{r['seconds']:.2f}"})
    return text.getvalue()


def write_results(path: str, outcomes: Sequence[BatchOutcome]) -> None:
    try:
        write_text(path, format_results(path, outcomes))
    except OSError as error:
        raise BatchFileError(f"result table {path}: cannot write it ({error_line(error)})") from None


def read_results(path: str) -> list[dict[str, str]]:
    """The rows of a result table (every value as text)."""
    with open_text(path) as f:
        if path.lower().endswith(JSONL_SUFFIXES):
            return [{k: str(v) for k, v in json.loads(line).items()} for line in f if line.strip()]
        return list(csv.DictReader(f))
