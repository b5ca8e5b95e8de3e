"""The engine's device mesh ``(data, fsdp)`` and where the weights live on it.

    mesh = engine_mesh(devices, fsdp=2)                  # 8 devices -> data 4 x fsdp 2
    unet_params, vae_params = place_weights(models, mesh)

Chunk batches are split over ``data`` only: every fsdp group (the ``fsdp`` devices of one data
row) holds the same chunks. With ``fsdp == 1`` (the default) the weights are replicated on every
device, as before. With ``fsdp > 1`` they are split over the fsdp axis by the TRAINING rules
(``lipsync_jax.sharding``): the UNet's kernels by their logical axis names
(``unet3d.logical_axes``: output channels, attention heads and the feed-forward hidden dimension
-> ``fsdp``), the VAE, which carries no names, as training treats its frozen networks
(``frozen_shardings``: every kernel's output dimension, only when the VAE is at least
``FROZEN_SHARD_MIN_MIB`` large, else replicated). Per leaf, a dimension fsdp does not divide and a
parameter too small to be worth a collective stay replicated (``fit_spec``). Inside the chunk
program the ``data`` axis is manual (``shard_map``) and the ``fsdp`` axis is left to the compiler,
which gathers or splits the work around the sharded weights; the frames equal one device's
within float32 roundoff (tests/pipeline/test_engine_fsdp.py).

``choose_fsdp`` picks the smallest fsdp (a divisor of the local device count) for which the
weights' share fits a device-memory budget (``--max_vram``, else the device's own limit when the
backend reports one; none on CPU -> 1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from lipsync_jax import sharding
from lipsync_jax.models import unet3d
from lipsync_jax.pipeline.errors import InferenceError

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# the weights may take at most this share of a device's budget before fsdp is raised (the rest is
# for the program's activations, the queued chunk batches and Whisper)
WEIGHT_SHARE = 0.5


class MeshError(InferenceError, ValueError):
    """The requested fsdp size does not fit the local devices."""


def default_chunk_batch(platform: str | None = None) -> int:
    """Chunks per device per program call: 1 on CPU (no gain from batching there); 2 on GPU/TPU
    until the GPU suite (bench/gpu_suite.sh) has measured the best value."""
    platform = platform or jax.default_backend()
    return 1 if platform == "cpu" else 2


def engine_mesh(devices: Sequence[Any] | None = None, fsdp: int = 1) -> Mesh:
    """A ``(data, fsdp)`` mesh over ``devices`` (default: all local devices), ``data = n / fsdp``."""
    devices = list(jax.local_devices() if devices is None else devices)
    fsdp = check_fsdp(fsdp, len(devices))
    return sharding.make_mesh({"axes": (DATA_AXIS, FSDP_AXIS), "shape": (len(devices) // fsdp, fsdp)}, devices)


def check_fsdp(fsdp: int, num_devices: int) -> int:
    """``fsdp``, or ``MeshError`` (one line) unless it divides ``num_devices``."""
    fsdp = int(fsdp)
    if fsdp < 1 or num_devices % fsdp:
        raise MeshError(f"--fsdp {fsdp} must divide the number of local devices ({num_devices}): "
                        f"choose one of {', '.join(map(str, fsdp_choices(num_devices)))}")
    return fsdp


def fsdp_choices(num_devices: int) -> list[int]:
    return [d for d in range(1, num_devices + 1) if num_devices % d == 0]


def axis_size(mesh: Mesh, axis: str) -> int:
    return int(dict(mesh.shape).get(axis, 1))


def manual_axes(mesh: Mesh) -> frozenset[str]:
    """The mesh axes the chunk program's ``shard_map`` handles itself: all of them while the
    weights are replicated (fsdp 1: a fully manual program), else ``data`` only (the
    compiler partitions the work over the fsdp-sharded weights)."""
    if axis_size(mesh, FSDP_AXIS) > 1:
        return frozenset({DATA_AXIS})
    return frozenset(mesh.axis_names)


def shard_chunks(body: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    """``body`` per chunk shard (``data``), see ``manual_axes``."""
    return jax.shard_map(body, mesh=mesh, in_specs=in_specs, out_specs=out_specs, axis_names=manual_axes(mesh),
                         check_vma=False)


def weight_shardings(models, mesh: Mesh, *, frozen_min_mib: float | None = None,
                     logical: Any = None) -> tuple[Any, Any]:
    """(UNet, VAE) trees of ``NamedSharding`` on ``mesh`` (module doc). ``frozen_min_mib``: the VAE
    is split only when at least this large (default training's ``FROZEN_SHARD_MIN_MIB``);
    ``logical``: the UNet's ``unet3d.logical_axes`` when the caller has them (else traced here)."""
    replicated = NamedSharding(mesh, P())
    if dict(mesh.shape).get(FSDP_AXIS, 1) == 1:
        rep = lambda tree: jax.tree.map(lambda _x: replicated, tree)  # noqa: E731
        return rep(models.unet_params), rep(models.vae_params)
    logical = unet3d.logical_axes(models.unet_apply.module) if logical is None else logical
    unet = sharding.param_shardings(logical, models.unet_params, mesh, sharding.LOGICAL_RULES)
    min_mib = sharding.FROZEN_SHARD_MIN_MIB if frozen_min_mib is None else float(frozen_min_mib)
    vae = sharding.frozen_shardings({"vae": models.vae_params}, mesh, sharding.LOGICAL_RULES, min_mib)["vae"]
    return unet, vae


def place_weights(models, mesh: Mesh, **kw) -> tuple[Any, Any]:
    """(UNet, VAE) parameters on ``mesh`` with ``weight_shardings``."""
    unet_sh, vae_sh = weight_shardings(models, mesh, **kw)
    return jax.device_put(models.unet_params, unet_sh), jax.device_put(models.vae_params, vae_sh)


def weight_bytes(models) -> int:
    return int(sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize
                   for x in jax.tree.leaves((models.unet_params, models.vae_params))))


def device_memory_bytes(device) -> int | None:
    """The device's memory limit as its backend reports it (GPU/TPU), None when unknown (CPU)."""
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    limit = (stats or {}).get("bytes_limit")
    return int(limit) if limit else None


def sharded_weight_bytes(models, fsdp: int, num_devices: int, **kw) -> int:
    """Bytes of the UNet + VAE weights on ONE device of a ``(num_devices / fsdp, fsdp)`` mesh
    (``weight_shardings`` on a device-free ``AbstractMesh``)."""
    if int(fsdp) == 1:
        return weight_bytes(models)
    mesh = jax.sharding.AbstractMesh((int(num_devices) // int(fsdp), int(fsdp)), (DATA_AXIS, FSDP_AXIS))
    shardings = weight_shardings(models, mesh, **kw)
    leaves = jax.tree.leaves((models.unet_params, models.vae_params))
    return int(sum(int(np.prod(s.shard_shape(x.shape))) * np.dtype(x.dtype).itemsize
                   for x, s in zip(leaves, jax.tree.leaves(shardings))))


def choose_fsdp(models, budget: int | None, num_devices: int, **kw) -> int:
    """The smallest fsdp dividing ``num_devices`` whose per-device weights take at most
    ``WEIGHT_SHARE`` of ``budget`` bytes (1 without a budget; ``num_devices`` if none does)."""
    if not budget:
        return 1
    for fsdp in fsdp_choices(num_devices):
        if sharded_weight_bytes(models, fsdp, num_devices, **kw) <= WEIGHT_SHARE * budget:
            return fsdp
    return num_devices
