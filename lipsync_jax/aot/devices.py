"""Compile-only devices of a target on a host that does not have them.

GPU targets: JAX's CUDA plugin (``requirements-aot.txt``) describes an NVIDIA GPU from a
``GpuTargetConfigProto`` (``jax.experimental.topologies.get_topology_desc(name, "cuda",
target_config=..., topology="1x1xN")``), with the plugin's CUDA-version probe skipped
(``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``: there is no driver to compare with). TPU targets: libtpu
describes a TPU slice (``get_topology_desc(platform="tpu", topology_name=...)``). Programs lowered
with ``ShapeDtypeStruct`` s sharded over these devices compile with XLA's GPU/TPU compiler;
nothing can be placed on them or run.
"""

from __future__ import annotations

import functools
import os

import numpy as np
from jax.sharding import Mesh

from lipsync_jax.accelerators import Target, get_target

REQUIREMENTS = "requirements-aot.txt"


class AOTUnavailableError(RuntimeError):
    """The compiler for a target is not installed (JAX's CUDA plugin or libtpu)."""


def _gpu_plugin_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except ModuleNotFoundError:  # no jax_plugins package at all
        return False


def _libtpu_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("libtpu") is not None


@functools.cache
def _devices(name: str, count: int) -> tuple:
    target = get_target(name)
    from jax.experimental import topologies

    if target.platform == "gpu":
        if not _gpu_plugin_installed():
            raise AOTUnavailableError(f"AOT target {name}: JAX's CUDA plugin is not installed "
                                      f"(pip install -r {REQUIREMENTS})")
        os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
        topology = topologies.get_topology_desc(name, "cuda", target_config=target.spec_text(),
                                                topology=f"1x1x{count}")
        return tuple(topology.devices)
    if not _libtpu_installed():
        raise AOTUnavailableError(f"AOT target {name}: libtpu is not installed (pip install -r {REQUIREMENTS})")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", target.tpu_accelerator_type or "")  # libtpu's host probe
    kwargs = {"chips_per_host_bounds": list(target.tpu_chips_per_host)} if target.tpu_chips_per_host else {}
    topology = topologies.get_topology_desc(platform="tpu", topology_name=target.tpu_topology, **kwargs)
    return tuple(topology.devices)[:count]


def target_devices(target: Target | str, count: int | None = None) -> list:
    """``count`` (default: all the target's chips) compile-only devices of ``target``;
    ``AOTUnavailableError`` (one line naming requirements-aot.txt) when its compiler is missing."""
    target = get_target(target) if isinstance(target, str) else target
    count = int(count or target.chips)
    if not 1 <= count <= target.chips:
        raise ValueError(f"AOT target {target.name} has {target.chips} chip(s); asked for {count}")
    return list(_devices(target.name, count))


def target_mesh(target: Target | str, shape: tuple[int, ...] = (1,), axes: tuple[str, ...] = ("data",)) -> Mesh:
    """A ``Mesh`` of ``prod(shape)`` compile-only devices of ``target`` with axis names ``axes``."""
    devices = target_devices(target, int(np.prod(shape)))
    return Mesh(np.asarray(devices, dtype=object).reshape(shape), axes)
