"""LatentSync's StableSyncNet in Flax: two DownEncoder2D stacks (audio, visual) producing
L2-normalised embeddings, and the BCE-of-cosine sync loss.

Channels-last inputs: ``images`` (b, h, w, 16*3) = 16 frames with their RGB stacked on channels
in the original ``(f c)`` order (channel = 3*frame + rgb), in [-1, 1], the LOWER half of the
256x256 aligned face (h, w = 128, 256) for the pixel models; ``audio`` (b, 80, 52, 1) = the
SyncNet mel (mel bins x time).

Structure (facts from LatentSync's ``stable_syncnet.py``): ``conv_in`` (3x3); per config entry a
residual block (GroupNorm 32 groups eps 1e-6, SiLU) that ends with its own downsampling conv
(3x3, stride = the entry's factor, no padding, after zero padding: one row/column at the
bottom/right, and for a stride-1 axis one on both sides) when the factor is not 1, followed,
if ``attn_blocks[i]``, by an attention block (GroupNorm, 1x1 conv, 8-head self-attention over
h*w, GEGLU feed-forward, 1x1 conv, residual); the attention blocks take their own index in
``down_blocks``. Then GroupNorm and ReLU; the (b, 1, 1, c) result is flattened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.attention import dot_product_attention
from lipsync_jax.models.vae_blocks import GroupNorm32, conv

NUM_GROUPS = 32  # LatentSync's DownEncoder2D uses 32 groups everywhere (not configurable)


class SyncNetConfigError(ValueError):
    """A SyncNet config that cannot be built."""


def _factor(f: Any) -> tuple[int, int]:
    if isinstance(f, int):
        return (f, f)
    if isinstance(f, Sequence) and len(f) == 2:
        return (int(f[0]), int(f[1]))
    raise SyncNetConfigError(f"downsample factor {f!r} must be an int or [h, w]")


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """One DownEncoder2D (field names of LatentSync's syncnet yaml)."""

    in_channels: int
    block_out_channels: tuple[int, ...]
    downsample_factors: tuple[tuple[int, int], ...]
    attn_blocks: tuple[int, ...]
    dropout: float = 0.0

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any], what: str = "encoder") -> EncoderConfig:
        try:
            channels = tuple(int(c) for c in cfg["block_out_channels"])
            factors = tuple(_factor(f) for f in cfg["downsample_factors"])
            attn = tuple(int(a) for a in cfg["attn_blocks"])
            out = cls(int(cfg["in_channels"]), channels, factors, attn, float(cfg.get("dropout", 0.0)))
        except KeyError as e:
            raise SyncNetConfigError(f"syncnet config {what} lacks {e}") from None
        if not len(channels) == len(factors) == len(attn):
            raise SyncNetConfigError(f"syncnet config {what}: block_out_channels, downsample_factors and "
                                     "attn_blocks must have the same length")
        return out


@dataclasses.dataclass(frozen=True)
class SyncNetConfig:
    audio_encoder: EncoderConfig
    visual_encoder: EncoderConfig

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> SyncNetConfig:
        cfg = cfg.get("model", cfg)  # accept the whole LatentSync yaml or just its "model" part
        for part in ("audio_encoder", "visual_encoder"):
            if part not in cfg:
                raise SyncNetConfigError(f"syncnet config lacks {part!r}")
        return cls(EncoderConfig.from_dict(cfg["audio_encoder"], "audio_encoder"),
                   EncoderConfig.from_dict(cfg["visual_encoder"], "visual_encoder"))


def _downsample_padding(factor: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) zero padding before a downsampling conv."""
    if factor[0] == 1:
        return ((1, 1), (0, 1))
    if factor[1] == 1:
        return ((0, 1), (1, 1))
    return ((0, 1), (0, 1))


class SyncResnetBlock(nn.Module):
    """Pre-activation residual block with an optional trailing strided ``downsample_conv``."""

    out_channels: int
    factor: tuple[int, int]
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm32(NUM_GROUPS, 1e-6, name="norm1", **kw)(x)
        h = conv(self.out_channels, 3, "conv1", **kw)(nn.silu(h))
        h = GroupNorm32(NUM_GROUPS, 1e-6, name="norm2", **kw)(h)
        h = nn.Dropout(self.dropout)(nn.silu(h), deterministic=deterministic or self.dropout == 0.0)
        h = conv(self.out_channels, 3, "conv2", **kw)(h)
        if x.shape[-1] != self.out_channels:
            x = conv(self.out_channels, 1, "conv_shortcut", **kw)(x)
        h = h + x.astype(self.dtype)
        if self.factor != (1, 1):
            h = jnp.pad(h, ((0, 0),) + _downsample_padding(self.factor) + ((0, 0),))
            h = conv(self.out_channels, 3, "downsample_conv", **kw, stride=self.factor, padding="VALID")(h)
        return h


class GEGLUFeedForward(nn.Module):
    """diffusers' FeedForward(activation "geglu"): proj to 2*4*dim, value * gelu(gate), out."""

    dim: int
    mult: int = 4
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        value, gate = jnp.split(nn.Dense(2 * self.mult * self.dim, name="proj", **kw)(x), 2, axis=-1)
        h = value * nn.gelu(gate.astype(jnp.float32), approximate=False).astype(self.dtype)
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic or self.dropout == 0.0)
        return nn.Dense(self.dim, name="out", **kw)(h)


class SyncAttentionBlock(nn.Module):
    """GroupNorm -> 1x1 conv -> tokens; x += attn(LayerNorm(x)); x += ff(LayerNorm(x));
    1x1 conv -> residual. 8 heads of size channels/8."""

    heads: int = 8
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        b, hgt, wid, c = x.shape
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = GroupNorm32(NUM_GROUPS, 1e-6, name="norm1", **kw)(x)
        tokens = nn.Dense(c, name="conv_in", **kw)(h).reshape(b, hgt * wid, c)  # (b, l, c)
        normed = nn.LayerNorm(1e-5, name="norm2", **kw)(tokens)
        split = lambda t: t.reshape(b, hgt * wid, self.heads, c // self.heads)  # noqa: E731
        q, k, v = (split(nn.Dense(c, name=n, **kw)(normed)) for n in ("to_q", "to_k", "to_v"))
        attn = dot_product_attention(q, k, v).reshape(b, hgt * wid, c)
        tokens = tokens + nn.Dense(c, name="to_out", **kw)(attn)
        ff = GEGLUFeedForward(c, dropout=self.dropout, name="ff", **kw)
        tokens = tokens + ff(nn.LayerNorm(1e-5, name="norm3", **kw)(tokens), deterministic)
        out = nn.Dense(c, name="conv_out", **kw)(tokens).reshape(b, hgt, wid, c)
        return out + x.astype(self.dtype)


class DownEncoder2D(nn.Module):
    config: EncoderConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:  # (b, h, w, c) -> (b, c')
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = conv(cfg.block_out_channels[0], 3, "conv_in", **kw)(x.astype(self.dtype))
        index = 0  # position in LatentSync's down_blocks list (attention blocks count too)
        for out_ch, factor, attn in zip(cfg.block_out_channels, cfg.downsample_factors, cfg.attn_blocks):
            h = SyncResnetBlock(out_ch, factor, cfg.dropout, name=f"down_blocks_{index}", **kw)(h, deterministic)
            index += 1
            if attn:
                h = SyncAttentionBlock(dropout=cfg.dropout, name=f"down_blocks_{index}", **kw)(h, deterministic)
                index += 1
        h = nn.relu(GroupNorm32(NUM_GROUPS, 1e-6, name="norm_out", **kw)(h))
        return h.reshape(h.shape[0], -1)


def stack_frames(video: jax.Array, lower_half: bool = False) -> jax.Array:
    """(..., f, h, w, c) frames -> (..., h, w, f*c) SyncNet input, channel = c*frame + rgb
    (LatentSync's ``(f c)`` order); ``lower_half`` keeps rows h//2: as the pixel SyncNets see."""
    if lower_half:
        video = video[..., video.shape[-3] // 2:, :, :]
    *lead, f, h, w, c = video.shape
    return jnp.moveaxis(video, -4, -2).reshape(*lead, h, w, f * c)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` over the last axis in float32 (PyTorch's F.normalize)."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class StableSyncNet(nn.Module):
    """``__call__(images, audio) -> (vision_embeds, audio_embeds)``, both (b, c) unit vectors
    in float32. ``embed_visual`` / ``embed_audio`` run one tower."""

    config: SyncNetConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | SyncNetConfig, dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32) -> StableSyncNet:
        cfg = config if isinstance(config, SyncNetConfig) else SyncNetConfig.from_dict(config)
        return cls(cfg, dtype=dtype, param_dtype=param_dtype)

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        self.audio_encoder = DownEncoder2D(self.config.audio_encoder, **kw)
        self.visual_encoder = DownEncoder2D(self.config.visual_encoder, **kw)

    def embed_visual(self, images: jax.Array, deterministic: bool = True) -> jax.Array:
        embeds = self.visual_encoder(images, deterministic)
        if embeds.shape[-1] != self.config.visual_encoder.block_out_channels[-1]:
            raise ValueError(f"visual input {images.shape[1:3]} does not reduce to 1x1 with this config")
        return l2_normalize(embeds)

    def embed_audio(self, audio: jax.Array, deterministic: bool = True) -> jax.Array:
        embeds = self.audio_encoder(audio, deterministic)
        if embeds.shape[-1] != self.config.audio_encoder.block_out_channels[-1]:
            raise ValueError(f"audio input {audio.shape[1:3]} does not reduce to 1x1 with this config")
        return l2_normalize(embeds)

    def __call__(self, images: jax.Array, audio: jax.Array, deterministic: bool = True):
        return self.embed_visual(images, deterministic), self.embed_audio(audio, deterministic)


def init_params(rng: jax.Array, model: StableSyncNet, image_hw: tuple[int, int] = (128, 256),
                audio_hw: tuple[int, int] = (80, 52)) -> Any:
    """Random parameters (bare tree) from ``model.init`` on zero inputs of these sizes."""
    images = jnp.zeros((1, *image_hw, model.config.visual_encoder.in_channels), jnp.float32)
    audio = jnp.zeros((1, *audio_hw, model.config.audio_encoder.in_channels), jnp.float32)
    return model.init(rng, images, audio)["params"]


def abstract_params(model: StableSyncNet) -> Any:
    """Bare parameter tree of ShapeDtypeStructs without allocating. Shapes do not depend on the
    input size (every layer is a conv/dense), so a small dummy input is used."""
    def init(key):
        images = jnp.zeros((1, 16, 16, model.config.visual_encoder.in_channels), jnp.float32)
        audio = jnp.zeros((1, 16, 16, model.config.audio_encoder.in_channels), jnp.float32)
        return model.init(key, images, audio, method=_init_both_towers)["params"]
    return jax.eval_shape(init, jax.random.key(0))


def _init_both_towers(module: StableSyncNet, images, audio):
    return module.visual_encoder(images), module.audio_encoder(audio)
