"""UNet building blocks: video GroupNorm, per-frame ("inflated") convs, resnets, resampling,
timestep embeddings. Video tensors are channels-last ``(b, f, h, w, c)``.

Logical axis names on kernels (``nn.with_logical_partitioning``; biases and norm scales are
left unannotated, they are small). A sharding helper maps these to mesh axes with rules:

  conv kernels          ("conv_h", "conv_w", "embed_in", "embed_out")
  plain dense kernels   ("embed_in", "embed_out")     (proj_in/out, time MLP, time_emb_proj)
  attention q/k/v       ("embed", "heads")   attention out ("heads", "embed")
  feed-forward          ("embed", "mlp")     ("mlp", "embed")

``init`` returns boxed ``nn.Partitioned`` leaves; ``flax.linen.meta.unbox`` gives plain arrays
(``unet3d.init_params`` does that) and ``nn.get_partition_spec`` gives the logical specs.

Activations are named too (``constrain``: ``nn.with_logical_constraint``), at the stage and
layer boundaries and where the spatial / temporal layers regroup the batch:

  video (b, f, h, w, c)          VIDEO_AXES
  spatial tokens (b*f, h*w, c)   TOKEN_AXES          (the batch axis absorbs the frames)
  temporal tokens (b*h*w, f, c)  TEMPORAL_TOKEN_AXES (the batch axis absorbs the positions)

The constraints act only under logical axis rules and a mesh (the training step is traced under
``lipsync_jax.sharding.with_activation_sharding``); elsewhere (inference on one device, golden
checks) they return their input unchanged.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.diffusion.conditioning import nearest_resize
from lipsync_jax.models import Dtype

VIDEO_AXES = ("activation_batch", "activation_frames", "activation_height", "activation_width", "activation_embed")
TOKEN_AXES = ("activation_batch", "activation_length", "activation_embed")
TEMPORAL_TOKEN_AXES = ("activation_batch", "activation_frames", "activation_embed")


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """``x`` with a sharding constraint by logical ``axes`` names; a no-op without rules + mesh."""
    return nn.with_logical_constraint(x, axes)


# torch's default Linear/Conv init (kaiming_uniform with a=sqrt(5)): U(+-1/sqrt(fan_in))
TORCH_DEFAULT_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(features: int, axes: tuple[str, str], *, name: str, dtype: Dtype, param_dtype: Dtype,
          use_bias: bool = True, zero_init: bool = False) -> nn.Dense:
    init = nn.initializers.zeros_init() if zero_init else TORCH_DEFAULT_INIT
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                    kernel_init=nn.with_logical_partitioning(init, axes), name=name)


def frame_conv(features: int, *, name: str, dtype: Dtype, param_dtype: Dtype, kernel_size: int = 3,
               stride: int = 1, padding: int = 1, zero_init: bool = False) -> nn.Conv:
    """A 2D conv applied to every frame (LatentSync's ``InflatedConv3d``): on (b, f, h, w, c)
    flax's Conv treats (b, f) as batch dimensions."""
    init = nn.initializers.zeros_init() if zero_init else TORCH_DEFAULT_INIT
    k, p = kernel_size, padding
    return nn.Conv(features, (k, k), strides=(stride, stride), padding=((p, p), (p, p)), dtype=dtype,
                   param_dtype=param_dtype, name=name,
                   kernel_init=nn.with_logical_partitioning(init, ("conv_h", "conv_w", "embed_in", "embed_out")))


class VideoGroupNorm(nn.Module):
    """torch ``GroupNorm`` semantics on (b, f, h, w, c), statistics in float32.

    ``per_frame=False`` normalises each group over (f, h, w) together, which is what torch's
    GroupNorm does on LatentSync's 5-D (b, c, f, h, w) tensors in the resnets and the output
    norm; ``per_frame=True`` normalises every frame alone (``InflatedGroupNorm``, and the
    transformers' norms, which run on (b*f, c, h, w)).
    """

    num_groups: int
    epsilon: float
    per_frame: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b, f, h, w, c = x.shape
        g = self.num_groups
        xg = x.astype(jnp.float32).reshape(b, f, h, w, g, c // g)
        axes = (2, 3, 5) if self.per_frame else (1, 2, 3, 5)
        mean = xg.mean(axes, keepdims=True)
        var = jnp.square(xg - mean).mean(axes, keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        scale = self.param("scale", nn.initializers.ones_init(), (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), self.param_dtype)
        return (y * scale.astype(jnp.float32) + bias.astype(jnp.float32)).astype(self.dtype)


def layer_norm(name: str, dtype: Dtype, param_dtype: Dtype, eps: float = 1e-5) -> nn.LayerNorm:
    """torch ``nn.LayerNorm`` (eps 1e-5); flax reduces in float32."""
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, name=name)


def timestep_sinusoids(timesteps: jax.Array, dim: int, flip_sin_to_cos: bool, freq_shift: float,
                       max_period: float = 10000.0) -> jax.Array:
    """diffusers ``get_timestep_embedding``: (b,) -> (b, dim) float32."""
    half = dim // 2
    exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / (half - freq_shift)
    args = timesteps.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
    sin, cos = jnp.sin(args), jnp.cos(args)
    emb = jnp.concatenate([cos, sin] if flip_sin_to_cos else [sin, cos], axis=-1)
    if dim % 2:
        emb = jnp.pad(emb, ((0, 0), (0, 1)))
    return emb


class TimestepEmbedding(nn.Module):
    """linear_1 -> SiLU -> linear_2 on the sinusoids."""

    features: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, t_emb: jax.Array) -> jax.Array:  # (b, c0) -> (b, 4*c0)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = dense(self.features, ("embed_in", "embed_out"), name="linear_1", **kw)(t_emb.astype(self.dtype))
        return dense(self.features, ("embed_in", "embed_out"), name="linear_2", **kw)(nn.silu(h))


class ResnetBlock3D(nn.Module):
    """norm1 -> SiLU -> conv1 (+ time_emb_proj) -> norm2 -> SiLU -> conv2, plus (1x1) shortcut."""

    out_channels: int
    groups: int
    eps: float
    per_frame_norm: bool = False
    output_scale_factor: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, temb: jax.Array) -> jax.Array:  # (b, f, h, w, c), (b, t)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        norm = lambda name: VideoGroupNorm(self.groups, self.eps, self.per_frame_norm, name=name, **kw)
        h = nn.silu(norm("norm1")(x))
        h = frame_conv(self.out_channels, name="conv1", **kw)(h)
        t = dense(self.out_channels, ("embed_in", "embed_out"), name="time_emb_proj", **kw)(nn.silu(temb))
        h = h + t[:, None, None, None, :].astype(h.dtype)
        h = nn.silu(norm("norm2")(h))
        h = frame_conv(self.out_channels, name="conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = frame_conv(self.out_channels, kernel_size=1, padding=0, name="conv_shortcut", **kw)(x)
        out = x.astype(h.dtype) + h
        return out / self.output_scale_factor if self.output_scale_factor != 1 else out


class Downsample3D(nn.Module):
    """Per-frame 3x3 conv with stride 2."""

    out_channels: int
    padding: int = 1
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.padding == 0:
            raise NotImplementedError("downsample_padding=0 (asymmetric pad) is not supported")
        return frame_conv(self.out_channels, stride=2, padding=self.padding, name="conv",
                          dtype=self.dtype, param_dtype=self.param_dtype)(x)


class Upsample3D(nn.Module):
    """Nearest 2x (or to ``size``) over (h, w), then a per-frame 3x3 conv."""

    out_channels: int
    size: tuple[int, int] | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = self.size or (2 * x.shape[2], 2 * x.shape[3])
        x = nearest_resize(x, size)
        return frame_conv(self.out_channels, name="conv", dtype=self.dtype, param_dtype=self.param_dtype)(x)
