"""Building blocks of the diffusers-style VAE (also reused by StableSyncNet): float32 group
norm, the pre-activation residual block, down/upsamplers and the single-head mid-block
attention. All channels-last: images (b, h, w, c).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.attention import dot_product_attention


class GroupNorm32(nn.Module):
    """GroupNorm computed in float32 (two-pass variance, like PyTorch), result in ``dtype``."""

    num_groups: int
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, ..., c)
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(f"GroupNorm: {c} channels do not split into {self.num_groups} groups")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        xf = x.astype(jnp.float32)
        grouped = xf.reshape(x.shape[0], -1, self.num_groups, c // self.num_groups)  # (b, l, g, c/g)
        mean = grouped.mean(axis=(1, 3), keepdims=True)
        var = jnp.square(grouped - mean).mean(axis=(1, 3), keepdims=True)
        normed = ((grouped - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        out = normed * scale.astype(jnp.float32) + bias.astype(jnp.float32)
        return out.astype(self.dtype)


def conv(features: int, kernel: int, name: str, dtype: Dtype, param_dtype: Dtype, stride: Any = 1,
         padding: Any = None) -> nn.Conv:
    """A 2-D conv with PyTorch's symmetric ``kernel // 2`` padding unless ``padding`` is given."""
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=stride,
                   padding=((pad, pad), (pad, pad)) if padding is None else padding,
                   dtype=dtype, param_dtype=param_dtype, name=name)


class ResnetBlock2D(nn.Module):
    """norm1 -> silu -> conv1 -> norm2 -> silu -> (dropout) -> conv2, plus a (1x1) shortcut.
    diffusers' VAE and LatentSync's SyncNet both use GroupNorm eps 1e-6 here."""

    out_channels: int
    num_groups: int = 32
    epsilon: float = 1e-6
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm32(self.num_groups, self.epsilon, name="norm1", **kw)(x)
        h = conv(self.out_channels, 3, "conv1", **kw)(nn.silu(h))
        h = GroupNorm32(self.num_groups, self.epsilon, name="norm2", **kw)(h)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic or self.dropout == 0.0)
        h = conv(self.out_channels, 3, "conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
        return x.astype(self.dtype) + h


class Downsample2D(nn.Module):
    """diffusers' VAE downsampler: zero pad bottom/right by one, then a 3x3 stride-2 conv."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, h/2, w/2, c)
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
        return conv(self.channels, 3, "conv", self.dtype, self.param_dtype, stride=2,
                    padding="VALID")(x)


class Upsample2D(nn.Module):
    """Nearest-neighbour 2x upsampling followed by a 3x3 conv."""

    channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, c) -> (b, 2h, 2w, c)
        x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
        return conv(self.channels, 3, "conv", self.dtype, self.param_dtype)(x)


class SpatialSelfAttention(nn.Module):
    """The VAE mid-block attention: group norm, ONE head over all h*w positions (head size =
    channels), output projection, residual. Parameter names follow diffusers' ``Attention``
    (group_norm, to_q, to_k, to_v, to_out)."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tokens = GroupNorm32(self.num_groups, self.epsilon, name="group_norm", **kw)(x)
        tokens = tokens.reshape(b, h * w, 1, c)  # (b, l, heads=1, c)
        q = nn.Dense(c, name="to_q", **kw)(tokens)
        k = nn.Dense(c, name="to_k", **kw)(tokens)
        v = nn.Dense(c, name="to_v", **kw)(tokens)
        out = dot_product_attention(q, k, v)  # softmax in float32
        out = nn.Dense(c, name="to_out", **kw)(out.reshape(b, h * w, c))
        return x.astype(self.dtype) + out.reshape(b, h, w, c)


class MidBlock2D(nn.Module):
    """resnet -> (attention) -> resnet at the lowest resolution."""

    channels: int
    num_groups: int = 32
    add_attention: bool = True
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = ResnetBlock2D(self.channels, self.num_groups, name="resnets_0", **kw)(x)
        if self.add_attention:
            x = SpatialSelfAttention(self.num_groups, name="attentions_0", **kw)(x)
        return ResnetBlock2D(self.channels, self.num_groups, name="resnets_1", **kw)(x)
