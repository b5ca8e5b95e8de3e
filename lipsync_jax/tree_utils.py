"""Helpers for nested parameter trees (dicts of arrays), used by every model, converter and tool.

Paths are tuples of strings (``("down_blocks_0", "resnets_0", "conv1", "kernel")``); ``path_name``
joins them with ``/`` as converters, manifests and error messages spell them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

Path = tuple[str, ...]


def flatten_tree(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    """Nested mapping -> ``{path: leaf}`` (leaves: arrays, ShapeDtypeStructs, anything not a mapping)."""
    flat: dict[Path, Any] = {}
    for key, value in tree.items():
        path = prefix + (str(key),)
        if isinstance(value, Mapping):
            flat.update(flatten_tree(value, path))
        else:
            flat[path] = value
    return flat


def unflatten_tree(flat: Mapping[Path, Any]) -> dict[str, Any]:
    """Inverse of ``flatten_tree``."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def path_name(path: Path) -> str:
    return "/".join(path)


def param_shapes(tree: Mapping[str, Any]) -> dict[Path, tuple[int, ...]]:
    """Flat ``path -> shape`` of a params tree (arrays or ``jax.ShapeDtypeStruct`` from eval_shape)."""
    return {path: tuple(leaf.shape) for path, leaf in flatten_tree(tree).items()}


def count_params(tree: Mapping[str, Any]) -> int:
    """Number of scalars in a params tree (arrays or abstract leaves)."""
    return int(sum(int(np.prod(shape)) for shape in param_shapes(tree).values()))
