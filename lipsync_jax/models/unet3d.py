"""LatentSync's UNet3DConditionModel in Flax: an SD-1.5-shaped UNet run on video latents with
per-frame convolutions, audio cross-attention and optional AnimateDiff motion modules.

    model = UNet3DConditionModel(UNet3DConfig.from_dict(cfg), dtype=jnp.bfloat16)
    params = init_params(jax.random.key(0), model, sample_shape=(1, 16, 32, 32, 13))  # or a config
    noise_pred = model.apply({"params": params}, sample, timesteps, audio_embeds)

Inputs are channels-last: ``sample`` (b, f, h, w, in_channels) = [noisy latents 4, mask 1,
masked latents 4, reference latents 4]; ``timesteps`` (b,) (or a scalar); ``audio_embeds``
(b, f, 50, 384), each frame's Whisper window. Output (b, f, h, w, out_channels), float32.
Kernels and activations carry logical axis names (see ``unet_layers``); the activation
constraints act only when traced under a mesh and rules (training), never at inference.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.attention import parse_backend
from lipsync_jax.models.unet_blocks import DownBlock3D, MidBlock3D, UpBlock3D
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.models.unet_layers import (
    VIDEO_AXES,
    TimestepEmbedding,
    VideoGroupNorm,
    constrain,
    frame_conv,
    timestep_sinusoids,
)

AUDIO_WINDOW = 50  # Whisper embedding rows per video frame (LatentSync's audio feature window)
DEEPCACHE_MODES = (None, "full", "shallow")  # UNet3DConditionModel.__call__(..., deepcache=)


class UNet3DConditionModel(nn.Module):
    config: UNet3DConfig
    dtype: Dtype = jnp.float32  # compute dtype; norms, softmax and the time sinusoids stay float32
    param_dtype: Dtype = jnp.float32
    attention_backend: str = "auto"  # see lipsync_jax.models.attention
    remat: bool = False  # rematerialise every stage in the backward pass (training memory)

    @nn.compact
    def __call__(self, sample: jax.Array, timesteps: jax.Array, audio_embeds: jax.Array,
                 deepcache: str | None = None, cache: jax.Array | None = None):
        """Noise prediction (b, f, h, w, out_channels) float32. DeepCache modes (see
        ``DEEPCACHE_MODES``) return ``(noise, cache)`` instead: "full" runs the whole UNet and
        returns the hidden input of the last up block's last layer (b, f, h, w, c0) as the cache;
        "shallow" runs only the time embedding, conv_in, that last layer (hidden input ``cache``,
        skip input the fresh conv_in output) and conv_norm_out/conv_out, returning ``cache``."""
        cfg = self.config
        if deepcache not in DEEPCACHE_MODES:
            raise ValueError(f"unknown deepcache mode {deepcache!r}; choose from {DEEPCACHE_MODES}")
        if (deepcache == "shallow") != (cache is not None):
            raise ValueError("a cache is passed exactly in deepcache='shallow' mode")
        parse_backend(self.attention_backend)  # ValueError for an unknown backend
        if sample.ndim != 5 or sample.shape[-1] != cfg.in_channels:
            raise ValueError(f"sample must be (b, f, h, w, {cfg.in_channels}), got {sample.shape}")
        b, f = sample.shape[:2]
        if audio_embeds.shape[:2] != (b, f) or audio_embeds.shape[-1] != cfg.cross_attention_dim:
            raise ValueError(f"audio_embeds must be ({b}, {f}, s, {cfg.cross_attention_dim}), got {audio_embeds.shape}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        stage_kw = dict(config=cfg, attention_backend=self.attention_backend, **kw)
        wrap = nn.remat if self.remat and deepcache is None else (lambda cls: cls)

        # time
        timesteps = jnp.broadcast_to(jnp.asarray(timesteps), (b,))
        t_emb = timestep_sinusoids(timesteps, cfg.block_out_channels[0], cfg.flip_sin_to_cos, cfg.freq_shift)
        temb = TimestepEmbedding(cfg.time_embed_dim, name="time_embedding", **kw)(t_emb)  # (b, 4*c0)

        x = sample.astype(self.dtype)
        if cfg.center_input_sample:
            x = 2 * x - 1.0
        audio = audio_embeds.astype(self.dtype)
        h = constrain(frame_conv(cfg.block_out_channels[0], name="conv_in", zero_init=True, **kw)(x), VIDEO_AXES)
        take = cfg.layers_per_block + 1  # layers per up block
        n = len(cfg.block_out_channels)
        if deepcache == "shallow":
            h = self._up_block(n - 1, None, wrap, stage_kw)(cache, (h,) + (None,) * (take - 1), temb, audio,
                                                            first_layer=take - 1)
            return self._output(h, kw), cache

        # down
        skips: list[jax.Array] = [h]
        skip_hw: list[tuple[int, int]] = [h.shape[2:4]]
        for i, kind in enumerate(cfg.down_block_types):
            block = wrap(DownBlock3D)(out_channels=cfg.block_out_channels[i], heads=cfg.attention_head_dim[i],
                                      has_cross_attention=kind.startswith("CrossAttn"),
                                      has_motion=cfg.down_has_motion(i),
                                      num_layers=cfg.layers_per_block, add_downsample=i < n - 1,
                                      name=f"down_blocks_{i}", **stage_kw)
            h, block_skips = block(h, temb, audio)
            h = constrain(h, VIDEO_AXES)
            skips.extend(block_skips)
            skip_hw.extend(s.shape[2:4] for s in block_skips)

        # mid
        h = wrap(MidBlock3D)(out_channels=cfg.block_out_channels[-1], heads=cfg.attention_head_dim[-1],
                             has_cross_attention=True, has_motion=cfg.mid_has_motion, name="mid_block",
                             **stage_kw)(h, temb, audio)
        h = constrain(h, VIDEO_AXES)

        # up
        for i in range(n):
            block_skips, skips = tuple(skips[-take:]), skips[:-take]
            skip_hw = skip_hw[:-take]
            size = tuple(skip_hw[-1]) if i < n - 1 else None
            block = self._up_block(i, size, wrap, stage_kw)
            if deepcache == "full" and i == n - 1:
                h, cache = block(h, block_skips, temb, audio, return_last_input=True)
            else:
                h = block(h, block_skips, temb, audio)
            h = constrain(h, VIDEO_AXES)
        return self._output(h, kw) if deepcache is None else (self._output(h, kw), cache)

    def _up_block(self, i: int, upsample_size, wrap, stage_kw) -> UpBlock3D:
        """Up block i (upsampling to ``upsample_size`` unless it is the last one)."""
        cfg = self.config
        n = len(cfg.block_out_channels)
        return wrap(UpBlock3D)(out_channels=cfg.block_out_channels[n - 1 - i], heads=cfg.attention_head_dim[n - 1 - i],
                               has_cross_attention=cfg.up_block_types[i].startswith("CrossAttn"),
                               has_motion=cfg.up_has_motion(i), num_layers=cfg.layers_per_block + 1,
                               add_upsample=i < n - 1, upsample_size=upsample_size, name=f"up_blocks_{i}", **stage_kw)

    def _output(self, h: jax.Array, kw: dict) -> jax.Array:
        """conv_norm_out -> SiLU -> conv_out, float32."""
        cfg = self.config
        h = VideoGroupNorm(cfg.norm_num_groups, cfg.norm_eps, per_frame=cfg.use_inflated_groupnorm,
                           name="conv_norm_out", **kw)(h)
        h = frame_conv(cfg.out_channels, name="conv_out", zero_init=True, **kw)(nn.silu(h))
        return constrain(h.astype(jnp.float32), VIDEO_AXES)


def dummy_inputs(config: UNet3DConfig, sample_shape: Sequence[int], audio_len: int = AUDIO_WINDOW):
    """Zero inputs of the right shapes for init/eval_shape: sample (b, f, h, w, c)."""
    b, f = sample_shape[:2]
    return (jnp.zeros(tuple(sample_shape), jnp.float32), jnp.zeros((b,), jnp.int32),
            jnp.zeros((b, f, audio_len, config.cross_attention_dim), jnp.float32))


def _as_model(model: UNet3DConditionModel | UNet3DConfig) -> UNet3DConditionModel:
    return model if isinstance(model, UNet3DConditionModel) else UNet3DConditionModel(model)


def init_params(rng: jax.Array, model: UNet3DConditionModel | UNet3DConfig, sample_shape: Sequence[int]) -> dict:
    """Fresh parameters (plain arrays, logical-partitioning boxes removed) for a model or a
    config (then float32 params); ``sample_shape`` is (b, f, h, w, in_channels)."""
    model = _as_model(model)
    variables = model.init(rng, *dummy_inputs(model.config, sample_shape))
    return nn.meta.unbox(variables["params"])


def abstract_params(model: UNet3DConditionModel | UNet3DConfig, sample_shape: Sequence[int] | None = None) -> dict:
    """Bare parameter tree of ``jax.ShapeDtypeStruct`` via ``jax.eval_shape`` (no allocation); the
    weights do not depend on the spatial size or frame count, so a small dummy shape is used."""
    model = _as_model(model)
    shape = tuple(sample_shape) if sample_shape else (1, 2, 8, 8, model.config.in_channels)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config, shape)))
    return nn.meta.unbox(variables["params"])


def logical_axes(model: UNet3DConditionModel | UNet3DConfig, sample_shape: Sequence[int] | None = None) -> dict:
    """The params tree with a ``PartitionSpec`` of logical axis names per leaf (``P()`` for
    unannotated biases/norms)."""
    model = _as_model(model)
    shape = tuple(sample_shape) if sample_shape else (1, 2, 8, 8, model.config.in_channels)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), *dummy_inputs(model.config, shape)))
    return nn.get_partition_spec(variables["params"])


_LIST_MODULES = re.compile(r"(down_blocks|up_blocks|resnets|attentions|motion_modules|transformer_blocks|"
                           r"attention_blocks|norms|downsamplers|upsamplers)_(\d+)")


def latentsync_module_name(path: Sequence[str]) -> str:
    """Our param path -> a LatentSync-style dotted name (``down_blocks_0/attentions_1/...`` ->
    ``down_blocks.0.attentions.1...``), so LatentSync's ``trainable_modules`` substrings
    (``"motion_modules."``, ``"attentions."``) select the same modules."""
    return ".".join(_LIST_MODULES.sub(r"\1.\2", part) for part in path)


def trainable_mask(params: dict, trainable_modules: Sequence[str]) -> dict:
    """A bool tree like ``params``: True where the LatentSync-style name contains any of
    ``trainable_modules`` (LatentSync's ``run.trainable_modules``); for ``optax.masked``."""
    def mark(path, _leaf):
        name = latentsync_module_name([getattr(k, "key", str(k)) for k in path])
        return any(pattern in name for pattern in trainable_modules)
    return jax.tree_util.tree_map_with_path(mark, params)
