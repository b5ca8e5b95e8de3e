"""Batch lip sync: many jobs from a CSV file, models loaded and compiled once.

    python -m lipsync_jax.batch jobs.csv --config configs/unet/stage2.py --checkpoint checkpoints/jax/unet \\
        [--vae_checkpoint ... --whisper_checkpoint ...] [--random_init] [--avatar_cache DIR] [--force]
    python infer.py --batch jobs.csv [same model flags]

jobs.csv has a header row. Columns ``video``, ``audio``, ``output`` are required; ``seed``,
``guidance``, ``steps`` and ``face`` are optional per row (empty = the command-line or config
default; ``face``: largest (default), left, right, a track id from ``infer.py --list_faces``, or
all without ``--avatar_cache``); ``scheduler`` (ddim | dpmsolver++), ``deepcache_interval`` and
``overlap`` are optional too (empty = infer.py's --scheduler / --deepcache_interval / --overlap or
the config's run fields; a bad value fails the file naming its line). Relative paths are relative to the CSV file's folder. Jobs run
one after another on one engine (jobs with the same steps/guidance share one compiled program). A failed job is
recorded (one line naming the file and the problem) and the others go on. A job whose output
already exists is skipped (rerun the same command to resume; ``--force`` redoes them). At the
end a summary table; the exit status is 1 if any job failed, else 0. ``--summary_csv`` also
writes the table as CSV.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
import time
from typing import Callable, Sequence

REQUIRED = ("video", "audio", "output")
OPTIONAL = ("seed", "guidance", "steps", "face", "scheduler", "deepcache_interval", "overlap")


class BatchFileError(ValueError):
    """The jobs file itself is unusable (missing, no header, missing columns)."""


@dataclasses.dataclass(frozen=True)
class BatchRow:
    line: int  # line number in the CSV (the header is line 1)
    video: str
    audio: str
    output: str
    seed: int | None = None
    guidance: float | None = None
    steps: int | None = None
    face: str | None = None
    scheduler: str | None = None  # sampler options (empty: the command line's / config's)
    deepcache_interval: int | None = None
    overlap: int | None = None


@dataclasses.dataclass
class BatchOutcome:
    row: BatchRow
    status: str  # "done" | "skipped" | "failed"
    seconds: float = 0.0
    message: str = ""


def _number(text: str, kind, column: str, line: int, path: str):
    text = (text or "").strip()
    if not text:
        return None
    try:
        return kind(text)
    except ValueError:
        raise BatchFileError(f"{path} line {line}: {column} {text!r} is not a valid {kind.__name__}") from None


def _sampler_columns(values: dict, line: int, path: str) -> dict:
    """The optional scheduler / deepcache_interval / overlap cells of a row, checked."""
    from lipsync_jax.diffusion import SamplerOptionError, validate_sampler_options

    cells = dict(scheduler=(values.get("scheduler") or "").lower() or None,
                 deepcache_interval=_number(values.get("deepcache_interval", ""), int, "deepcache_interval", line, path),
                 overlap=_number(values.get("overlap", ""), int, "overlap", line, path))
    try:
        validate_sampler_options(cells["scheduler"] or "ddim", cells["deepcache_interval"] or 0, cells["overlap"] or 0)
    except SamplerOptionError as error:
        raise BatchFileError(f"{path} line {line}: {error}") from None
    return cells


def read_jobs(path: str) -> list[BatchRow]:
    """Rows of a jobs CSV; raises ``BatchFileError`` naming the file and line for a bad file."""
    if not os.path.isfile(path):
        raise BatchFileError(f"jobs file {path}: no such file")
    base = os.path.dirname(os.path.abspath(path))
    resolve = lambda p: p if os.path.isabs(p) else os.path.normpath(os.path.join(base, p))  # noqa: E731
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip().lower() for h in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise BatchFileError(f"jobs file {path}: missing column(s) {', '.join(missing)} "
                                 f"(need a header row with {', '.join(REQUIRED)}; optional {', '.join(OPTIONAL)})")
        unknown = [h for h in header if h not in REQUIRED + OPTIONAL]
        if unknown:
            raise BatchFileError(f"jobs file {path}: unknown column(s) {', '.join(unknown)}")
        reader.fieldnames = header
        rows = []
        for record in reader:
            line = reader.line_num
            values = {k: (v or "").strip() for k, v in record.items() if k is not None}
            if not any(values.values()):
                continue  # blank line
            empty = [c for c in REQUIRED if not values.get(c)]
            if empty:
                raise BatchFileError(f"{path} line {line}: empty {', '.join(empty)}")
            rows.append(BatchRow(line=line, video=resolve(values["video"]), audio=resolve(values["audio"]),
                                 output=resolve(values["output"]),
                                 seed=_number(values.get("seed", ""), int, "seed", line, path),
                                 guidance=_number(values.get("guidance", ""), float, "guidance", line, path),
                                 steps=_number(values.get("steps", ""), int, "steps", line, path),
                                 face=values.get("face") or None,
                                 **_sampler_columns(values, line, path)))
    if not rows:
        raise BatchFileError(f"jobs file {path}: no jobs")
    outputs = {}
    for row in rows:
        if row.output in outputs:
            raise BatchFileError(f"{path} line {row.line}: output {row.output} is also the output of line "
                                 f"{outputs[row.output]}")
        outputs[row.output] = row.line
    return rows


def error_message(error: BaseException) -> str:
    """One line for a failed job (our errors carry their own message naming the file)."""
    known = type(error).__module__.startswith("lipsync_jax") or isinstance(error, (OSError, ValueError))
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if known else f"{type(error).__name__}: {text}"


def run_jobs(service, rows: Sequence[BatchRow], *, force: bool = False, max_seconds: float | None = None,
             progress: bool = False, defaults: dict | None = None,
             log: Callable[[str], None] = print) -> list[BatchOutcome]:
    """Run every row on ``service`` (a ``LipsyncService``, or a function making one: called only
    if some job passes the input checks); never raises for a failed job. Every pending row's
    files are checked first, so bad rows fail before the models are loaded."""
    from lipsync_jax.pipeline import check_inputs
    from lipsync_jax.serving import ServiceJob

    defaults = defaults or {}
    outcomes: dict[int, BatchOutcome] = {}
    for number, row in enumerate(rows, 1):
        tag = f"[{number}/{len(rows)}]"
        if os.path.exists(row.output) and not force:
            log(f"{tag} skip {row.output} (exists)")
            outcomes[number] = BatchOutcome(row, "skipped")
            continue
        try:
            check_inputs(row.video, row.audio, row.output)
        except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
            message = error_message(error)
            log(f"{tag} FAILED line {row.line}: {message}")
            outcomes[number] = BatchOutcome(row, "failed", 0.0, message)
    for number, row in enumerate(rows, 1):
        if number in outcomes:
            continue
        tag = f"[{number}/{len(rows)}]"
        if callable(service) and not hasattr(service, "run"):
            service = service()
        begin = time.perf_counter()
        job = ServiceJob(row.video, row.audio, row.output,
                         seed=row.seed if row.seed is not None else defaults.get("seed"),
                         guidance=row.guidance if row.guidance is not None else defaults.get("guidance"),
                         steps=row.steps if row.steps is not None else defaults.get("steps"),
                         face=row.face or defaults.get("face"), max_seconds=max_seconds, progress=progress,
                         crf=defaults.get("crf", 18), preset=defaults.get("preset", "medium"),
                         solver=row.scheduler or defaults.get("solver"),
                         deepcache_interval=(row.deepcache_interval if row.deepcache_interval is not None
                                             else defaults.get("deepcache_interval")),
                         overlap=row.overlap if row.overlap is not None else defaults.get("overlap"))
        try:
            result = service.run(job)
        except KeyboardInterrupt:
            raise
        except Exception as error:  # noqa: BLE001 - recorded, the batch goes on
            message = error_message(error)
            log(f"{tag} FAILED line {row.line}: {message}")
            outcomes[number] = BatchOutcome(row, "failed", time.perf_counter() - begin, message)
            continue
        seconds = time.perf_counter() - begin
        log(f"{tag} wrote {row.output} ({result.num_frames} frames, {seconds:.1f} s, avatar cache {result.avatar})")
        note = f"{result.num_frames} frames" + (f", avatar cache {result.avatar}" if result.avatar != "off" else "")
        outcomes[number] = BatchOutcome(row, "done", seconds, note)
    return [outcomes[number] for number in range(1, len(rows) + 1)]


def summary_table(outcomes: Sequence[BatchOutcome]) -> str:
    rows = [("line", "status", "seconds", "output", "note")]
    for o in outcomes:
        rows.append((str(o.row.line), o.status, f"{o.seconds:.1f}" if o.status != "skipped" else "-",
                     o.row.output, o.message))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("done", "skipped", "failed")}
    lines.append(f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed")
    return "\n".join(line.rstrip() for line in lines)


def write_summary_csv(path: str, outcomes: Sequence[BatchOutcome]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["line", "video", "audio", "output", "status", "seconds", "message"])
        for o in outcomes:
            writer.writerow([o.row.line, o.row.video, o.row.audio, o.row.output, o.status, f"{o.seconds:.2f}",
                             o.message])


def sampler_defaults(flags_values) -> dict:
    """infer.py's sampler flags (--scheduler, --deepcache_interval, --overlap) where they exist."""
    return dict(solver=getattr(flags_values, "scheduler", None),
                deepcache_interval=getattr(flags_values, "deepcache_interval", None),
                overlap=getattr(flags_values, "overlap", None))


def main_with_flags(jobs_path: str, flags_values) -> int:
    """Shared by ``python -m lipsync_jax.batch`` and ``infer.py --batch``: ``flags_values`` is absl's
    FLAGS (model flags as infer.py defines them). Returns the exit status."""
    from lipsync_jax import cli_flags
    from lipsync_jax.pipeline import enable_compile_cache
    from lipsync_jax.serving import LipsyncService

    rows = read_jobs(jobs_path)  # a bad jobs file fails before loading models
    config = cli_flags.resolved_config(flags_values)
    if not getattr(flags_values, "nocompile_cache", False):
        enable_compile_cache(getattr(flags_values, "compile_cache", None))
    if flags_values.random_init:
        print("WARNING: --random_init: RANDOM weights; every output video is meaningless.", file=sys.stderr)
    service = lambda: LipsyncService.from_loaded_config(  # noqa: E731 - built only if a job needs it
        config, unet_checkpoint=flags_values.checkpoint, vae_checkpoint=flags_values.vae_checkpoint,
        whisper_checkpoint=flags_values.whisper_checkpoint, random_init=flags_values.random_init,
        dtype=flags_values.dtype, seed=flags_values.seed, chunk_batch=flags_values.chunk_batch,
        fsdp=getattr(flags_values, "fsdp", None),
        avatar_cache=getattr(flags_values, "avatar_cache", None), face_backend=flags_values.face_backend)
    defaults = dict(seed=flags_values.seed, guidance=flags_values.guidance, steps=flags_values.steps,
                    face=getattr(flags_values, "face", None), crf=flags_values.crf, preset=flags_values.preset,
                    **sampler_defaults(flags_values))
    outcomes = run_jobs(service, rows, force=getattr(flags_values, "force", False),
                        max_seconds=flags_values.max_seconds, progress=flags_values.progress, defaults=defaults)
    print(summary_table(outcomes))
    if getattr(flags_values, "summary_csv", None):
        write_summary_csv(flags_values.summary_csv, outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


def _main(argv) -> None:
    from absl import flags

    if len(argv) != 2:
        raise SystemExit(f"usage: python -m lipsync_jax.batch JOBS.csv [flags] (got {argv[1:]})")
    try:
        code = main_with_flags(argv[1], flags.FLAGS)
    except BatchFileError as error:
        print(f"error: {error}", file=sys.stderr)
        code = 1
    except Exception as error:  # noqa: BLE001 - model loading problems: one line
        print(f"error: {error_message(error)}", file=sys.stderr)
        code = 1
    sys.exit(code)


def define_flags() -> None:
    """The model/run flags of infer.py, for ``python -m lipsync_jax.batch``."""
    import os as _os

    from absl import flags

    from lipsync_jax import cli_flags

    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    flags.DEFINE_string("checkpoint", "checkpoints/jax/unet", "Converted UNet folder (or latentsync_unet.pt).")
    flags.DEFINE_string("vae_checkpoint", "checkpoints/jax/vae", "Converted VAE folder.")
    flags.DEFINE_string("whisper_checkpoint", "checkpoints/jax/whisper", "Converted Whisper folder.")
    flags.DEFINE_integer("steps", None, "Default DDIM steps (rows may override).", lower_bound=1)
    flags.DEFINE_float("guidance", None, "Default guidance scale (rows may override).")
    flags.DEFINE_integer("seed", None, "Default seed (rows may override).")
    flags.DEFINE_string("face", None, "Default face choice for multi-person videos (rows may override).")
    flags.DEFINE_enum("dtype", None, ["bfloat16", "float32"], "Compute dtype (default per backend).")
    flags.DEFINE_enum("face_backend", "mediapipe", ["mediapipe", "insightface"], "Face landmarks backend.")
    flags.DEFINE_bool("random_init", False, "Random weights (smoke tests; meaningless outputs).")
    flags.DEFINE_float("max_seconds", None, "Only the first this many seconds of each audio.", lower_bound=0.04)
    flags.DEFINE_integer("crf", 18, "H.264 quality.", lower_bound=0, upper_bound=51)
    flags.DEFINE_string("preset", "medium", "x264 preset.")
    flags.DEFINE_integer("chunk_batch", None, "Chunks per device per device-program call.", lower_bound=1)
    flags.DEFINE_integer("fsdp", None, "Split the weights over groups of N local devices (default: automatic).",
                         lower_bound=1)
    flags.DEFINE_string("compile_cache", None, "Persistent XLA compilation cache folder.")
    flags.DEFINE_bool("nocompile_cache", False, "Do not use the persistent compilation cache.")
    flags.DEFINE_string("avatar_cache", None, "Folder of cached face tracks (reused across jobs and runs).")
    flags.DEFINE_bool("force", False, "Redo jobs whose output exists.")
    flags.DEFINE_string("summary_csv", None, "Also write the summary table as CSV here.")
    flags.DEFINE_bool("progress", False, "Progress bar per job.")
    cli_flags.define_config_flags(default_config=_os.path.join(root, "configs", "unet", "stage2.py"))


if __name__ == "__main__":
    from absl import app

    define_flags()
    app.run(_main)


def run_one_with_flags(flags_values) -> None:
    """``infer.py --avatar_cache DIR``: one job through ``LipsyncService`` (the face track of the
    video is replayed from the cache when present, stored otherwise)."""
    from lipsync_jax import cli_flags
    from lipsync_jax.pipeline import enable_compile_cache
    from lipsync_jax.serving import LipsyncService, ServiceJob

    config = cli_flags.resolved_config(flags_values)
    job = ServiceJob(flags_values.video, flags_values.audio, flags_values.output, seed=flags_values.seed,
                     guidance=flags_values.guidance, steps=flags_values.steps, face=getattr(flags_values, "face", None),
                     max_seconds=flags_values.max_seconds, crf=flags_values.crf, preset=flags_values.preset,
                     progress=flags_values.progress, **sampler_defaults(flags_values))
    from lipsync_jax.pipeline import check_inputs

    check_inputs(job.video, job.audio, job.output)  # before any heavy work
    if not getattr(flags_values, "nocompile_cache", False):
        enable_compile_cache(getattr(flags_values, "compile_cache", None))
    service = LipsyncService.from_loaded_config(
        config, unet_checkpoint=flags_values.checkpoint, vae_checkpoint=flags_values.vae_checkpoint,
        whisper_checkpoint=flags_values.whisper_checkpoint, random_init=flags_values.random_init,
        dtype=flags_values.dtype, seed=flags_values.seed, chunk_batch=flags_values.chunk_batch,
        fsdp=getattr(flags_values, "fsdp", None),
        avatar_cache=flags_values.avatar_cache, face_backend=flags_values.face_backend)
    result = service.run(job)
    print(f"wrote {result.output_path}: {result.num_frames} frames, {result.duration:.2f} s "
          f"(avatar cache: {result.avatar}; {result.seconds:.1f} s)")
