"""Ahead-of-time compiles for accelerators this host does not have (docs/aot.md).

XLA:GPU through JAX's CUDA plugin and XLA:TPU through libtpu compile the project's device
programs for a described device on a CPU-only host (``pip install -r requirements-aot.txt``);
their memory analysis says what a program needs on that device, nothing is run.

    from lipsync_jax.aot import get_target, program_footprint_for, target_footprints
    program_footprint_for("rtx4060-8g", abstract_models(config), chunk_batch=1)
    plan_memory(models, 8.0, footprints=target_footprints("rtx4060-8g"))  # the planner, for that card
"""

from lipsync_jax.accelerators import TARGETS, Target, UnknownTargetError, get_target, parse_targets
from lipsync_jax.aot.compile import CompileStats, compile_traced, tracing_for
from lipsync_jax.aot.cost import Cost, jaxpr_cost, roofline
from lipsync_jax.aot.devices import AOTUnavailableError, target_devices, target_mesh
from lipsync_jax.aot.footprint import CompileRefused, ResultCache, program_footprint_for, whisper_footprint_for
from lipsync_jax.aot.planning import target_footprints

__all__ = ["AOTUnavailableError", "CompileRefused", "CompileStats", "Cost", "ResultCache", "TARGETS", "Target",
           "UnknownTargetError", "compile_traced", "get_target", "jaxpr_cost", "parse_targets", "program_footprint_for",
           "roofline", "target_devices", "target_footprints", "target_mesh", "tracing_for", "whisper_footprint_for"]
