"""Compiled footprints for a target, cached in a JSON file so that the same row never compiles twice.

``program_footprint_for(target, models, ...)`` is the memory planner's entry point
(pipeline/memory.py's ``Footprint`` parts, from XLA's compile for the target instead of the CPU
model). ``ResultCache`` is the JSON file (one object: key -> ``CompileStats`` dict, or an error).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

import jax

from lipsync_jax.accelerators import Target, get_target
from lipsync_jax.aot.compile import CompileStats, compile_traced

ESTIMATES_FILE = "aot_estimates.json"
_lock = threading.Lock()


def target_identity(target: Target) -> dict:
    """What a compile for ``target`` depends on besides the program: its description and jax."""
    described = target.spec_text() if target.spec_file else f"{target.tpu_topology}|{target.tpu_chips_per_host}"
    identity = {"target": target.name, "described": hashlib.sha256(described.encode()).hexdigest()[:16],
                "jax": jax.__version__}
    if target.platform == "tpu":  # "auto" attention there is the Pallas kernel where it applies
        identity["auto_attention"] = "pallas+xla"
    return identity


def result_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


class CompileRefused(RuntimeError):
    """The target's compiler refused the program (e.g. XLA:TPU: it does not fit the chip's HBM)."""


class ResultCache:
    """``{key: {"stats": CompileStats dict} | {"error": str}, ...}`` in one JSON file (None: memory only)."""

    def __init__(self, path: str | None):
        self.path = path
        self.table: dict = {}
        if path and os.path.exists(path):
            with open(path) as f:
                self.table = json.load(f)

    def get(self, key: str) -> dict | None:
        return self.table.get(key)

    def put(self, key: str, value: dict) -> None:
        self.table[key] = value
        if not self.path:
            return
        with _lock:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            tmp = f"{self.path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(self.table, f, indent=1, sort_keys=True)
            os.replace(tmp, self.path)


def cached_compile(cache: ResultCache, key: str, trace: Callable[[], tuple], target: Target,
                   log=None) -> CompileStats:
    """The cached ``CompileStats`` under ``key``, else ``trace()`` -> compile -> cache. A compile the
    target refuses for memory (RESOURCE_EXHAUSTED) is cached too and raised as ``CompileRefused``."""
    hit = cache.get(key)
    if hit and "stats" in hit:
        return CompileStats.from_dict(hit["stats"])
    if hit and "error" in hit:
        raise CompileRefused(hit["error"])
    traced, items, divisor = trace()
    try:
        stats = compile_traced(traced, target, items, cost_divisor=divisor, log=log)
    except Exception as error:  # noqa: BLE001
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        message = str(error).splitlines()[0]
        cache.put(key, {"error": message})  # the target's compiler refuses it: as deterministic as a result
        raise CompileRefused(message) from None
    cache.put(key, {"stats": stats.as_dict()})
    return stats


def chunk_program_key(target: Target, models: Any, **settings: Any) -> str:
    """The key of a chunk-program row: the planner's estimate key (models, settings, the program's
    inputs) with the target's identity."""
    from lipsync_jax.pipeline.memory import _estimate_key, program_inputs

    class _Device:  # the estimate key's device fields, for a target
        platform, device_kind = target.platform, target.device

    inputs = program_inputs(models, int(settings["chunk_batch"]))
    return result_key(kind="chunk_program", models=_estimate_key(models, _Device(), inputs=inputs, **settings),
                      **target_identity(target))


def program_footprint_for(target: Target | str, models: Any, *, chunk_batch: int, vae_frames: int | None = None,
                          attention_backend: str = "auto", num_steps: int = 20, guidance_scale: float = 1.5,
                          sampler_options: Mapping[str, Any] | None = None, cache_dir: str | None = None,
                          use_cache: bool = True) -> dict:
    """The chunk program's compiled footprint on ONE chip of ``target`` (XLA:GPU / XLA:TPU without
    the device): ``argument_bytes``, ``output_bytes``, ``temp_bytes``, ``code_bytes``,
    ``alias_bytes`` (``pipeline.memory.Footprint``'s fields), ``compile_seconds`` (0.0 when read
    from the cache), ``estimate`` ("xla:<target>"), plus ``flops`` / ``bytes_accessed`` per call.
    Cached in ``<cache_dir or the compile cache folder>/aot_estimates.json``. Raises
    ``devices.AOTUnavailableError`` when the target's compiler is not installed."""
    from lipsync_jax.aot.programs import trace_chunk_program
    from lipsync_jax.pipeline.memory import estimates_path

    target = get_target(target) if isinstance(target, str) else target
    vae_frames = int(vae_frames or models.num_frames)
    settings = dict(chunk_batch=int(chunk_batch), vae_frames=vae_frames, attention=attention_backend,
                    num_steps=int(num_steps), cfg=float(guidance_scale) > 1.0, sampler=dict(sampler_options or {}))
    key = chunk_program_key(target, models, **settings)
    path = os.path.join(os.path.dirname(estimates_path(cache_dir)), ESTIMATES_FILE) if use_cache else None
    cache = ResultCache(path)
    hit = cache.get(key)
    trace = lambda: trace_chunk_program(  # noqa: E731
        target, models, chunk_batch=chunk_batch, vae_frames=vae_frames, attention_backend=attention_backend,
        num_steps=num_steps, guidance_scale=guidance_scale, sampler_options=sampler_options)
    stats = cached_compile(cache, key, trace, target)
    return dict(argument_bytes=stats.argument_bytes, output_bytes=stats.output_bytes, temp_bytes=stats.temp_bytes,
                code_bytes=stats.code_bytes, alias_bytes=stats.alias_bytes,
                compile_seconds=0.0 if hit else stats.compile_seconds, estimate=f"xla:{target.name}",
                flops=stats.flops, bytes_accessed=stats.bytes_accessed)


def whisper_footprint_for(target: Target | str, models: Any, *, batch: int = 8, cache_dir: str | None = None,
                          use_cache: bool = True) -> dict:
    """The Whisper encoder's compiled footprint on one chip of ``target`` for ``batch`` 30 s mel
    windows per call (offline jobs: up to 8, ``AudioFeatureExtractor.max_batch``; live mode: 1):
    the same fields as ``program_footprint_for``. Its arguments are Whisper's weights + the mels."""
    from lipsync_jax.aot.programs import trace_whisper
    from lipsync_jax.pipeline.memory import estimates_path

    target = get_target(target) if isinstance(target, str) else target
    key = result_key(kind="whisper", audio=repr(models.audio.config), batch=int(batch), **target_identity(target))
    path = os.path.join(os.path.dirname(estimates_path(cache_dir)), ESTIMATES_FILE) if use_cache else None
    cache = ResultCache(path)
    hit = cache.get(key)
    stats = cached_compile(cache, key, lambda: trace_whisper(target, models, int(batch)), target)
    return dict(argument_bytes=stats.argument_bytes, output_bytes=stats.output_bytes, temp_bytes=stats.temp_bytes,
                code_bytes=stats.code_bytes, alias_bytes=stats.alias_bytes,
                compile_seconds=0.0 if hit else stats.compile_seconds, estimate=f"xla:{target.name}",
                flops=stats.flops, bytes_accessed=stats.bytes_accessed)
