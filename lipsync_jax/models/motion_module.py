"""AnimateDiff "Vanilla" motion module (LatentSync's ``VanillaTemporalModule``): a transformer
whose attention runs over the FRAME axis at every spatial position.

GroupNorm (its own 32 groups, eps 1e-6, per frame) -> proj_in -> blocks -> proj_out, plus the
input as residual. Each block: for every "Temporal_Self" attention, LayerNorm -> (b*h*w, f, c)
tokens + the sinusoidal position table ``pe`` (not learned; rebuilt here, the checkpoints'
copies are skipped by the converter) -> self-attention -> residual; then LayerNorm -> GEGLU FF.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models import Dtype
from lipsync_jax.models.unet_config import MotionModuleConfig
from lipsync_jax.models.unet_layers import TEMPORAL_TOKEN_AXES, VIDEO_AXES, VideoGroupNorm, constrain, dense, layer_norm
from lipsync_jax.models.unet_transformer import Attention, FeedForward


class TooManyFramesError(ValueError):
    """More frames than the motion modules' position table covers."""


def temporal_position_table(max_len: int, dim: int) -> np.ndarray:
    """(max_len, dim) float32: sin at even channels, cos at odd, 10000^(-2i/dim) frequencies."""
    position = np.arange(max_len, dtype=np.float32)[:, None]
    freqs = np.exp(np.arange(0, dim, 2, dtype=np.float32) * np.float32(-math.log(10000.0) / dim))
    table = np.zeros((max_len, dim), np.float32)
    table[:, 0::2] = np.sin(position * freqs)
    table[:, 1::2] = np.cos(position * freqs)
    return table


class TemporalTransformerBlock(nn.Module):
    config: MotionModuleConfig
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, frames: int) -> jax.Array:  # (b, f, hw, c)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cfg = self.config
        b, f, s, c = x.shape
        heads = cfg.num_attention_heads
        head_dim = c // heads  # c is already the inner width (in_channels / temporal_attention_dim_div)
        for i, _ in enumerate(cfg.attention_block_types):
            h = layer_norm(f"norms_{i}", **kw)(x)
            h = constrain(h.transpose(0, 2, 1, 3).reshape(b * s, f, c), TEMPORAL_TOKEN_AXES)  # (b*hw, f, c)
            if cfg.temporal_position_encoding:
                h = h + jnp.asarray(temporal_position_table(cfg.temporal_position_encoding_max_len, c)[:f], h.dtype)
            h = Attention(heads, head_dim, self.attention_backend, name=f"attention_blocks_{i}", **kw)(h)
            x = x + h.reshape(b, s, f, c).transpose(0, 2, 1, 3)
        return x + FeedForward(name="ff", **kw)(layer_norm("ff_norm", **kw)(x))


class VanillaTemporalModule(nn.Module):
    config: MotionModuleConfig
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, f, h, w, c)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        cfg = self.config
        b, f, h, w, c = x.shape
        if cfg.temporal_position_encoding and f > cfg.temporal_position_encoding_max_len:
            raise TooManyFramesError(
                f"{f} frames, but the motion modules' position table has only "
                f"temporal_position_encoding_max_len={cfg.temporal_position_encoding_max_len} entries")
        inner = cfg.num_attention_heads * (c // cfg.num_attention_heads // cfg.temporal_attention_dim_div)
        hidden = VideoGroupNorm(cfg.norm_num_groups, 1e-6, per_frame=True, name="norm", **kw)(x)
        hidden = dense(inner, ("embed_in", "embed_out"), name="proj_in", **kw)(hidden.reshape(b, f, h * w, c))
        for i in range(cfg.num_transformer_block):
            hidden = TemporalTransformerBlock(cfg, self.attention_backend, name=f"transformer_blocks_{i}", **kw)(
                hidden, f)
        hidden = dense(c, ("embed_in", "embed_out"), name="proj_out", zero_init=cfg.zero_initialize, **kw)(hidden)
        return constrain(hidden.reshape(b, f, h, w, c) + x.astype(hidden.dtype), VIDEO_AXES)
