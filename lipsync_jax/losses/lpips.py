"""LPIPS (VGG, v0.1) as LatentSync uses it: a frozen perceptual distance on frame lower halves.

distance(x0, x1) = sum_k mean_hw( lin_k( (unit(f_k(x0)) - unit(f_k(x1)))^2 ) )
where f_k are the five VGG16 slice outputs of the scaled inputs, ``unit`` normalises each
pixel's channel vector (eps 1e-10 added to the norm) and lin_k are non-negative 1x1 convs
without bias. Inputs are in [-1, 1] (``normalize=False`` in the lpips package).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models.vgg import SLICE_CONVS, VGG16_WIDTHS, VGG16Features

# lpips' ScalingLayer buffers (ImageNet mean/std expressed for [-1, 1] inputs)
SCALING_SHIFT = (-0.030, -0.088, -0.188)
SCALING_SCALE = (0.458, 0.448, 0.450)
# params that are buffers in the original (not counted as parameters there)
BUFFER_PATHS = (("scaling_layer", "shift"), ("scaling_layer", "scale"))
NORM_EPS = 1e-10


class ScalingLayer(nn.Module):
    """(x - shift) / scale per RGB channel. Stored as (frozen) params so a checkpoint's own
    buffers are used when it has them."""

    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        shift = self.param("shift", lambda _k, s: jnp.asarray(SCALING_SHIFT, s[1]), ((3,), self.param_dtype))
        scale = self.param("scale", lambda _k, s: jnp.asarray(SCALING_SCALE, s[1]), ((3,), self.param_dtype))
        return (images - shift.astype(images.dtype)) / scale.astype(images.dtype)


def unit_channels(features: jax.Array, eps: float = NORM_EPS) -> jax.Array:
    """Divide each pixel's channel vector by (its L2 norm + eps), in at least float32."""
    features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / (norm + eps)


class LPIPS(nn.Module):
    """(n, h, w, 3) x2 in [-1, 1] -> (n,) distances (float32, or float64 for a float64 ``dtype``).

    Convs run in ``dtype``; scaling, channel normalisation, lin layers and means in at least float32.
    """

    vgg_widths: Sequence[int] = VGG16_WIDTHS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs) -> LPIPS:
        """From an lpips config mapping (``net`` must be vgg; ``vgg_widths`` optional)."""
        net = config.get("net", "vgg")
        if net != "vgg":
            raise ValueError(f"only LPIPS(net='vgg') is implemented, config asks for net={net!r}")
        widths = tuple(int(w) for w in config.get("vgg_widths", VGG16_WIDTHS))
        return cls(vgg_widths=widths, **kwargs)

    @nn.compact
    def __call__(self, images0: jax.Array, images1: jax.Array) -> jax.Array:
        if images0.shape != images1.shape:
            raise ValueError(f"LPIPS inputs differ in shape: {images0.shape} vs {images1.shape}")
        n = images0.shape[0]
        acc_dtype = jnp.promote_types(self.dtype, jnp.float32)
        both = jnp.concatenate([images0, images1], axis=0).astype(acc_dtype)  # (2n, h, w, 3)
        scaled = ScalingLayer(param_dtype=self.param_dtype, name="scaling_layer")(both)
        slices = VGG16Features(self.vgg_widths, dtype=self.dtype, param_dtype=self.param_dtype,
                               name="net")(scaled)
        distance = jnp.zeros((n,), acc_dtype)
        for k, features in enumerate(slices):
            units = unit_channels(features)  # (2n, h_k, w_k, c_k)
            sq_diff = jnp.square(units[:n] - units[n:])
            lin = nn.Dense(1, use_bias=False, dtype=acc_dtype, param_dtype=self.param_dtype,
                           name=f"lin{k}")(sq_diff)  # (n, h_k, w_k, 1)
            distance = distance + jnp.mean(lin, axis=(1, 2, 3))
        return distance


def widths_from_params(params: Mapping[str, Any]) -> tuple[int, ...]:
    """VGG stage widths read off a converted params tree (the last conv of each slice)."""
    net = params["net"]
    return tuple(int(net[f"conv_{convs[-1]}"]["kernel"].shape[-1]) for convs in SLICE_CONVS)


def lpips_lower_half(params: Mapping[str, Any], pred: jax.Array, target: jax.Array,
                     model: LPIPS | None = None) -> jax.Array:
    """LatentSync's LPIPS term: mean LPIPS over the lower halves (rows h//2:) of the frames.

    pred, target: (..., h, w, 3) in [-1, 1] (any leading dims, e.g. (b, f)); gradients flow to
    both images, never to ``params``. ``model`` defaults to float32 LPIPS with the widths of
    ``params``. Returns a float32 scalar (float64 for a float64 model).
    """
    model = model or LPIPS(vgg_widths=widths_from_params(params))
    h, w, c = pred.shape[-3:]
    pred = pred.reshape(-1, h, w, c)[:, h // 2:]  # (n, h - h//2, w, 3)
    target = target.reshape(-1, h, w, c)[:, h // 2:]
    distances = model.apply({"params": jax.lax.stop_gradient(params)}, pred, target)
    return jnp.mean(distances)


def learnable_param_count(params: Mapping[str, Any]) -> int:
    """Parameter count as PyTorch reports it (scaling-layer buffers excluded)."""
    total = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        names = tuple(getattr(entry, "key", str(entry)) for entry in path)
        if names not in BUFFER_PATHS:
            total += math.prod(leaf.shape)
    return total


def init_params(rng: jax.Array, model: LPIPS, image_size: int = 32) -> Any:
    """Random parameters (bare tree)."""
    images = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return model.init(rng, images, images)["params"]


def abstract_params(model: LPIPS) -> Any:
    """Bare parameter tree of ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images, images)["params"]
