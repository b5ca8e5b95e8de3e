"""AutoencoderKL (diffusers 0.32 layout, e.g. ``stabilityai/sd-vae-ft-mse``) in Flax,
channels-last: images (b, h, w, 3) in [-1, 1], latents (b, h/8, w/8, 4).

How LatentSync uses it (``lipsync_pipeline.py`` / ``train_unet.py``): every encoded image is a
SAMPLE of the posterior, ``latent_dist.sample(generator)``, then
``(z - shift_factor) * scaling_factor`` with shift 0 and scale 0.18215; decoding divides by the
scale first. ``encode_to_latents``/``decode_latents`` below do exactly that (pass ``key=None``
for the deterministic posterior mean instead of a sample), and ``encode_frames``/
``decode_frames`` do it for any number of frames in fixed-size chunks inside one jit.
Tiled (spatially split) decoding is not implemented: chunking over frames already bounds memory.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.vae_blocks import Downsample2D, GroupNorm32, MidBlock2D, ResnetBlock2D, Upsample2D, conv

SCALING_FACTOR = 0.18215  # LatentSync's latent scale for sd-vae-ft-mse
LOGVAR_RANGE = (-30.0, 20.0)  # diffusers' DiagonalGaussianDistribution clamp


class VAEConfigError(ValueError):
    """A VAE config that this implementation cannot build."""


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """diffusers' AutoencoderKL config fields (names as in ``config.json``)."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    act_fn: str = "silu"
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    mid_block_add_attention: bool = True
    scaling_factor: float = SCALING_FACTOR
    shift_factor: float = 0.0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> VAEConfig:
        """Build from a diffusers/LatentSync config dict; unknown keys (``_class_name``,
        ``sample_size``, ``force_upcast``, ...) are ignored, unsupported structure is refused."""
        for key, allowed in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
            bad = [t for t in config.get(key, ()) if t != allowed]
            if bad:
                raise VAEConfigError(f"VAE config {key} has unsupported block types {bad}; only {allowed}")
        if config.get("act_fn", "silu") != "silu":
            raise VAEConfigError(f"VAE config act_fn {config['act_fn']!r} is not supported (only 'silu')")
        num_channels = len(config.get("block_out_channels", cls.block_out_channels))
        if len(config.get("down_block_types", ())) not in (0, num_channels):
            raise VAEConfigError("VAE config: down_block_types and block_out_channels differ in length")
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in config.items() if k in fields and v is not None}
        if "block_out_channels" in kwargs:
            kwargs["block_out_channels"] = tuple(int(c) for c in kwargs["block_out_channels"])
        return cls(**kwargs)


class Encoder(nn.Module):
    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (b, h, w, 3) -> (b, h/8, w/8, 2*latent)
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = cfg.block_out_channels
        h = conv(channels[0], 3, "conv_in", **kw)(x.astype(self.dtype))
        for i, out_ch in enumerate(channels):
            for j in range(cfg.layers_per_block):
                h = ResnetBlock2D(out_ch, cfg.norm_num_groups, name=f"down_blocks_{i}_resnets_{j}", **kw)(h)
            if i < len(channels) - 1:
                h = Downsample2D(out_ch, name=f"down_blocks_{i}_downsample", **kw)(h)
        h = MidBlock2D(channels[-1], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
        h = GroupNorm32(cfg.norm_num_groups, 1e-6, name="conv_norm_out", **kw)(h)
        return conv(2 * cfg.latent_channels, 3, "conv_out", **kw)(nn.silu(h))


class Decoder(nn.Module):
    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:  # (b, h/8, w/8, latent) -> (b, h, w, 3)
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        channels = tuple(reversed(cfg.block_out_channels))
        h = conv(channels[0], 3, "conv_in", **kw)(z.astype(self.dtype))
        h = MidBlock2D(channels[0], cfg.norm_num_groups, cfg.mid_block_add_attention, name="mid_block", **kw)(h)
        for i, out_ch in enumerate(channels):
            for j in range(cfg.layers_per_block + 1):
                h = ResnetBlock2D(out_ch, cfg.norm_num_groups, name=f"up_blocks_{i}_resnets_{j}", **kw)(h)
            if i < len(channels) - 1:
                h = Upsample2D(out_ch, name=f"up_blocks_{i}_upsample", **kw)(h)
        h = GroupNorm32(cfg.norm_num_groups, 1e-6, name="conv_norm_out", **kw)(h)
        return conv(cfg.out_channels, 3, "conv_out", **kw)(nn.silu(h))


class AutoencoderKL(nn.Module):
    """``encode(images) -> (mean, logvar)`` (unscaled posterior, logvar clamped to [-30, 20]);
    ``decode(z) -> images`` (unscaled latents); ``__call__`` decodes the posterior mean."""

    config: VAEConfig
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | VAEConfig, dtype: Dtype = jnp.float32,
                    param_dtype: Dtype = jnp.float32) -> AutoencoderKL:
        cfg = config if isinstance(config, VAEConfig) else VAEConfig.from_dict(config)
        return cls(cfg, dtype=dtype, param_dtype=param_dtype)

    def setup(self):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        latent = self.config.latent_channels
        self.encoder = Encoder(self.config, **kw)
        self.decoder = Decoder(self.config, **kw)
        self.quant_conv = nn.Conv(2 * latent, (1, 1), **kw) if self.config.use_quant_conv else None
        self.post_quant_conv = nn.Conv(latent, (1, 1), **kw) if self.config.use_post_quant_conv else None

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        moments = self.encoder(images)  # (b, h/8, w/8, 2*latent)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        mean, logvar = jnp.split(moments, 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)

    def decode(self, z: jax.Array) -> jax.Array:
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z.astype(self.dtype))
        return self.decoder(z)

    def __call__(self, images: jax.Array) -> jax.Array:
        mean, _ = self.encode(images)
        return self.decode(mean)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)


def sample_posterior(mean: jax.Array, logvar: jax.Array, key: jax.Array) -> jax.Array:
    """``mean + exp(logvar / 2) * eps`` with eps ~ N(0, 1) drawn from ``key`` (float32)."""
    eps = jax.random.normal(key, mean.shape, jnp.float32)
    return (mean.astype(jnp.float32) + jnp.exp(0.5 * logvar.astype(jnp.float32)) * eps).astype(mean.dtype)


def _scale(model: AutoencoderKL, z: jax.Array) -> jax.Array:
    return (z - model.config.shift_factor) * model.config.scaling_factor


def _unscale(model: AutoencoderKL, latents: jax.Array) -> jax.Array:
    return latents / model.config.scaling_factor + model.config.shift_factor


def _sample_per_frame(mean, logvar, keys):
    """One posterior sample per frame, each from its own key, so chunking never changes it."""
    return jax.vmap(lambda m, lv, k: sample_posterior(m[None], lv[None], k)[0])(mean, logvar, keys)


def encode_to_latents(model: AutoencoderKL, params: Any, images: jax.Array,
                      key: jax.Array | None = None) -> jax.Array:
    """Diffusion latents of ``images`` (b, h, w, 3) as LatentSync makes them: a posterior
    sample (per-image key from ``jax.random.split(key, b)``) times the scaling factor;
    ``key=None`` uses the posterior mean."""
    mean, logvar = model.apply({"params": params}, images, method=AutoencoderKL.encode)
    z = mean if key is None else _sample_per_frame(mean, logvar, jax.random.split(key, mean.shape[0]))
    return _scale(model, z)


def decode_latents(model: AutoencoderKL, params: Any, latents: jax.Array) -> jax.Array:
    """Images (b, h, w, 3), roughly in [-1, 1], from scaled diffusion latents (b, h/8, w/8, 4)."""
    return model.apply({"params": params}, _unscale(model, latents), method=AutoencoderKL.decode)


def _map_chunks(fn, chunk_size: int, *arrays: jax.Array) -> jax.Array:
    """``fn`` over the leading axis in chunks of ``chunk_size`` with ``lax.map`` (one traced
    body, so peak memory is one chunk's); the tail is padded (last item repeated) and dropped."""
    n = arrays[0].shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_chunks = -(-n // chunk_size)
    pad = num_chunks * chunk_size - n

    def to_chunks(a):
        a = jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) if pad else a
        return a.reshape((num_chunks, chunk_size) + a.shape[1:])

    out = jax.lax.map(lambda xs: fn(*xs), tuple(to_chunks(a) for a in arrays))
    return out.reshape((num_chunks * chunk_size,) + out.shape[2:])[:n]


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def encode_frames(model: AutoencoderKL, params: Any, frames: jax.Array, key: jax.Array | None = None,
                  chunk_size: int = 8) -> jax.Array:
    """Scaled latents (n, h/8, w/8, 4) of frames (n, h, w, 3), ``chunk_size`` frames at a time.
    Frame i is sampled with ``jax.random.split(key, n)[i]`` (the same as ``encode_to_latents``
    on all frames at once); ``key=None`` gives posterior means."""
    n = frames.shape[0]
    keys = jax.random.split(key if key is not None else jax.random.key(0), n)

    def encode_chunk(chunk, chunk_keys):
        mean, logvar = model.apply({"params": params}, chunk, method=AutoencoderKL.encode)
        return mean if key is None else _sample_per_frame(mean, logvar, chunk_keys)

    return _scale(model, _map_chunks(encode_chunk, chunk_size, frames, keys))


@functools.partial(jax.jit, static_argnames=("model", "chunk_size"))
def decode_frames(model: AutoencoderKL, params: Any, latents: jax.Array, chunk_size: int = 8) -> jax.Array:
    """Images (n, h, w, 3) from scaled latents (n, h/8, w/8, 4), ``chunk_size`` frames at a time."""
    decode_chunk = lambda z: model.apply({"params": params}, z, method=AutoencoderKL.decode)  # noqa: E731
    return _map_chunks(decode_chunk, chunk_size, _unscale(model, latents))


def init_params(rng: jax.Array, model: AutoencoderKL, image_size: int = 64) -> Any:
    """Random parameters (bare tree; for tests and shape templates)."""
    images = jnp.zeros((1, image_size, image_size, model.config.in_channels), jnp.float32)
    return jax.jit(model.init)(rng, images)["params"]


def abstract_params(model: AutoencoderKL) -> Any:
    """Bare parameter tree of ShapeDtypeStructs without allocating (``jax.eval_shape`` of ``init``)."""
    return jax.eval_shape(lambda k: init_params(k, model, 8 * model.downsample_factor), jax.random.key(0))
