"""Helpers for nested parameter trees (dicts of arrays), used by every model, converter and tool.

Paths are tuples of strings (``("down_blocks_0", "resnets_0", "conv1", "kernel")``); ``path_name``
joins them with ``/`` as converters, manifests and error messages spell them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

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


def count_params(tree: Mapping[str, Any], trainable: Mapping[str, Any] | None = None) -> int:
    """Number of scalars in a params tree (arrays or abstract leaves); with ``trainable`` (a bool
    tree of the same structure, e.g. ``unet3d.trainable_mask``) only where it is True."""
    shapes = param_shapes(tree)
    if trainable is not None:
        mask = flatten_tree(trainable)
        shapes = {path: shape for path, shape in shapes.items() if mask[path]}
    return int(sum(int(np.prod(shape)) for shape in shapes.values()))


def shape_mismatches(tree: Mapping[str, Any], template: Mapping[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """How ``tree`` differs from ``template`` (both params trees): sorted path names that are
    missing, unexpected, and of another shape (``"path: (got) instead of (want)"``). All empty
    when the trees fit."""
    got, want = param_shapes(tree), param_shapes(template)
    missing = sorted(path_name(p) for p in want.keys() - got.keys())
    unexpected = sorted(path_name(p) for p in got.keys() - want.keys())
    wrong = sorted(f"{path_name(p)}: {got[p]} instead of {want[p]}" for p in want.keys() & got.keys()
                   if got[p] != want[p])
    return missing, unexpected, wrong


RANDOM_STDDEV = 0.02  # random_params: embeddings and other weights that are not kernels/scales/biases


def random_params(template: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """Random numpy params with the shapes of ``template`` (e.g. a model's
    ``abstract_params``), made without running or compiling the model: kernels ~ N(0, 1/fan_in),
    norm scales 1, biases 0, anything else ~ N(0, 0.02^2). Every layer, the zero-initialised ones
    included, is random (smoke tests and benchmarks)."""
    rng = np.random.default_rng(seed)
    flat = {}
    shapes = param_shapes(template)
    for path in sorted(shapes):  # sorted: the order jax flattens dicts in
        shape = shapes[path]
        if path[-1] == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            flat[path] = rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)
        elif path[-1] == "scale":
            flat[path] = np.ones(shape, np.float32)
        elif path[-1] == "bias":
            flat[path] = np.zeros(shape, np.float32)
        else:
            flat[path] = RANDOM_STDDEV * rng.standard_normal(shape, np.float32)
    return unflatten_tree(flat)
