"""Which settings made an output, recorded beside it, so a batch re-run skips only what is finished.

After a job writes ``out.mp4`` its settings go into a small record beside it,
``.out.mp4.lipsync.json``: the settings themselves (readable), their sha256 ``fingerprint``, the
frames written, and the output's size and modification time. A later run skips the job when the
output exists and

- its record holds the same fingerprint and still describes this file (size and mtime), or
- it has no record (an output made by hand or before records existed: kept, as the batch always
  did; ``--force`` redoes it).

A record with other settings (``settings changed: sampling.steps, job.seed``), or one describing
another file (the output was replaced after the record was written, e.g. by a run stopped between
its rename and its record), makes the job run again.

The settings are everything that decides the output's bytes: the job (input paths and byte
sizes, face choice, face audio, ``max_seconds``, seed, x264 CRF and preset), the sampling (steps,
guidance, solver, DeepCache, overlap, Whisper windows) and the model (``model_identity``: the
config's network, VAE, Whisper, scheduler and data sections, each checkpoint's files, or random
weights and their seed, the compute dtype, the face backend). Not in it: the output path, where it
runs (chunk batch, devices, fsdp, memory budget: the output does not depend on them), and the code
version (after upgrading lipsync-jax, ``--force`` redoes outputs).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Any

from lipsync_jax.cleanup import remove_path
from lipsync_jax.config_utils import config_to_dict, resolve_path
from lipsync_jax.pipeline.job import Request, RunOptions
from lipsync_jax.serving.files import (
    basename,
    beside,
    file_exists,
    file_size,
    file_stat,
    is_local,
    open_text,
    write_text,
)
from lipsync_jax.serving.service import default_dtype

RECORD_SUFFIX = ".lipsync.json"
RECORD_VERSION = 1
SMALL_FILE_BYTES = 1 << 20  # checkpoint files up to this size are hashed, larger ones identified by size
DATA_KEYS = ("resolution", "num_frames", "audio_feat_length", "video_fps", "audio_sample_rate", "mask_image_path")


# ---------------------------------------------------------------------------- the settings
def checkpoint_identity(path: str) -> dict[str, Any]:
    """A checkpoint file or folder by content, not by path (so a shared mount and a copy baked into an
    image agree): every file's relative name and size, and the sha256 of the small ones (orbax's
    metadata, config.json, metadata.json)."""
    path = resolve_path(path)
    if os.path.isfile(path):
        return {"file": os.path.basename(path), "bytes": os.path.getsize(path)}
    if not os.path.isdir(path):
        return {"missing": path}  # the service refuses it with its own message when a job runs
    files = {}
    for folder, _, names in os.walk(path):
        for name in sorted(names):
            full = os.path.join(folder, name)
            size = os.path.getsize(full)
            entry: dict[str, Any] = {"bytes": size}
            if size <= SMALL_FILE_BYTES:
                with open(full, "rb") as f:
                    entry["sha256"] = hashlib.sha256(f.read()).hexdigest()
            files[os.path.relpath(full, path)] = entry
    return {"files": dict(sorted(files.items()))}


def model_identity(config, *, unet_checkpoint: str = "", vae_checkpoint: str = "", whisper_checkpoint: str = "",
                   random_init: bool = False, run: RunOptions | None = None) -> dict[str, Any]:
    """What decides the networks' numbers: the arguments of ``LipsyncService.from_config``, read
    without loading any weights (the compute dtype asks JAX which backend runs)."""
    run = run or RunOptions()
    sections = {name: config_to_dict(config[name]) for name in ("model", "vae", "scheduler")}
    sections["whisper"] = config_to_dict(config.whisper.dims)
    sections["data"] = {key: config_to_dict(config.data)[key] for key in DATA_KEYS if key in config.data}
    if random_init:
        weights: dict[str, Any] = {"random_init": True, "seed": int(config.run.seed)}
    else:
        weights = {name: checkpoint_identity(path) for name, path in
                   (("unet", unet_checkpoint), ("vae", vae_checkpoint), ("whisper", whisper_checkpoint))}
    return _plain({"config": sections, "weights": weights, "dtype": default_dtype(run.dtype).name,
                   "face_backend": run.face_backend})


def _plain(value: Any) -> Any:
    """JSON-ready: mappings as dicts, sequences as lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def job_settings(request: Request, model: Mapping[str, Any]) -> dict[str, Any]:
    """The recorded settings of ``request`` run by ``model`` (its ``model_identity``)."""
    job = request.job
    fields = {f.name: getattr(job, f.name) for f in dataclasses.fields(job) if f.name != "output"}
    inputs = [job.video, job.audio, *job.face_audio.values()]
    return _plain({"job": fields, "inputs": {path: file_size(path) for path in inputs},
                   "sampling": dataclasses.asdict(request.sampling), "model": model})


def fingerprint(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The top two levels of setting names whose values differ (``sampling.steps``, ``model.dtype``)."""
    names = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            names += [f"{key}.{sub}" for sub in sorted(set(a) | set(b)) if a.get(sub) != b.get(sub)]
        elif a != b:
            names.append(key)
    return names


# ---------------------------------------------------------------------------- the record beside the output
def record_path(output: str) -> str:
    return beside(output, f".{basename(output)}{RECORD_SUFFIX}")


def write_record(output: str, settings: Mapping[str, Any], *, frames: int, seconds: float) -> None:
    """The record of a finished ``output`` (a local one written to a temp file renamed into place)."""
    record = {"version": RECORD_VERSION, "fingerprint": fingerprint(settings), "settings": settings,
              "frames": int(frames), "seconds": round(float(seconds), 3), "output": file_stat(output)}
    write_text(record_path(output), json.dumps(record, indent=1, sort_keys=True))


@dataclasses.dataclass(frozen=True)
class Finished:
    """Whether a job's output is finished with the job's settings (``skip``), and why (or why not)."""

    skip: bool
    reason: str = ""  # "" when there is no output
    frames: int = 0  # frames of a finished output (from its record; 0 without one)


def check_finished(output: str, settings: Mapping[str, Any]) -> Finished:
    """Skip or redo ``output`` (see the module docstring)."""
    if not file_exists(output):
        return Finished(False)
    path = record_path(output)
    if not file_exists(path):
        return Finished(True, "exists (no settings record: kept; --force redoes it)")
    try:
        with open_text(path) as f:
            record = json.load(f)
        recorded, stat, frames = record["fingerprint"], record["output"], int(record["frames"])
    except (OSError, ValueError, KeyError, TypeError):
        return Finished(False, "its settings record is unreadable")
    if recorded != fingerprint(settings):
        changed = changed_settings(record.get("settings") or {}, settings)
        return Finished(False, f"settings changed ({', '.join(changed) or 'fingerprint'})")
    if stat != file_stat(output):
        return Finished(False, "the output was replaced after its settings were recorded")
    return Finished(True, "finished with the same settings", frames)


def remove_leftovers(output: str) -> list[str]:
    """Delete the hidden temp files (``.name.*.partial.ext``) a killed writer of a local ``output`` left
    beside it; returns their paths. Called right before the job runs again, so a pipeline cancelled on
    a cluster leaves nothing behind after its re-run (the job's work folders of processes that are
    gone are removed by pipeline/work_dirs.py when the job starts; an upload never leaves a part)."""
    if not is_local(output):
        return []
    folder, name = os.path.split(os.path.abspath(output))
    stem, ext = os.path.splitext(name)
    # media/atomic.py's names: mkstemp(prefix=".STEM.", suffix=".partial.EXT"), 8 random [a-z0-9_] between, so
    # the temp files of "a.b.mp4" never match those of "a.mp4"
    own = re.compile(rf"\.{re.escape(stem)}\.[a-z0-9_]{{8}}\.partial{re.escape(ext)}")
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    found = [os.path.join(folder, n) for n in sorted(names) if own.fullmatch(n)]
    for path in found:
        remove_path(path)
    return found
