"""Compiling a traced program for a target and reading what XLA says about it.

``compile_traced(traced, target, items_per_call)`` lowers and compiles a ``jax.stages.Traced``
(whose arguments carry shardings on ``target_mesh`` devices) with XLA's compiler for the target,
and returns ``CompileStats``: the compiled memory analysis (arguments, outputs, temporaries,
generated code, aliased bytes; one device), the compile time, the jaxpr's FLOPs and modelled
memory traffic (aot/cost.py) and the roofline rate with the target's peaks named.

``tracing_for(platform)``: while a program is traced for a target, ``jax.default_backend()``
answers the target's platform. models/attention.py resolves its "auto" backend (cuDNN flash
attention on GPU, the Pallas splash kernel on TPU, for the calls its ``fused_supported`` admits,
else XLA) for the platform of the mesh the program is traced under, else for
``jax.default_backend()``, which on this host is "cpu"; the target's own choice is what should be
compiled.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from typing import Any

import jax

from lipsync_jax.accelerators import GIB, Target
from lipsync_jax.aot.cost import Cost, jaxpr_cost, roofline

_TRACING_LOCK = threading.Lock()
TRITON_TILE_ERROR = "Couldn't find output tile sizes"
TRITON_OFF = {"xla_gpu_enable_triton_gemm": False}


@contextlib.contextmanager
def tracing_for(platform: str):
    """``jax.default_backend()`` returns ``platform`` inside (see module doc); one tracer at a time."""
    with _TRACING_LOCK:
        original = jax.default_backend
        jax.default_backend = lambda: platform
        try:
            yield
        finally:
            jax.default_backend = original


@dataclasses.dataclass(frozen=True)
class CompileStats:
    """What XLA's compile of one program for one target says (bytes per device) plus its cost."""

    target: str
    argument_bytes: int
    output_bytes: int
    temp_bytes: int
    code_bytes: int
    alias_bytes: int
    compile_seconds: float
    flops: float  # per device per call (aot/cost.py)
    bytes_accessed: float  # modelled memory traffic per device per call (aot/cost.py)
    items_per_call: float  # frames (or clips x frames) one call produces per device
    roofline_compute_s: float
    roofline_memory_s: float
    unknown_loops: int = 0
    compiler_options: dict = dataclasses.field(default_factory=dict)  # non-default XLA options it needed
    flops_low: float | None = None  # flops / bytes_accessed with every lax.cond at its cheap branch
    bytes_low: float | None = None

    @property
    def total_bytes(self) -> int:
        return self.argument_bytes + self.output_bytes + self.temp_bytes + self.code_bytes - self.alias_bytes

    @property
    def roofline_seconds(self) -> float:
        return max(self.roofline_compute_s, self.roofline_memory_s)

    @property
    def roofline_items_per_second(self) -> float:
        return self.items_per_call / self.roofline_seconds if self.roofline_seconds > 0 else float("inf")

    @property
    def bound(self) -> str:
        return "compute" if self.roofline_compute_s >= self.roofline_memory_s else "memory"

    def gib(self, name: str) -> float:
        return getattr(self, name) / GIB

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> CompileStats:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


def memory_parts(compiled: Any) -> dict:
    """The compiled memory analysis as bytes (one device)."""
    m = compiled.memory_analysis()
    return dict(argument_bytes=int(m.argument_size_in_bytes), output_bytes=int(m.output_size_in_bytes),
                temp_bytes=int(m.temp_size_in_bytes), code_bytes=int(m.generated_code_size_in_bytes or 0),
                alias_bytes=int(m.alias_size_in_bytes or 0))


def compile_traced(traced: Any, target: Target, items_per_call: float, *, cost_divisor: int = 1,
                   log=None) -> CompileStats:
    """Lower + compile ``traced`` for ``target``; ``cost_divisor``: devices sharing the jaxpr's work
    (a jit over a data-parallel mesh traces the global program; a shard_map body is already one
    device's share: 1)."""
    cost: Cost = jaxpr_cost(traced.jaxpr)
    begin = time.perf_counter()
    lowered = traced.lower()
    options: dict = {}
    try:
        compiled = lowered.compile()
    except Exception as error:  # noqa: BLE001 - only the one known deviceless failure is retried
        if target.platform != "gpu" or TRITON_TILE_ERROR not in str(error):
            raise
        # XLA:GPU without a device cannot autotune, and its default Triton GEMM tiling finds no
        # tile for some float32 dots (Whisper's 12000 x 384 at 8 windows): cuBLAS for those
        options = dict(TRITON_OFF)
        if log:
            log(f"{target.name}: no Triton tiling without a device; compiling with {options}")
        compiled = lowered.compile(compiler_options=options)
    seconds = time.perf_counter() - begin
    if log:
        log(f"{target.name}: compiled in {seconds:.0f} s")
    flops, traffic = cost.flops / cost_divisor, cost.bytes / cost_divisor
    line = roofline(flops, traffic, items_per_call, target.peak_bf16_flops, target.memory_bandwidth)
    return CompileStats(target=target.name, **memory_parts(compiled), compile_seconds=round(seconds, 1), flops=flops,
                        bytes_accessed=traffic, items_per_call=float(items_per_call),
                        roofline_compute_s=line.seconds_compute, roofline_memory_s=line.seconds_memory,
                        unknown_loops=cost.unknown_loops, compiler_options=options,
                        flops_low=cost.flops_low / cost_divisor, bytes_low=cost.bytes_low / cost_divisor)
