"""Whisper's audio encoder in Flax, returning the per-layer embeddings LatentSync conditions on.

mel (b, 2 * n_ctx, n_mels) -> conv1 k3 -> GELU -> conv2 k3 stride 2 -> GELU -> + sinusoidal
positions -> n_layer pre-LN residual attention blocks -> ln_post. LatentSync uses the input of the
first block (after the positions) and every block's output, WITHOUT the final LayerNorm:
``layer_embeddings`` (b, n_ctx, n_layer + 1, n_state). The final-LayerNorm output is returned too
(Whisper's normal encoder output), so every tensor of the checkpoint's encoder has a home.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models.attention import dot_product_attention

LAYER_NORM_EPS = 1e-5  # torch.nn.LayerNorm default, used by Whisper


@dataclasses.dataclass(frozen=True)
class WhisperEncoderConfig:
    """Encoder dimensions under OpenAI's ``ModelDimensions`` names (tiny: 80, 1500, 384, 6, 4)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4

    def __post_init__(self):
        if self.n_audio_state % self.n_audio_head or self.n_audio_state % 2:
            raise ValueError(f"whisper dims: n_audio_state {self.n_audio_state} must be even and divisible "
                             f"by n_audio_head {self.n_audio_head}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> WhisperEncoderConfig:
        """From OpenAI dims (``{"dims": {...}}`` or the dims themselves, extra decoder fields
        ignored) or a Hugging Face WhisperConfig dict (num_mel_bins, d_model, ...)."""
        dims = config.get("dims", config)
        if "d_model" in dims:  # Hugging Face naming
            return cls(n_mels=int(dims["num_mel_bins"]), n_audio_ctx=int(dims["max_source_positions"]),
                       n_audio_state=int(dims["d_model"]), n_audio_head=int(dims["encoder_attention_heads"]),
                       n_audio_layer=int(dims["encoder_layers"]))
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in dims]
        if missing:
            raise ValueError(f"whisper config lacks {missing}; got keys {sorted(dims)}")
        return cls(**{n: int(dims[n]) for n in names})

    @property
    def n_frames(self) -> int:
        """Mel frames per encoder window (3000 = 30 s)."""
        return 2 * self.n_audio_ctx


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> np.ndarray:
    """Whisper's positional table (length, channels): [sin | cos] of position * inv_timescale,
    computed in float32 step by step as the reference does (equal to the stored buffer up to the
    last bits of float32 sin/cos at large arguments, <= ~1.5e-4 absolute)."""
    if channels % 2:
        raise ValueError(f"channels must be even, got {channels}")
    increment = np.float32(np.log(max_timescale) / (channels // 2 - 1))
    inv_timescales = np.exp(-increment * np.arange(channels // 2, dtype=np.float32))
    scaled_time = np.arange(length, dtype=np.float32)[:, None] * inv_timescales[None, :]
    return np.concatenate([np.sin(scaled_time), np.cos(scaled_time)], axis=1).astype(np.float32)


class SelfAttention(nn.Module):
    n_state: int
    n_head: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_backend: str = "auto"

    @nn.compact
    def __call__(self, x):  # (b, l, d)
        dense = lambda name, bias=True: nn.Dense(self.n_state, use_bias=bias, dtype=self.dtype,
                                                  param_dtype=self.param_dtype, name=name)
        heads = lambda t: t.reshape(t.shape[:2] + (self.n_head, -1))  # (b, l, h, d/h)
        q, k, v = heads(dense("query")(x)), heads(dense("key", bias=False)(x)), heads(dense("value")(x))
        out = dot_product_attention(q, k, v, backend=self.attention_backend)  # (b, l, h, d/h)
        return dense("out")(out.reshape(x.shape[:2] + (self.n_state,)))


class ResidualAttentionBlock(nn.Module):
    n_state: int
    n_head: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_backend: str = "auto"

    @nn.compact
    def __call__(self, x):  # (b, l, d)
        norm = lambda name: nn.LayerNorm(LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=self.param_dtype, name=name)
        x = x + SelfAttention(self.n_state, self.n_head, self.dtype, self.param_dtype, self.attention_backend,
                              name="attn")(norm("attn_ln")(x).astype(self.dtype))
        h = norm("mlp_ln")(x).astype(self.dtype)
        h = nn.Dense(4 * self.n_state, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_0")(h)
        h = nn.gelu(h, approximate=False)
        return x + nn.Dense(self.n_state, dtype=self.dtype, param_dtype=self.param_dtype, name="mlp_2")(h)


class WhisperEncoder(nn.Module):
    config: WhisperEncoderConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32
    attention_backend: str = "auto"

    @nn.compact
    def __call__(self, mel):  # (b, 2 * n_ctx, n_mels)
        cfg = self.config
        if mel.shape[1:] != (cfg.n_frames, cfg.n_mels):
            raise ValueError(f"encoder input must be (b, {cfg.n_frames}, {cfg.n_mels}), got {mel.shape}")
        conv = lambda name, stride: nn.Conv(cfg.n_audio_state, (3,), strides=(stride,), padding=((1, 1),),
                                            dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        x = nn.gelu(conv("conv1", 1)(mel.astype(self.dtype)), approximate=False)  # (b, 2 * n_ctx, d)
        x = nn.gelu(conv("conv2", 2)(x), approximate=False)  # (b, n_ctx, d)
        # Whisper's position table is a fixed sinusoid (a torch buffer). It lives in the params so a
        # checkpoint's stored table is used verbatim (its float32 sin/cos rounding differs from any
        # recomputation by ~1e-4); the converter fills it from ``sinusoids`` when a file lacks it.
        positions = self.param(
            "positional_embedding",
            lambda _key: jnp.asarray(sinusoids(cfg.n_audio_ctx, cfg.n_audio_state), self.param_dtype))
        x = x + jax.lax.stop_gradient(positions).astype(self.dtype)  # (b, n_ctx, d)
        layers = [x]
        for i in range(cfg.n_audio_layer):
            x = ResidualAttentionBlock(cfg.n_audio_state, cfg.n_audio_head, self.dtype, self.param_dtype,
                                       self.attention_backend, name=f"blocks_{i}")(x)
            layers.append(x)
        final = nn.LayerNorm(LAYER_NORM_EPS, dtype=jnp.float32, param_dtype=self.param_dtype, name="ln_post")(x)
        return jnp.stack(layers, axis=2), final  # (b, n_ctx, n_layer + 1, d), (b, n_ctx, d)


def _as_encoder(model: WhisperEncoder | WhisperEncoderConfig) -> WhisperEncoder:
    return model if isinstance(model, WhisperEncoder) else WhisperEncoder(model)


def init_params(rng: jax.Array, model: WhisperEncoder | WhisperEncoderConfig) -> Any:
    """Random encoder parameters (bare tree; the position table is the sinusoid)."""
    model = _as_encoder(model)
    mel = jnp.zeros((1, model.config.n_frames, model.config.n_mels), jnp.float32)
    return jax.jit(model.init)(rng, mel)["params"]


def abstract_params(model: WhisperEncoder | WhisperEncoderConfig) -> Any:
    """Bare parameter tree of ``jax.ShapeDtypeStruct`` (no memory, no compute)."""
    model = _as_encoder(model)
    mel = jax.ShapeDtypeStruct((1, model.config.n_frames, model.config.n_mels), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), mel)["params"]
