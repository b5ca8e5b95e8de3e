"""The named accelerators a plan or a compile can target without having one (``--plan_for``, bench/aot.py).

The memory planner (``--plan_for TARGET``: pipeline/memory.py, serving/plan.py) and the
ahead-of-time compiler (lipsync_jax/aot) both read this table; it imports nothing of the package.

Each ``Target`` gives what XLA needs to describe the device on a CPU host (a GPU's
``GpuTargetConfigProto`` text in ``gpu_specs/``, a TPU's libtpu topology) and the public figures
the roofline uses: device memory, dense bf16 peak FLOP/s (matrix units, FP32 accumulation, no
sparsity) and memory bandwidth, with the document each figure comes from in ``source``.

The GeForce cards' bf16 peaks are the FP32-accumulate tensor rates (half their FP16-accumulate
rate: what a bf16 matmul with float32 accumulation gets on a consumer Ada card); NVIDIA publishes
them as "AI TOPS" (FP8, with sparsity), which is 8x the figure used here.
"""

from __future__ import annotations

import dataclasses
import os

GIB = 2 ** 30
SPEC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_specs")


class UnknownTargetError(ValueError):
    """A target name that is not in ``TARGETS``."""


@dataclasses.dataclass(frozen=True)
class Target:
    name: str  # the name on the command line (``--targets h100,tpu:v5e-1``)
    platform: str  # "gpu" or "tpu" (the compile-only client: JAX's CUDA plugin or libtpu)
    device: str  # the device it describes, in words
    memory_bytes: int  # device memory per chip
    peak_bf16_flops: float  # dense bf16 matrix FLOP/s per chip (float32 accumulation, no sparsity)
    memory_bandwidth: float  # bytes/s per chip
    source: str  # where the three figures above come from
    chips: int = 1  # chips the target describes (a host's worth: the training mesh uses them all)
    spec_file: str | None = None  # GPU: GpuTargetConfigProto text in gpu_specs/
    tpu_topology: str | None = None  # TPU: libtpu topology name ("v5e:1x1")
    tpu_chips_per_host: tuple[int, int, int] | None = None  # TPU: libtpu's chips_per_host_bounds
    tpu_accelerator_type: str | None = None  # TPU: TPU_ACCELERATOR_TYPE for libtpu's host probe
    consumer: bool = False  # a consumer card (the 6 / 8 GB inference budgets are checked on these)

    @property
    def spec_path(self) -> str | None:
        return os.path.join(SPEC_DIR, self.spec_file) if self.spec_file else None

    def spec_text(self) -> str:
        """The GpuTargetConfigProto text of a GPU target."""
        if self.spec_path is None:
            raise ValueError(f"target {self.name} is not a GPU: it has no GpuTargetConfigProto")
        with open(self.spec_path) as f:
            return f.read()

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB


_NVIDIA_H100 = "NVIDIA H100 Tensor Core GPU datasheet (SXM5: 989 TFLOP/s bf16 dense, 3.35 TB/s, 80 GB)"
TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("h100", "gpu", "NVIDIA H100 SXM5 80 GB", 84_942_979_072, 989e12, 3.35e12, _NVIDIA_H100, chips=8,
           spec_file="h100.txtpb"),
    Target("h200", "gpu", "NVIDIA H200 SXM 141 GB", 151_397_597_184, 989e12, 4.8e12,
           "NVIDIA H200 Tensor Core GPU datasheet (SXM: 989 TFLOP/s bf16 dense, 4.8 TB/s, 141 GB)", chips=8,
           spec_file="h200.txtpb"),
    Target("a100-40g", "gpu", "NVIDIA A100 SXM4 40 GB", 42_331_013_120, 312e12, 1.555e12,
           "NVIDIA A100 Tensor Core GPU datasheet (SXM 40 GB: 312 TFLOP/s bf16 dense, 1,555 GB/s)", chips=8,
           spec_file="a100_40g.txtpb"),
    Target("l4", "gpu", "NVIDIA L4 24 GB", 24 * GIB, 121e12, 300e9,
           "NVIDIA L4 Tensor Core GPU datasheet (121 TFLOP/s bf16 dense = 242 with sparsity, 300 GB/s, 24 GB)",
           spec_file="l4.txtpb"),
    Target("rtx4090", "gpu", "NVIDIA GeForce RTX 4090 24 GB", 24 * GIB, 165.2e12, 1008e9,
           "NVIDIA Ada Lovelace architecture whitepaper, RTX 4090 (165.2 TFLOP/s FP16/bf16 tensor with FP32 "
           "accumulate, dense; 1,008 GB/s; 24 GB)", spec_file="rtx4090.txtpb", consumer=True),
    Target("rtx4070", "gpu", "NVIDIA GeForce RTX 4070 12 GB", 12 * GIB, 58.3e12, 504e9,
           "NVIDIA RTX 4070 specifications (466 AI TOPS = FP8 sparse; /8 = 58.3 TFLOP/s bf16 with FP32 accumulate, "
           "dense; 504 GB/s; 12 GB)", spec_file="rtx4070.txtpb", consumer=True),
    Target("rtx4060-8g", "gpu", "NVIDIA GeForce RTX 4060 8 GB", 8 * GIB, 30.2e12, 272e9,
           "NVIDIA RTX 4060 specifications (242 AI TOPS = FP8 sparse; /8 = 30.2 TFLOP/s bf16 with FP32 accumulate, "
           "dense; 272 GB/s; 8 GB)", spec_file="rtx4060_8g.txtpb", consumer=True),
    Target("tpu:v5e-1", "tpu", "Google TPU v5e, 1 chip", 16 * GIB, 197e12, 819e9,
           "Google Cloud TPU v5e documentation (per chip: 197 TFLOP/s bf16, 16 GB HBM2e, 819 GB/s)",
           tpu_topology="v5e:1x1", tpu_chips_per_host=(1, 1, 1), tpu_accelerator_type="v5litepod-1"),
    Target("tpu:v6e-1", "tpu", "Google TPU v6e (Trillium), 1 chip", 32 * GIB, 918e12, 1640e9,
           "Google Cloud TPU v6e documentation (per chip: 918 TFLOP/s bf16, 32 GB HBM, 1,640 GB/s)",
           tpu_topology="v6e:1x1", tpu_chips_per_host=(1, 1, 1), tpu_accelerator_type="v6e-1"),
    Target("tpu:v5p-8", "tpu", "Google TPU v5p-8 (4 chips, 2x2x1)", 95 * 10 ** 9, 459e12, 2765e9,
           "Google Cloud TPU v5p documentation (per chip: 459 TFLOP/s bf16, 95 GB HBM2e, 2,765 GB/s)", chips=4,
           tpu_topology="v5p:2x2x1", tpu_accelerator_type="v5p-8"),
)}


def get_target(name: str) -> Target:
    """The target called ``name``; a one-line error listing the known names otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise UnknownTargetError(f"unknown AOT target {name!r}; known: {', '.join(TARGETS)}") from None


def parse_targets(names: str) -> list[Target]:
    """``"h100,l4,tpu:v5e-1"`` -> targets, in order (``"all"``: every target)."""
    if names.strip() == "all":
        return list(TARGETS.values())
    return [get_target(n.strip()) for n in names.split(",") if n.strip()]
