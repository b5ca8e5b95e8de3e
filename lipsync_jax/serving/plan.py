"""``--plan_only`` / ``--plan_for TARGET``: the memory plan a run would use, printed, nothing run.

Every door (infer.py, the batch CLI, the web app, the live server) checks ``RunOptions.plans_only``
after parsing its flags and, when set, prints ``plan_run``'s plan instead of loading weights:

- ``--plan_for TARGET`` (a name in ``lipsync_jax.accelerators.TARGETS``: ``rtx4060-8g``, ``h100``,
  ``tpu:v5e-1``, ...) plans ONE chip of that accelerator from abstract shapes: footprints from
  XLA's compiler for it (``aot.target_footprints``; the CPU-modelled estimate when that compiler
  is not installed, and the plan says which), bfloat16 unless ``--dtype``, the budget
  ``--max_vram`` (else the config's ``run.max_vram_gb``, else the target's memory), the largest
  chunk batch ``--chunk_batch`` (else 2, the GPU/TPU default), fsdp over its chips as the engine
  would grow it. It never runs the job here: the setting is for that device.
- ``--plan_only`` alone plans the local devices exactly as the engine would (``engine.fit_memory``)
  but from abstract shapes (no checkpoint read): with no budget, the default setting's estimate.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from lipsync_jax.accelerators import GIB, get_target
from lipsync_jax.pipeline.engine import fit_memory
from lipsync_jax.pipeline.job import OptionError, RunOptions, Sampling
from lipsync_jax.pipeline.memory import MemoryPlan, local_footprints
from lipsync_jax.pipeline.models import abstract_models
from lipsync_jax.pipeline.placement import default_chunk_batch
from lipsync_jax.serving.service import default_dtype

LIVE_WHISPER_WINDOWS = 1  # the live mode encodes one 30 s window per call


def plan_run(config, run: RunOptions, sampling: Sampling, *, whisper_windows: int | None = None,
             log: Callable[[str], None] | None = None) -> tuple[MemoryPlan, int]:
    """(plan, fsdp) of ``run`` for ``config``'s models and ``sampling`` (module doc).
    ``whisper_windows``: Whisper's windows per call (default: an offline job's batch)."""
    if run.plan_for is None:
        devices = jax.local_devices()[:run.devices] if run.devices else jax.local_devices()
        models = abstract_models(config, default_dtype(run.dtype))
        source = local_footprints(devices[0], cache_dir=run.compile_cache or None)
        platform, count = devices[0].platform, len(devices)
    else:
        from lipsync_jax.aot import target_footprints  # the AOT compilers: only for a plan for a target

        target = get_target(run.plan_for)
        models = abstract_models(config, jnp.dtype(run.dtype or "bfloat16"))
        source = target_footprints(target, cache_dir=run.compile_cache or None)
        platform, count = target.platform, run.devices or target.chips
        if count > target.chips:
            raise OptionError(f"devices {count}: {target.name} has {target.chips} chip(s)")
        if run.max_vram_gb is None:
            run = dataclasses.replace(run, max_vram_gb=target.memory_bytes / GIB)
    chunk_batch = run.chunk_batch or default_chunk_batch(platform)
    return fit_memory(models, run, sampling, device_count=count, fsdp=run.fsdp or 1, chunk_batch=chunk_batch,
                      footprints=source, whisper_windows=whisper_windows, log=log)


def print_plan(config, run: RunOptions, sampling: Sampling, *, whisper_windows: int | None = None,
               out: Callable[[str], None] = print) -> int:
    """Plan (``plan_run``), print each estimate as it is compiled and the plan; exit status 0.
    Raises ``MemoryBudgetError`` (one line) when nothing fits."""
    what = f"{run.plan_for} ({get_target(run.plan_for).device})" if run.plan_for else "this host's devices"
    if run.plan_for:
        if not jax.config.jax_platforms:  # this host's CPU is all a plan for a target needs (no GPU/TPU probes)
            jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_enable_compilation_cache", False)  # compile-only programs are not for the disk
    out(f"planning for {what}: {sampling.steps} steps ({sampling.solver}), guidance {sampling.guidance:g}; "
        f"nothing runs (compiling an estimate takes minutes on a CPU)")
    plan, fsdp = plan_run(config, run, sampling, whisper_windows=whisper_windows, log=lambda line: out("  " + line))
    out(plan.describe() + (f", fsdp {fsdp}" if fsdp > 1 else ""))
    return 0
