"""BatchNorm in inference mode, with its running statistics stored beside its weights.

The evaluation networks (I3D for FVD, HyperIQA's ResNet-50) are never trained here, so their
BatchNorm layers are a fixed per-channel affine map: ``(x - mean) / sqrt(var + eps) * scale + bias``.
Keeping ``mean``/``var`` in the same bare parameter tree as ``scale``/``bias`` means one tree per
model (no ``batch_stats`` collection to carry around). The official checkpoints count them as
buffers, not parameters: ``count_weights`` leaves them out, as the manifests do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.tree_utils import flatten_tree

RUNNING_STAT_NAMES = ("mean", "var")


class FrozenBatchNorm(nn.Module):
    """Channels-last BatchNorm with running statistics (PyTorch ``eval()`` behaviour)."""

    epsilon: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (channels,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (channels,), self.param_dtype)
        mean = self.param("mean", nn.initializers.zeros, (channels,), self.param_dtype)
        var = self.param("var", nn.initializers.ones, (channels,), self.param_dtype)
        # fold into one multiply-add in float32, then compute in the module dtype
        mul = scale.astype(jnp.float32) * jax.lax.rsqrt(var.astype(jnp.float32) + self.epsilon)
        add = bias.astype(jnp.float32) - mean.astype(jnp.float32) * mul
        return (x * mul.astype(self.dtype) + add.astype(self.dtype)).astype(self.dtype)


def count_weights(params: Mapping[str, Any]) -> int:
    """Number of scalars in ``params`` without BatchNorm running statistics (what a PyTorch
    ``state_dict`` counts as parameters; ``running_mean``/``running_var`` are buffers)."""
    total = 0
    for path, leaf in flatten_tree(params).items():
        if path[-1] in RUNNING_STAT_NAMES:
            continue
        size = 1
        for dim in leaf.shape:
            size *= int(dim)
        total += size
    return total


def random_inference_params(abstract: Mapping[str, Any], rng: jax.Array) -> dict[str, Any]:
    """Random weights for an inference-only network from its abstract tree, without tracing it
    (no compilation): kernels LeCun-normal (fan-in = all axes but the last), biases 0, BatchNorm
    at identity (scale 1, bias 0, mean 0, var 1). For smoke tests: the outputs mean nothing."""
    import numpy as np

    from lipsync_jax.tree_utils import unflatten_tree

    seed = int(jax.random.randint(rng, (), 0, 2**31 - 1))
    generator = np.random.default_rng(seed)
    flat = {}
    for path, leaf in sorted(flatten_tree(abstract).items()):
        shape, name = tuple(leaf.shape), path[-1]
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1]))
            value = generator.standard_normal(shape) / np.sqrt(max(fan_in, 1))
        elif name in ("scale", "var"):
            value = np.ones(shape)
        else:  # bias, mean
            value = np.zeros(shape)
        flat[path] = jnp.asarray(value, leaf.dtype)
    return unflatten_tree(flat)
