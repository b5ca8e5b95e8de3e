"""Device mesh and shardings for training.

``config.mesh`` holds ``axes`` (names, e.g. ``("data", "fsdp")``) and ``shape`` (sizes; one
entry may be -1 = all remaining devices). The batch is split over every mesh axis that divides
it (data parallel, and FSDP's extra batch split); parameters carry logical axis names (see
``lipsync_jax.models.unet_layers``) which ``LOGICAL_RULES`` map to mesh axes: FSDP shards the
output/head/mlp dimension of every large kernel, everything else is replicated.

    mesh = make_mesh(config.mesh)
    shardings = param_shardings(logical_specs, param_shapes, mesh)
    batch = shard_batch(local_batch, mesh)     # per-process data -> one global jax.Array
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

# logical axis name -> mesh axis (None = replicated along that dimension)
LOGICAL_RULES: tuple[tuple[str, str | None], ...] = (
    ("embed_out", "fsdp"),  # conv / dense output channels
    ("heads", "fsdp"),      # attention q/k/v output, attention-out input
    ("mlp", "fsdp"),        # feed-forward hidden
    ("embed_in", None),
    ("embed", None),
    ("conv_h", None),
    ("conv_w", None),
)
MIN_SHARD_SIZE = 2 ** 12  # parameters smaller than this stay replicated (not worth a collective)


class MeshConfigError(ValueError):
    """``config.mesh`` does not fit the available devices."""


def mesh_shape(axes: Sequence[str], shape: Sequence[int], num_devices: int) -> tuple[int, ...]:
    """Resolve one -1 entry to the remaining devices; check the product."""
    if len(axes) != len(shape):
        raise MeshConfigError(f"config.mesh: axes {tuple(axes)} and shape {tuple(shape)} differ in length")
    shape = [int(s) for s in shape]
    free = [i for i, s in enumerate(shape) if s == -1]
    if len(free) > 1 or any(s == 0 or s < -1 for s in shape):
        raise MeshConfigError(f"config.mesh.shape {tuple(shape)}: positive sizes and at most one -1")
    known = math.prod(s for s in shape if s != -1)
    if free:
        if num_devices % known:
            raise MeshConfigError(f"config.mesh.shape {tuple(shape)}: {num_devices} devices are not divisible by {known}")
        shape[free[0]] = num_devices // known
    if math.prod(shape) != num_devices:
        raise MeshConfigError(f"config.mesh.shape {tuple(shape)} needs {math.prod(shape)} devices, "
                              f"{num_devices} are available")
    return tuple(shape)


def make_mesh(mesh_config: Mapping[str, Any], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ``Mesh`` over all (global) devices with ``mesh_config.axes`` / ``mesh_config.shape``."""
    devices = list(devices if devices is not None else jax.devices())
    axes = tuple(mesh_config["axes"])
    shape = mesh_shape(axes, mesh_config["shape"], len(devices))
    try:
        grid = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
    except Exception:  # noqa: BLE001 - e.g. CPU devices of several processes: plain order is fine
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, axes)


def _rules_dict(rules: Sequence[tuple[str, str | None]]) -> dict[str, str | None]:
    return {name: axis for name, axis in rules}


def spec_for(logical: P | None, shape: Sequence[int], mesh: Mesh,
             rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> P:
    """Mesh ``PartitionSpec`` of one parameter: logical names through ``rules``; a dimension
    that the mesh axis does not divide, an axis absent from the mesh, an axis used twice, or a
    small parameter falls back to replicated."""
    if logical is None or math.prod(shape) < MIN_SHARD_SIZE:
        return P()
    table = _rules_dict(rules)
    used: set[str] = set()
    out = []
    for name, dim in zip(tuple(logical), shape):
        axis = table.get(name) if name is not None else None
        if axis is None or axis not in mesh.shape or axis in used or dim % mesh.shape[axis]:
            out.append(None)
            continue
        used.add(axis)
        out.append(axis)
    return P(*out)


def param_shardings(logical_specs: Any, shapes: Any, mesh: Mesh,
                    rules: Sequence[tuple[str, str | None]] = LOGICAL_RULES) -> Any:
    """A ``NamedSharding`` per parameter leaf of ``shapes`` (arrays or ShapeDtypeStructs);
    ``logical_specs`` is the matching tree of logical ``PartitionSpec`` s (``None`` leaves are
    replicated). ``logical_specs=None`` replicates everything."""
    if logical_specs is None:
        return jax.tree.map(lambda _x: NamedSharding(mesh, P()), shapes)
    return jax.tree.map(lambda spec, x: NamedSharding(mesh, spec_for(spec, x.shape, mesh, rules)),
                        logical_specs, shapes, is_leaf=lambda s: isinstance(s, P) or s is None)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_axes(mesh: Mesh, global_batch: int) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over: all of them when they divide the batch,
    else the longest prefix that does (e.g. only ``data``), else none (replicated batch)."""
    axes = tuple(mesh.axis_names)
    for n in range(len(axes), 0, -1):
        if global_batch % math.prod(mesh.shape[a] for a in axes[:n]) == 0:
            return axes[:n]
    return ()


def batch_sharding(mesh: Mesh, global_batch: int) -> NamedSharding:
    axes = batch_axes(mesh, global_batch)
    return NamedSharding(mesh, P(axes if axes else None))


def shard_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Per-process host arrays (leading dim = this process's share of the batch) -> global
    ``jax.Array`` s split along the batch over the mesh (``jax.make_array_from_process_local_data``)."""
    out = {}
    for name, value in local_batch.items():
        value = np.asarray(value)
        global_batch = value.shape[0] * jax.process_count()
        sharding = batch_sharding(mesh, global_batch)
        out[name] = jax.make_array_from_process_local_data(sharding, value, (global_batch,) + value.shape[1:])
    return out
