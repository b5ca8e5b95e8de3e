"""FLOPs and memory traffic of a traced program, counted on its jaxpr, and the roofline rate.

Why not XLA's ``cost_analysis()``: a compile-only GPU client returns none, and XLA's HLO cost
analysis counts a while loop's body ONCE (a ``lax.scan`` of 20 matmuls reports one matmul), while
the chunk program is loops all the way down (``lax.map`` over chunks and VAE slices, the sampling
``lax.scan``). This module walks the jaxpr instead and multiplies each ``scan`` body by its length.

What is counted (per program call, for the jaxpr given: a ``shard_map`` body is one device's share):
- ``flops``: 2 x multiply-adds of every ``dot_general`` and convolution, the fused attention
  kernels' matmuls (4 b h lq lk d forward; 2.5 times that backward), and one FLOP per output
  element of every other arithmetic op (XLA's convention). ``cond``: the most expensive branch.
- ``bytes``: a memory-traffic model in which elementwise ops are fused into their neighbours (what
  XLA's GPU/TPU fusion does for most of them): operands + results of every matmul, convolution,
  attention kernel and reduction. Not a measurement; between the unfused HLO's bytes (far higher)
  and reading the weights once per UNet call (lower).
- ``unknown_loops``: ``while_loop`` bodies with an unknown trip count (counted once).
- ``flops_low`` / ``bytes_low``: the same with the CHEAPEST branch of every ``cond`` (DeepCache's
  shallow steps: ``interpolate_branches`` weighs the two by how many steps take each).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

# primitives that only move or reinterpret data: no FLOPs, and (fused) no traffic of their own
_MOVES = frozenset("""reshape broadcast_in_dim transpose convert_element_type slice dynamic_slice
dynamic_update_slice concatenate pad squeeze expand_dims gather scatter select_n iota copy copy_p
rev device_put sharding_constraint stop_gradient bitcast_convert_type random_wrap random_unwrap
random_bits random_seed random_fold_in threefry2x32 split_p split optimization_barrier
mesh_cast reshard pvary axis_index""".split())
_REDUCTIONS = frozenset("reduce_sum reduce_max reduce_min reduce_prod reduce_and reduce_or argmax argmin "
                        "cumsum cumlogsumexp cummax cummin".split())


@dataclasses.dataclass
class Cost:
    flops: float = 0.0
    bytes: float = 0.0
    unknown_loops: int = 0
    flops_low: float | None = None  # None: equal to flops (no cond with cheaper branches)
    bytes_low: float | None = None

    def __post_init__(self):
        self.flops_low = self.flops if self.flops_low is None else self.flops_low
        self.bytes_low = self.bytes if self.bytes_low is None else self.bytes_low

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes, self.unknown_loops + other.unknown_loops,
                    self.flops_low + other.flops_low, self.bytes_low + other.bytes_low)

    def scaled(self, factor: float) -> Cost:
        return Cost(self.flops * factor, self.bytes * factor, self.unknown_loops, self.flops_low * factor,
                    self.bytes_low * factor)


def interpolate_branches(cost: Cost, expensive_fraction: float) -> Cost:
    """``cost`` where a fraction ``expensive_fraction`` of the cond evaluations take the expensive
    branch and the rest the cheap one (one kind of cond in the program, e.g. DeepCache's)."""
    f = float(expensive_fraction)
    return Cost(cost.flops_low + f * (cost.flops - cost.flops_low), cost.bytes_low + f * (cost.bytes - cost.bytes_low),
                cost.unknown_loops)


def _size(aval: Any) -> int:
    return int(math.prod(getattr(aval, "shape", ())))


def _nbytes(aval: Any) -> int:
    dtype = getattr(aval, "dtype", None)
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:  # PRNG key arrays and other extended dtypes
        itemsize = 8
    return _size(aval) * itemsize


def _io_bytes(eqn) -> int:
    return sum(_nbytes(v.aval) for v in eqn.invars if hasattr(v, "aval")) + sum(_nbytes(v.aval) for v in eqn.outvars)


def _dot_flops(eqn) -> float:
    (lhs_contract, _), _ = eqn.params["dimension_numbers"]
    lhs = eqn.invars[0].aval
    contracted = math.prod(lhs.shape[d] for d in lhs_contract)
    return 2.0 * _size(eqn.outvars[0].aval) * contracted


def _conv_flops(eqn) -> float:
    rhs = eqn.invars[1].aval
    out_features = rhs.shape[eqn.params["dimension_numbers"].rhs_spec[0]]
    return 2.0 * _size(eqn.outvars[0].aval) * (_size(rhs) // out_features)


def _attention_flops(eqn) -> float:
    q, k = eqn.invars[0].aval, eqn.invars[1].aval  # (b, lq, h, d), (b, lk, h, d) (BTNH layout)
    b, lq, h, d = q.shape
    forward = 4.0 * b * h * lq * k.shape[1] * d
    return forward * (2.5 if "bwd" in eqn.primitive.name else 1.0)


def _inner(params: dict) -> list:
    """The jaxprs an equation's params hold (open ones: ``.jaxpr`` of closed ones)."""
    found = []
    for value in params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            inner = getattr(item, "jaxpr", None)
            if hasattr(item, "eqns"):
                found.append(item)
            elif inner is not None and hasattr(inner, "eqns"):
                found.append(inner)
    return found


def jaxpr_cost(jaxpr: Any) -> Cost:
    """The ``Cost`` of a (closed or open) jaxpr, loops multiplied out (module doc)."""
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    total = Cost()
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "scan":
            total += jaxpr_cost(eqn.params["jaxpr"]).scaled(int(eqn.params["length"]))
        elif name == "while":
            body = jaxpr_cost(eqn.params["body_jaxpr"]) + jaxpr_cost(eqn.params["cond_jaxpr"])
            total += Cost(body.flops, body.bytes, body.unknown_loops + 1, body.flops_low, body.bytes_low)
        elif name == "cond":
            branches = [jaxpr_cost(b) for b in eqn.params["branches"]]
            high = max(branches, key=lambda c: c.flops)
            low = min(branches, key=lambda c: c.flops_low)
            total += Cost(high.flops, high.bytes, max(c.unknown_loops for c in branches), low.flops_low, low.bytes_low)
        elif name == "dot_general":
            total += Cost(_dot_flops(eqn), _io_bytes(eqn))
        elif name == "conv_general_dilated":
            total += Cost(_conv_flops(eqn), _io_bytes(eqn))
        elif name.startswith("dot_product_attention") and "fp8" not in name:
            total += Cost(_attention_flops(eqn), _io_bytes(eqn))
        elif _inner(eqn.params):  # pjit, remat, custom_jvp/vjp calls, shard_map, ...: their bodies once
            for inner in _inner(eqn.params):
                total += jaxpr_cost(inner)
        elif name in _REDUCTIONS:
            total += Cost(float(sum(_size(v.aval) for v in eqn.invars if hasattr(v, "aval"))), _io_bytes(eqn))
        elif name not in _MOVES:
            total += Cost(float(sum(_size(v.aval) for v in eqn.outvars)), 0.0)
    return total


@dataclasses.dataclass(frozen=True)
class Roofline:
    """Upper bound of a program's rate on one chip: the slower of the compute and memory bounds."""

    seconds_compute: float  # flops / peak FLOP/s
    seconds_memory: float  # bytes / bandwidth
    items_per_call: float  # frames (or clips) one call produces on this chip

    @property
    def seconds(self) -> float:
        return max(self.seconds_compute, self.seconds_memory)

    @property
    def bound(self) -> str:
        return "compute" if self.seconds_compute >= self.seconds_memory else "memory"

    @property
    def items_per_second(self) -> float:
        return self.items_per_call / self.seconds if self.seconds > 0 else float("inf")


def roofline(flops: float, bytes_accessed: float, items_per_call: float, peak_flops: float,
             bandwidth: float) -> Roofline:
    """The roofline of one call: ``flops`` at ``peak_flops`` FLOP/s vs ``bytes_accessed`` at
    ``bandwidth`` bytes/s (both per chip)."""
    if peak_flops <= 0 or bandwidth <= 0:
        raise ValueError(f"peak FLOP/s and bandwidth must be positive, got {peak_flops} and {bandwidth}")
    return Roofline(float(flops) / peak_flops, float(bytes_accessed) / bandwidth, float(items_per_call))
