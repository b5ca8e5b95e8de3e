"""The memory planner's footprints for a named accelerator that is not here (``--plan_for TARGET``).

``target_footprints(target)`` is a ``pipeline.memory.FootprintSource`` whose chunk-program and
Whisper footprints are XLA's GPU/TPU compiles for ONE chip of the target
(``program_footprint_for`` / ``whisper_footprint_for``, cached in ``aot_estimates.json`` beside the
compile cache), when that compiler is installed (``requirements-aot.txt``). Without it, the
planner falls back to this host's CPU compile modelling a native-bf16 device (an upper bound of
what the target's compiler plans: the 512 px chunk program is 11.7 GiB modelled against 7.6 GiB
compiled for a GPU, and "auto" attention is XLA attention there, not cuDNN's), and its label says
so: ``MemoryPlan.describe()`` names the estimate used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from lipsync_jax.accelerators import Target, get_target
from lipsync_jax.aot.devices import REQUIREMENTS, AOTUnavailableError, target_devices
from lipsync_jax.aot.footprint import program_footprint_for, whisper_footprint_for
from lipsync_jax.pipeline.memory import Footprint, FootprintSource, local_footprints

_FIELDS = ("argument_bytes", "output_bytes", "temp_bytes", "code_bytes", "alias_bytes", "compile_seconds",
           "estimate")


def compiler_name(target: Target) -> str:
    return f"XLA:{target.platform.upper()}"


def _footprint(parts: dict) -> Footprint:
    return Footprint(**{name: parts[name] for name in _FIELDS})


def target_footprints(target: Target | str, *, cache_dir: str | None = None,
                      estimate: str = "native_bf16") -> FootprintSource:
    """The planner's footprints for ``target`` (module doc); ``cache_dir``: where compiled estimates
    are kept (default: the compile cache folder); ``estimate``: the CPU fallback's mode."""
    target = get_target(target) if isinstance(target, str) else target
    try:
        target_devices(target, 1)  # its compiler is installed (nothing compiled yet)
    except AOTUnavailableError:
        cpu = local_footprints(jax.local_devices(backend="cpu")[0], cache_dir=cache_dir, estimate=estimate)
        missing = "JAX's CUDA plugin" if target.platform == "gpu" else "libtpu"
        return dataclasses.replace(cpu, target=target.name, label=(
            f"{cpu.label}: {missing} is not installed, so no {compiler_name(target)} compile "
            f"(pip install -r {REQUIREMENTS})"))

    def program(models: Any, **settings: Any) -> Footprint:
        return _footprint(program_footprint_for(target, models, cache_dir=cache_dir, **settings))

    def whisper(models: Any, windows: int) -> Footprint:
        return _footprint(whisper_footprint_for(target, models, batch=windows, cache_dir=cache_dir))

    return FootprintSource(platform=target.platform, program=program, whisper=whisper, target=target.name,
                           label=f"{compiler_name(target)} compile for {target.name}, {target.device}")
