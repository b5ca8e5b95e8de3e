"""VideoMAEv2 ViT feature extractor (TREPA's frozen video network), channels-last.

videos (b, f, h, w, 3) in [0, 1] -> tubelet patch embedding (Conv3d, kernel = stride =
(tubelet, patch, patch)) -> + fixed sinusoidal position table -> ``depth`` pre-LN blocks
(attention with q/v biases and a zero k bias, GELU MLP) -> mean over tokens -> fc_norm -> (b, d).
The classification head of the official checkpoints is not part of this module.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models.attention import dot_product_attention

# Named architectures of the VideoMAEv2 code base (only what TREPA uses).
PRESETS: dict[str, dict[str, Any]] = {
    "vit_giant_patch14_224": dict(patch_size=14, embed_dim=1408, depth=40, num_heads=16,
                                  mlp_ratio=48 / 11, qkv_bias=True, img_size=224),
}


@dataclasses.dataclass(frozen=True)
class VideoMAEConfig:
    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float
    patch_size: int = 14
    img_size: int = 224
    all_frames: int = 16
    tubelet_size: int = 2
    in_chans: int = 3
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    use_mean_pooling: bool = True

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> VideoMAEConfig:
        """From a fixture config (``{"vit": {...}}``), a manifest config (``{"model":
        "vit_giant_patch14_224", ...}``) or a flat mapping of the fields above."""
        config = dict(config.get("vit", config))
        fields = dict(PRESETS.get(config.get("model", ""), {}))
        if "model" in config and not fields:
            raise ValueError(f"unknown VideoMAEv2 model {config['model']!r}; known: {sorted(PRESETS)}")
        names = {f.name for f in dataclasses.fields(cls)}
        fields.update({k: v for k, v in config.items() if k in names})
        if not fields.get("use_mean_pooling", True):
            raise ValueError("VideoMAEv2 without mean pooling is not supported (TREPA uses fc_norm of the mean)")
        return cls(**fields)

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (t, h, w) for the configured clip size."""
        side = self.img_size // self.patch_size
        return self.all_frames // self.tubelet_size, side, side


@functools.lru_cache(maxsize=8)
def sinusoid_table(num_positions: int, dim: int) -> np.ndarray:
    """(num_positions, dim) float32: angle pos / 10000^(2 * (j // 2) / dim); sin on even j,
    cos on odd j (computed in float64)."""
    positions = np.arange(num_positions, dtype=np.float64)[:, None]
    exponents = 2 * (np.arange(dim) // 2) / dim
    angles = positions / np.power(10000.0, exponents)[None, :]
    table = np.where(np.arange(dim)[None, :] % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype(np.float32)


class TubeletEmbed(nn.Module):
    """Conv3d with kernel = stride = (t, p, p), computed as patchify + matmul (same numbers; its
    input gradient avoids XLA's slow strided-conv transpose on CPU). The kernel keeps the
    channels-last Conv3d layout (t, p, p, c, d)."""

    features: int
    kernel_size: tuple[int, int, int]
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, videos: jax.Array) -> jax.Array:  # (b, f, h, w, c) -> (b, n, d)
        b, f, h, w, c = videos.shape
        t, p, q = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (t, p, q, c, self.features), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        patches = videos.reshape(b, f // t, t, h // p, p, w // q, q, c)
        patches = patches.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # (b, ft, hp, wq, t, p, q, c)
        patches = patches.reshape(b, (f // t) * (h // p) * (w // q), t * p * q * c).astype(self.dtype)
        tokens = patches @ kernel.reshape(t * p * q * c, self.features).astype(self.dtype)
        return tokens + bias.astype(self.dtype)


class Attention(nn.Module):
    num_heads: int
    qkv_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    backend: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, n, d) -> (b, n, d)
        b, n, d = x.shape
        head_dim = d // self.num_heads
        qkv = nn.Dense(3 * d, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="qkv")(x)
        if self.qkv_bias:  # the k bias is fixed at zero
            q_bias = self.param("q_bias", nn.initializers.zeros, (d,), self.param_dtype)
            v_bias = self.param("v_bias", nn.initializers.zeros, (d,), self.param_dtype)
            qkv = qkv + jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
        q, k, v = jnp.split(qkv.reshape(b, n, 3 * self.num_heads, head_dim), 3, axis=2)  # (b, n, h, hd)
        out = dot_product_attention(q, k, v, scale=head_dim ** -0.5, backend=self.backend)
        return nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name="proj")(out.reshape(b, n, d))


class Mlp(nn.Module):
    hidden: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = x.shape[-1]
        x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)
        return nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name="fc2")(x)


class Block(nn.Module):
    """Pre-LN transformer block; the residual stream and LayerNorms stay in at least float32."""

    num_heads: int
    mlp_hidden: int
    qkv_bias: bool = True
    ln_eps: float = 1e-6
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    backend: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, n, d), at least float32
        norm = functools.partial(nn.LayerNorm, epsilon=self.ln_eps, dtype=x.dtype, param_dtype=self.param_dtype)
        h = norm(name="norm1")(x).astype(self.dtype)
        x = x + Attention(self.num_heads, self.qkv_bias, self.dtype, self.param_dtype, self.backend,
                          name="attn")(h).astype(x.dtype)
        h = norm(name="norm2")(x).astype(self.dtype)
        return x + Mlp(self.mlp_hidden, self.dtype, self.param_dtype, name="mlp")(h).astype(x.dtype)


class VideoMAEv2(nn.Module):
    """(b, f, h, w, 3) in [0, 1] -> (b, embed_dim) features (fc_norm of the token mean), float32
    (float64 for a float64 ``dtype``). Matmuls/convs run in ``dtype``; residual stream, LayerNorms
    and pooling in at least float32."""

    config: VideoMAEConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    remat: bool = False  # recompute each block in the backward pass (saves activation memory)
    attention_backend: str = "auto"

    @nn.compact
    def __call__(self, videos: jax.Array) -> jax.Array:
        cfg = self.config
        b, f, h, w, c = videos.shape
        if (f, h, w, c) != (cfg.all_frames, cfg.img_size, cfg.img_size, cfg.in_chans):
            raise ValueError(f"VideoMAEv2 expects clips of ({cfg.all_frames}, {cfg.img_size}, {cfg.img_size}, "
                             f"{cfg.in_chans}) (its position table is fixed), got {videos.shape[1:]}")
        tokens = TubeletEmbed(cfg.embed_dim, (cfg.tubelet_size, cfg.patch_size, cfg.patch_size), self.dtype,
                              self.param_dtype, name="patch_embed")(videos)  # (b, t*hp*wp, d), (t, h, w) order
        acc_dtype = jnp.promote_types(self.dtype, jnp.float32)
        x = tokens.astype(acc_dtype)
        x = x + jnp.asarray(sinusoid_table(x.shape[1], cfg.embed_dim), acc_dtype)
        block_cls = nn.remat(Block) if self.remat else Block
        for i in range(cfg.depth):
            x = block_cls(cfg.num_heads, cfg.mlp_hidden, cfg.qkv_bias, cfg.ln_eps, self.dtype,
                          self.param_dtype, self.attention_backend, name=f"blocks_{i}")(x)
        pooled = jnp.mean(x, axis=1)  # (b, d)
        return nn.LayerNorm(epsilon=cfg.ln_eps, dtype=acc_dtype, param_dtype=self.param_dtype,
                            name="fc_norm")(pooled)


def _dummy_videos(config: VideoMAEConfig, make=jnp.zeros):
    return make((1, config.all_frames, config.img_size, config.img_size, config.in_chans), jnp.float32)


def init_params(rng: jax.Array, model: VideoMAEv2) -> Any:
    """Random parameters (bare tree)."""
    return model.init(rng, _dummy_videos(model.config))["params"]


def abstract_params(model: VideoMAEv2) -> Any:
    """Bare parameter tree of ``jax.ShapeDtypeStruct`` (nothing allocated)."""
    return jax.eval_shape(model.init, jax.random.key(0), _dummy_videos(model.config, jax.ShapeDtypeStruct))["params"]
