"""Spatial transformer of the UNet (LatentSync's ``Transformer3DModel``): per-frame self
attention over the h*w tokens, cross-attention of every frame to its own audio window
(b, f, 50, 384) -> (b*f, 50, 384), and a GEGLU feed-forward. Also the shared ``Attention``
and ``FeedForward`` layers used by the motion modules.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.attention import dot_product_attention
from lipsync_jax.models.unet_layers import TOKEN_AXES, VIDEO_AXES, VideoGroupNorm, constrain, dense, layer_norm


class Attention(nn.Module):
    """to_q/to_k/to_v (no bias) -> multi-head attention -> to_out (with bias)."""

    heads: int
    head_dim: int
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, context: jax.Array | None = None) -> jax.Array:  # (n, l, c), (n, s, d)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = self.heads * self.head_dim
        context = x if context is None else context.astype(self.dtype)
        q = dense(inner, ("embed", "heads"), name="to_q", use_bias=False, **kw)(x)
        k = dense(inner, ("embed", "heads"), name="to_k", use_bias=False, **kw)(context)
        v = dense(inner, ("embed", "heads"), name="to_v", use_bias=False, **kw)(context)
        split = lambda t: t.reshape(t.shape[:2] + (self.heads, self.head_dim))
        out = dot_product_attention(split(q), split(k), split(v), backend=self.attention_backend)
        out = out.reshape(out.shape[:2] + (inner,))  # (n, l, inner)
        return dense(x.shape[-1], ("heads", "embed"), name="to_out", **kw)(out)


class FeedForward(nn.Module):
    """GEGLU: proj (c -> 2 * 4c), value * gelu(gate) (exact erf GELU), out (4c -> c)."""

    mult: int = 4
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        inner = x.shape[-1] * self.mult
        value, gate = jnp.split(dense(2 * inner, ("embed", "mlp"), name="proj", **kw)(x), 2, axis=-1)
        h = value * nn.gelu(gate.astype(jnp.float32), approximate=False).astype(value.dtype)
        return dense(x.shape[-1], ("mlp", "embed"), name="out", **kw)(h)


class BasicTransformerBlock(nn.Module):
    """norm1/attn1 (self), norm2/attn2 (audio cross-attention, only with add_audio_layer),
    norm3/ff; each pre-norm with a residual."""

    heads: int
    head_dim: int
    add_audio_layer: bool
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, audio: jax.Array | None) -> jax.Array:  # (b*f, hw, c), (b*f, s, d)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = lambda name: Attention(self.heads, self.head_dim, self.attention_backend, name=name, **kw)
        x = x + attn("attn1")(layer_norm("norm1", **kw)(x))
        if self.add_audio_layer and audio is not None:
            x = x + attn("attn2")(layer_norm("norm2", **kw)(x), audio)
        return x + FeedForward(name="ff", **kw)(layer_norm("norm3", **kw)(x))


class Transformer3D(nn.Module):
    """GroupNorm (per frame, eps 1e-6) -> proj_in -> transformer block -> proj_out, + residual.

    ``proj_in``/``proj_out`` are 1x1 convs in LatentSync (``use_linear_projection`` False) or
    Linear layers; both are a Dense on channels-last tokens, the converter reshapes.
    """

    heads: int  # LatentSync's attention_head_dim: the NUMBER of heads
    groups: int
    add_audio_layer: bool
    num_layers: int = 1
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, audio_embeds: jax.Array) -> jax.Array:  # (b, f, h, w, c), (b, f, s, d)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        b, f, h, w, c = x.shape
        hidden = VideoGroupNorm(self.groups, 1e-6, per_frame=True, name="norm", **kw)(x)
        hidden = dense(c, ("embed_in", "embed_out"), name="proj_in", **kw)(hidden)
        hidden = constrain(hidden.reshape(b * f, h * w, c), TOKEN_AXES)  # (b*f, hw, c)
        audio = constrain(audio_embeds.reshape((b * f,) + audio_embeds.shape[2:]), TOKEN_AXES)  # (b*f, s, d)
        for i in range(self.num_layers):
            hidden = BasicTransformerBlock(self.heads, c // self.heads, self.add_audio_layer,
                                           self.attention_backend, name=f"transformer_blocks_{i}", **kw)(hidden, audio)
        hidden = dense(c, ("embed_in", "embed_out"), name="proj_out", **kw)(hidden)
        return constrain(hidden.reshape(b, f, h, w, c) + x.astype(hidden.dtype), VIDEO_AXES)
