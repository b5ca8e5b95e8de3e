"""Device meshes and shardings derived by flax from logical axis names, for training and inference.

Training places its state and batches with these (``train/loop.py``); the inference engine places
its weights with the same rules when it splits them over an ``fsdp`` axis (``pipeline/placement.py``).

``config.mesh`` holds ``axes`` (names, e.g. ``("data", "fsdp")``) and ``shape`` (sizes; one
entry may be -1 = all remaining devices); optional ``rules`` (logical name -> mesh axis pairs,
default ``LOGICAL_RULES``) and ``frozen_shard_min_mib`` (frozen networks at least this large
are sharded, default ``FROZEN_SHARD_MIN_MIB``).

Parameters carry logical axis names (``nn.with_logical_partitioning``, see
``lipsync_jax.models.unet_layers``). The train state is built abstractly on boxed parameters
(``jax.eval_shape``), so Adam's moments carry the same boxes; ``nn.get_partition_spec`` reads
the logical specs of every leaf, ``nn.logical_to_mesh_sharding`` maps them through the rules,
and one pass (``fit_spec``) replaces what the mesh cannot hold: a dimension the mesh axis does
not divide, or a parameter too small to be worth a collective, stays replicated.

Frozen networks (VAE, SyncNet, LPIPS, VideoMAE) carry no names; their kernels (rank >= 2) get
``embed_out`` on the last (output) dimension, the name the UNet's kernels use for it, so the
same rules shard them over ``fsdp`` when the network is large, instead of a full copy per device.

    mesh = make_mesh(config.mesh)
    shardings = state_shardings(boxed_abstract_state, mesh, rules)   # unboxed tree of NamedSharding
    frozen_sh = frozen_shardings(abstract_frozen, mesh, rules)
    batch = shard_batch(local_batch, mesh)     # per-process data -> one global jax.Array
    step = with_activation_sharding(train_step, mesh, rules, batch_argnum=2)  # then jax.jit

Activations carry logical names too (``activation_batch``, ``activation_frames``, ...; see
``lipsync_jax.models.unet_layers``): ``with_activation_sharding`` traces a step under the mesh and
the rules, so the UNet's ``nn.with_logical_constraint`` calls split its activations over the
batch axes; without that context (inference, golden checks) they do nothing.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MeshAxes = str | tuple[str, ...] | None
Rules = Sequence[tuple[str, MeshAxes]]
# logical axis name -> mesh axis or axes (None = replicated along that dimension)
LOGICAL_RULES: tuple[tuple[str, MeshAxes], ...] = (
    # parameters (lipsync_jax.models.unet_layers)
    ("embed_out", "fsdp"),  # conv / dense output channels
    ("heads", "fsdp"),      # attention q/k/v output, attention-out input
    ("mlp", "fsdp"),        # feed-forward hidden
    ("embed_in", None),
    ("embed", None),
    ("conv_h", None),
    ("conv_w", None),
    # activations (unet_layers.VIDEO_AXES / TOKEN_AXES): split over the batch like the input
    # batch; frames, spatial positions and channels whole on every device (FSDP gathers weights)
    ("activation_batch", ("data", "fsdp")),
    ("activation_frames", None),
    ("activation_height", None),
    ("activation_width", None),
    ("activation_length", None),
    ("activation_embed", None),
)
ACTIVATION_BATCH = "activation_batch"
MIN_SHARD_SIZE = 2 ** 12  # parameters smaller than this stay replicated (not worth a collective)
FROZEN_SHARD_MIN_MIB = 64.0  # frozen networks at least this large are sharded over fsdp
KERNEL_OUT = "embed_out"  # logical name given to the last dimension of unannotated frozen kernels


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
            raise MeshConfigError(f"config.mesh.shape {tuple(shape)}: {num_devices} devices are not divisible "
                                  f"by {known}")
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
        grid = mesh_utils.create_device_mesh(shape, devices)
    except (ValueError, NotImplementedError):
        # create_device_mesh found no topology-aware layout for this shape (a TPU torus it cannot
        # split, a contiguity it cannot satisfy): plain device order is correct, only slower
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, axes)


def _mesh_axes(value: Any) -> MeshAxes:
    if value is None or isinstance(value, str):
        return value
    return tuple(str(a) for a in value)


def rules_from_config(mesh_config: Mapping[str, Any] | None) -> tuple[tuple[str, MeshAxes], ...]:
    rules = mesh_config.get("rules") if mesh_config is not None else None
    return tuple((str(a), _mesh_axes(b)) for a, b in rules) if rules else LOGICAL_RULES


def _axis_sizes(mesh: Any) -> Mapping[str, int]:
    return mesh if isinstance(mesh, Mapping) else dict(mesh.shape)


def _present(axes: MeshAxes, sizes: Mapping[str, int]) -> MeshAxes:
    """``axes`` without the mesh axes this mesh lacks (None when none is left)."""
    if axes is None or isinstance(axes, str):
        return axes if axes in sizes else None
    kept = tuple(a for a in axes if a in sizes)
    return kept if kept else None


def _rules_for_mesh(rules: Rules, mesh: Any) -> list[tuple[str, MeshAxes]]:
    """``rules`` with mesh axes that this mesh lacks mapped to None (replicated)."""
    sizes = _axis_sizes(mesh)
    return [(name, _present(axes, sizes)) for name, axes in rules]


def fit_spec(spec: P, shape: Sequence[int], mesh: Any, min_size: int = MIN_SHARD_SIZE) -> P:
    """The fallback pass over a mesh ``PartitionSpec``: a small parameter, a dimension its mesh
    axis does not divide, an axis the mesh lacks, or an axis used twice -> replicated there."""
    if math.prod(shape) < min_size:
        return P()
    sizes = _axis_sizes(mesh)
    used: set[str] = set()
    out = []
    for i, dim in enumerate(shape):
        axis = tuple(spec)[i] if i < len(tuple(spec)) else None
        if not isinstance(axis, str) or axis not in sizes or axis in used or dim % sizes[axis]:
            out.append(None)
            continue
        used.add(axis)
        out.append(axis)
    return P(*out)


def spec_for(logical: P | None, shape: Sequence[int], mesh: Any, rules: Rules = LOGICAL_RULES) -> P:
    """Mesh ``PartitionSpec`` of one parameter from its logical names (flax's rule mapping,
    then ``fit_spec``)."""
    if logical is None or not tuple(logical):
        return P()
    return fit_spec(nn.logical_to_mesh_axes(tuple(logical), _rules_for_mesh(rules, mesh)), shape, mesh)


def box_params(params: Any, logical_specs: Any) -> Any:
    """Wrap the leaves of ``params`` (arrays or ShapeDtypeStructs) in ``nn.Partitioned`` boxes
    carrying their logical names (``logical_specs``: a tree of ``PartitionSpec`` or None)."""
    if logical_specs is None:
        return params

    def box(spec, x):
        names = tuple(spec) if spec is not None else ()
        return nn.Partitioned(x, names) if names and len(names) == len(x.shape) else x
    return jax.tree.map(box, logical_specs, params, is_leaf=lambda s: isinstance(s, P) or s is None)


def tree_shardings(boxed: Any, mesh: Any, rules: Rules = LOGICAL_RULES) -> Any:
    """A ``NamedSharding`` per leaf of the UNBOXED ``boxed`` tree: ``nn.get_partition_spec`` ->
    ``nn.logical_to_mesh_sharding`` with ``rules`` -> ``fit_spec``. ``mesh``: a ``Mesh`` or an
    ``AbstractMesh`` (device-free tests)."""
    logical = nn.get_partition_spec(boxed)
    mapped = nn.logical_to_mesh_sharding(logical, mesh, _rules_for_mesh(rules, mesh))
    abstract = nn.meta.unbox(boxed)
    return jax.tree.map(lambda s, x: NamedSharding(mesh, fit_spec(s.spec, x.shape, mesh)), mapped, abstract,
                        is_leaf=lambda s: isinstance(s, NamedSharding))


def state_shardings(boxed_abstract_state: Any, mesh: Any, rules: Rules = LOGICAL_RULES) -> Any:
    """Shardings of a whole TrainState built (``jax.eval_shape``) on boxed parameters: params and
    the optimizer leaves that mirror them (Adam's mu/nu carry the same boxes) by their names;
    counts, step and rng replicated."""
    return tree_shardings(boxed_abstract_state, mesh, rules)


def param_shardings(logical_specs: Any, shapes: Any, mesh: Any, rules: Rules = LOGICAL_RULES) -> Any:
    """A ``NamedSharding`` per parameter leaf of ``shapes`` from a matching tree of logical
    ``PartitionSpec`` s (None replicates everything)."""
    return tree_shardings(box_params(shapes, logical_specs), mesh, rules)


def _nbytes(tree: Any) -> int:
    return int(sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree)))


def box_kernels(tree: Any) -> Any:
    """Unannotated frozen weights -> boxes naming the last dimension of every kernel (rank >= 2)
    ``embed_out`` (output features / channels); vectors stay unboxed (replicated)."""
    def box(x):
        if len(x.shape) < 2:
            return x
        return nn.Partitioned(x, (None,) * (len(x.shape) - 1) + (KERNEL_OUT,))
    return jax.tree.map(box, tree)


def frozen_shardings(frozen: Mapping[str, Any], mesh: Any, rules: Rules = LOGICAL_RULES,
                     min_mib: float = FROZEN_SHARD_MIN_MIB) -> dict[str, Any]:
    """Per frozen network (``{name: params}``, arrays or ShapeDtypeStructs): replicated when it
    is smaller than ``min_mib``, else its kernels sharded by the same rules as the trained ones."""
    out = {}
    for name, tree in frozen.items():
        if _nbytes(tree) < min_mib * 2 ** 20:
            out[name] = jax.tree.map(lambda _x: NamedSharding(mesh, P()), tree)
        else:
            out[name] = tree_shardings(box_kernels(tree), mesh, rules)
    return out


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


def activation_rules(rules: Rules, mesh: Any, global_batch: int) -> list[tuple[str, MeshAxes]]:
    """``rules`` for this mesh with ``activation_batch`` cut to the longest prefix of its mesh axes
    whose size divides ``global_batch`` (the fallback ``batch_axes`` applies to the input batch):
    a constraint never asks for an uneven split."""
    sizes = _axis_sizes(mesh)
    out = []
    for name, axes in _rules_for_mesh(rules, mesh):
        if name == ACTIVATION_BATCH and axes is not None:
            seq = (axes,) if isinstance(axes, str) else tuple(axes)
            n = len(seq)
            while n and global_batch % math.prod(sizes[a] for a in seq[:n]):
                n -= 1
            axes = seq[:n] if n else None
        out.append((name, axes))
    return out


def with_activation_sharding(fn: Callable, mesh: Mesh, rules: Rules, batch_argnum: int) -> Callable:
    """``fn`` traced under ``mesh`` and the logical ``rules`` (``activation_rules`` for the global
    batch of argument ``batch_argnum``, a dict of arrays), so the models' activation constraints
    (``nn.with_logical_constraint``, no-ops outside such a context) become sharding constraints."""
    @functools.wraps(fn)
    def wrapped(*args):
        leaves = [x for x in jax.tree.leaves(args[batch_argnum]) if getattr(x, "ndim", 0) >= 1]
        global_batch = int(leaves[0].shape[0]) if leaves else 1
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh), \
                nn.logical_axis_rules(activation_rules(rules, mesh, global_batch)):
            return fn(*args)
    return wrapped


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
