"""Converted weights on disk: an orbax params tree plus the model config beside it.

    <dst_dir>/params/        orbax StandardCheckpointHandler checkpoint (numpy leaves): the bare
                             parameter tree (older converted folders hold the VAE and SyncNet
                             trees under one "params" key; restore_params removes it)
    <dst_dir>/config.json    the model config the params were converted for (if given)
    <dst_dir>/metadata.json  what made it: source file, conversion summary, lipsync_jax version

Saving is synchronous and meant for converted weights; training checkpoints live elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

import lipsync_jax


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or in a format we do not read."""


class CheckpointNotFoundError(CheckpointFormatError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``)."""


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint references code (a global outside the tensor allow-list)."""


__all__ = ["save_params", "restore_params", "read_metadata", "is_converted", "cast_floating",
           "NotAConvertedCheckpointError", "CheckpointFormatError", "CheckpointNotFoundError", "UnsafeCheckpointError"]

FORMAT = "lipsync_jax converted params v1"
LEGACY_WRAPPER = "params"  # older converted VAE/SyncNet folders: {"params": tree}


class NotAConvertedCheckpointError(CheckpointFormatError):
    """The folder was not written by ``save_params``."""


def _to_numpy_tree(tree: Any, path: str = "") -> Any:
    if isinstance(tree, Mapping):
        return {str(key): _to_numpy_tree(value, f"{path}/{key}") for key, value in tree.items()}
    if hasattr(tree, "shape") and hasattr(tree, "dtype"):
        return np.asarray(tree)
    raise TypeError(f"save_params: leaf {path or '/'} is a {type(tree).__name__}, expected an array")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "to_dict"):  # ml_collections.ConfigDict
        return value.to_dict()
    raise TypeError(f"{type(value).__name__} value {value!r} cannot be written as JSON")


def _write_json(path: str, data: Any) -> None:
    if hasattr(data, "to_dict"):
        data = data.to_dict()
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _checkpointer():
    import orbax.checkpoint as ocp  # imported lazily: it is slow to import

    return ocp, ocp.Checkpointer(ocp.StandardCheckpointHandler())


def save_params(dst_dir: str | os.PathLike, params: Mapping[str, Any], config: Mapping | None,
                metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``params`` (nested mapping of numpy/jax arrays) under ``dst_dir/params`` with orbax,
    ``config`` as ``config.json`` and ``metadata`` (plus format and version) as ``metadata.json``.
    Replaces a previous conversion in ``dst_dir`` (only the files named above). Returns the
    absolute ``dst_dir``."""
    dst_dir = os.path.abspath(os.fspath(dst_dir))
    tree = _to_numpy_tree(params)
    if not tree:
        raise ValueError("save_params: params tree is empty")
    if os.path.exists(dst_dir) and not os.path.isdir(dst_dir):
        raise NotADirectoryError(f"{dst_dir}: exists and is not a folder")
    os.makedirs(dst_dir, exist_ok=True)
    # Drop the old marker first, so an interrupted overwrite is not mistaken for a good one.
    for name in ("metadata.json", "config.json"):
        if os.path.exists(os.path.join(dst_dir, name)):
            os.remove(os.path.join(dst_dir, name))
    ocp, checkpointer = _checkpointer()
    try:
        checkpointer.save(os.path.join(dst_dir, "params"), args=ocp.args.StandardSave(tree), force=True)
    finally:
        checkpointer.close()
    if config is not None:
        _write_json(os.path.join(dst_dir, "config.json"), config)
    info = {"format": FORMAT, "lipsync_jax_version": lipsync_jax.__version__,
            "param_count": int(sum(leaf.size for leaf in _leaves(tree)))}
    info.update(metadata or {})
    _write_json(os.path.join(dst_dir, "metadata.json"), info)
    return dst_dir


def _leaves(tree: Mapping[str, Any]):
    for value in tree.values():
        if isinstance(value, Mapping):
            yield from _leaves(value)
        else:
            yield value


def read_metadata(dst_dir: str | os.PathLike) -> dict[str, Any]:
    """``metadata.json`` of a converted checkpoint (raises if ``dst_dir`` is not one)."""
    dst_dir = os.path.abspath(os.fspath(dst_dir))
    path = os.path.join(dst_dir, "metadata.json")
    if not os.path.isdir(os.path.join(dst_dir, "params")) or not os.path.isfile(path):
        raise NotAConvertedCheckpointError(
            f"{dst_dir}: not a converted checkpoint (expected params/ and metadata.json written by "
            "`python -m lipsync_jax.convert ...`)")
    with open(path, encoding="utf-8") as f:
        metadata = json.load(f)
    if metadata.get("format") != FORMAT:
        raise NotAConvertedCheckpointError(f"{path}: unknown format {metadata.get('format')!r}, expected {FORMAT!r}")
    return metadata


def is_converted(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by ``save_params`` (vs an original checkpoint)."""
    if not os.path.isdir(path):
        return False
    try:
        read_metadata(path)
        return True
    except NotAConvertedCheckpointError:
        return False


def restore_params(dst_dir: str | os.PathLike, dtype: Any = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Load ``(params, config)`` written by ``save_params``; params are the bare tree of numpy
    arrays (floating ones cast to ``dtype`` if given), config is the dict from config.json (None
    if absent)."""
    dst_dir = os.path.abspath(os.fspath(dst_dir))
    read_metadata(dst_dir)
    ocp, checkpointer = _checkpointer()
    try:
        params = checkpointer.restore(os.path.join(dst_dir, "params"), args=ocp.args.StandardRestore())
    finally:
        checkpointer.close()
    if set(params) == {LEGACY_WRAPPER}:  # no model has a top-level module named "params"
        params = params[LEGACY_WRAPPER]
    params = cast_floating(params, dtype)
    config_path = os.path.join(dst_dir, "config.json")
    config = None
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    return params, config


def cast_floating(tree: Any, dtype: Any) -> Any:
    """Numpy copy of a params tree with floating leaves (bfloat16 included) cast to ``dtype``;
    integer/bool leaves keep theirs. ``dtype=None`` only converts leaves to numpy."""
    import jax.numpy as jnp  # knows ml_dtypes' bfloat16 is floating

    if isinstance(tree, Mapping):
        return {key: cast_floating(value, dtype) for key, value in tree.items()}
    array = np.asarray(tree)
    if dtype is not None and jnp.issubdtype(array.dtype, jnp.floating):
        array = array.astype(jnp.dtype(dtype))
    return array
