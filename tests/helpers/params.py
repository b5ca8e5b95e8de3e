"""Cheap random parameters for tests: numpy draws on a ``jax.eval_shape`` template.

``model.init`` compiles every initializer (threefry) with XLA, even for tiny models; this
compiles nothing.
"""

import jax
import numpy as np


def random_params(shapes_tree, seed: int = 0):
    """Fan-in scaled normal kernels, scales near 1, small biases (float32)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = getattr(path[-1], "key", str(path[-1]))
        shape = tuple(leaf.shape)
        if name == "kernel":
            return (rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
        if name == "scale":
            return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        return (0.1 * rng.standard_normal(shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes_tree)
