"""UNet stages: (CrossAttn)DownBlock3D, UNetMidBlock3DCrossAttn, (CrossAttn)UpBlock3D.

Per layer the order is resnet -> spatial transformer (CrossAttn* only) -> motion module (when
the config puts one at this resolution). Parameter names follow LatentSync's modules with
list indices joined by "_" (``resnets_0``, ``attentions_1``, ``motion_modules_0``,
``downsamplers_0``, ``upsamplers_0``), so the converter's table stays short.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models import Dtype
from lipsync_jax.models.motion_module import VanillaTemporalModule
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.models.unet_layers import VIDEO_AXES, Downsample3D, ResnetBlock3D, Upsample3D, constrain
from lipsync_jax.models.unet_transformer import Transformer3D


class _Stage(nn.Module):
    """Shared fields and layer factories of the three stage kinds."""

    config: UNet3DConfig
    out_channels: int
    heads: int  # spatial attention heads (the config's attention_head_dim entry)
    has_cross_attention: bool
    has_motion: bool
    attention_backend: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _kw(self) -> dict:
        return dict(dtype=self.dtype, param_dtype=self.param_dtype)

    def _resnet(self, i: int, scale: float = 1.0) -> ResnetBlock3D:
        cfg = self.config
        return ResnetBlock3D(self.out_channels, cfg.norm_num_groups, cfg.norm_eps, cfg.use_inflated_groupnorm,
                             scale, name=f"resnets_{i}", **self._kw())

    def _layer(self, i: int, h: jax.Array, temb: jax.Array, audio: jax.Array, resnet=True) -> jax.Array:
        """resnet i (optional) -> attention i -> motion module i."""
        cfg = self.config
        if resnet:
            h = self._resnet(i)(h, temb)
        if self.has_cross_attention:
            h = Transformer3D(self.heads, cfg.norm_num_groups, cfg.add_audio_layer,
                              attention_backend=self.attention_backend, name=f"attentions_{i}", **self._kw())(h, audio)
        if self.has_motion:
            h = VanillaTemporalModule(cfg.motion_module, self.attention_backend, name=f"motion_modules_{i}",
                                      **self._kw())(h)
        return constrain(h, VIDEO_AXES)


class DownBlock3D(_Stage):
    num_layers: int = 2
    add_downsample: bool = True

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, audio: jax.Array) -> tuple[jax.Array, tuple[jax.Array, ...]]:
        skips = []
        for i in range(self.num_layers):
            h = self._layer(i, h, temb, audio)
            skips.append(h)
        if self.add_downsample:
            h = Downsample3D(self.out_channels, self.config.downsample_padding, name="downsamplers_0", **self._kw())(h)
            skips.append(h)
        return h, tuple(skips)


class MidBlock3D(_Stage):
    """resnets_0, then per layer: attention -> motion module -> resnet."""

    num_layers: int = 1

    @nn.compact
    def __call__(self, h: jax.Array, temb: jax.Array, audio: jax.Array) -> jax.Array:
        scale = self.config.mid_block_scale_factor
        h = self._resnet(0, scale)(h, temb)
        for i in range(self.num_layers):
            h = self._layer(i, h, temb, audio, resnet=False)
            h = self._resnet(i + 1, scale)(h, temb)
        return h


class UpBlock3D(_Stage):
    """Each layer first concatenates the latest skip connection on channels."""

    num_layers: int = 3
    add_upsample: bool = True
    upsample_size: tuple[int, int] | None = None  # forced (h, w) when not an exact 2x

    @nn.compact
    def __call__(self, h: jax.Array, skips: tuple[jax.Array, ...], temb: jax.Array, audio: jax.Array,
                 first_layer: int = 0, return_last_input: bool = False):
        """Layer i reads ``skips[-1 - i]``. DeepCache options: ``first_layer`` k > 0 runs only layers
        k.. with ``h`` as layer k's hidden input (entries of ``skips`` for earlier layers are not
        read); ``return_last_input`` returns ``(output, hidden input of the last layer)``."""
        last_input = h
        for i in range(first_layer, self.num_layers):
            skip = skips[-1 - i]
            last_input = h
            h = jnp.concatenate([h, skip.astype(h.dtype)], axis=-1)  # (b, f, h, w, c + c_skip)
            h = self._layer(i, h, temb, audio)
        if self.add_upsample:
            h = Upsample3D(self.out_channels, self.upsample_size, name="upsamplers_0", **self._kw())(h)
        return (h, last_input) if return_last_input else h
