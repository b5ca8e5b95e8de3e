"""Inception-v1 I3D (pytorch-i3d's ``InceptionI3d(400)``, the Kinetics-400 network FVD uses).

Channels-last: clips ``(b, t, h, w, 3)`` in [-1, 1] (uint8 frames ``/ 127.5 - 1``).

- ``Unit3D``: Conv3d without bias + BatchNorm (eps 1e-3, inference) + ReLU, TF "SAME" padding
  (total ``max((ceil(n/s) - 1) * s + k - n, 0)``, the smaller half in front), which is lax's SAME.
- Max pools: zero padding to TF "SAME", then a VALID max (inputs are ReLU outputs, >= 0).
- Inception modules: four branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max pool -> 1x1), concatenated.
- Head: AvgPool3d (2, 7, 7) stride 1 (VALID), dropout (inactive at inference), 1x1x1 conv with
  bias (``logits``), no BatchNorm or activation.

``I3D.__call__`` returns ``(logits, features)``: logits ``(b, t', num_classes)`` (pytorch-i3d's
``forward`` gives ``(b, num_classes, t')``; 16 frames at 224 px give t' = 1) and the pooled
features ``(b, t', h', w', 1024)`` that pytorch-i3d's ``extract_features`` returns (NCTHW there).
Names follow the checkpoint (``Mixed_4c/b1b/conv3d/kernel`` for ``Mixed_4c.b1b.conv3d.weight``),
so converting ``rgb_imagenet.pt`` is a rename plus the Conv3d transpose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models.frozen_norm import FrozenBatchNorm, random_inference_params

# the layers in order: ("conv", name, width, kernel, stride) | ("pool", name, kernel, stride) |
# ("mixed", name, (b0, b1a, b1b, b2a, b2b, b3b) widths)
LAYERS: tuple[tuple, ...] = (
    ("conv", "Conv3d_1a_7x7", 64, (7, 7, 7), (2, 2, 2)),
    ("pool", "MaxPool3d_2a_3x3", (1, 3, 3), (1, 2, 2)),
    ("conv", "Conv3d_2b_1x1", 64, (1, 1, 1), (1, 1, 1)),
    ("conv", "Conv3d_2c_3x3", 192, (3, 3, 3), (1, 1, 1)),
    ("pool", "MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
    ("mixed", "Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("mixed", "Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("pool", "MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("mixed", "Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("mixed", "Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("mixed", "Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("mixed", "Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("mixed", "Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("pool", "MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("mixed", "Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("mixed", "Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
BN_EPS = 1e-3
HEAD_POOL = (2, 7, 7)
CLIP_FRAMES, CLIP_SIZE = 16, 224


@dataclasses.dataclass(frozen=True)
class I3DConfig:
    num_classes: int = 400
    narrow_by: int = 1  # test fixtures: channels >= 16 divided by this
    in_channels: int = 3

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> I3DConfig:
        """From a fixture meta / manifest / config dict (unknown keys are ignored)."""
        config = dict(config or {})
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: config[k] for k in names if k in config})

    def width(self, channels: int) -> int:
        return channels // self.narrow_by if channels >= 16 else channels


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding of one axis: (front, back)."""
    total = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return total // 2, total - total // 2


def max_pool_same(x: jax.Array, kernel: Sequence[int], stride: Sequence[int]) -> jax.Array:
    """pytorch-i3d's MaxPool3dSamePadding on (b, t, h, w, c): zero-pad to TF SAME, VALID max."""
    pads = [(0, 0)] + [same_pads(n, k, s) for n, k, s in zip(x.shape[1:4], kernel, stride)] + [(0, 0)]
    x = jnp.pad(x, pads)
    return nn.max_pool(x, tuple(kernel), strides=tuple(stride), padding="VALID")


class Unit3D(nn.Module):
    width: int
    kernel: tuple[int, int, int] = (1, 1, 1)
    stride: tuple[int, int, int] = (1, 1, 1)
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(self.width, self.kernel, strides=self.stride, padding="SAME", use_bias=False,
                    dtype=self.dtype, param_dtype=self.param_dtype, name="conv3d")(x)
        x = FrozenBatchNorm(BN_EPS, dtype=self.dtype, param_dtype=self.param_dtype, name="bn")(x)
        return nn.relu(x)


class InceptionModule(nn.Module):
    widths: tuple[int, ...]  # b0, b1a, b1b, b2a, b2b, b3b
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        unit = lambda width, kernel, name: Unit3D(width, kernel, dtype=self.dtype,  # noqa: E731
                                                  param_dtype=self.param_dtype, name=name)
        b0, b1a, b1b, b2a, b2b, b3b = self.widths
        branch0 = unit(b0, (1, 1, 1), "b0")(x)
        branch1 = unit(b1b, (3, 3, 3), "b1b")(unit(b1a, (1, 1, 1), "b1a")(x))
        branch2 = unit(b2b, (3, 3, 3), "b2b")(unit(b2a, (1, 1, 1), "b2a")(x))
        branch3 = unit(b3b, (1, 1, 1), "b3b")(max_pool_same(x, (3, 3, 3), (1, 1, 1)))
        return jnp.concatenate([branch0, branch1, branch2, branch3], axis=-1)


class I3D(nn.Module):
    """clips (b, t, h, w, 3) in [-1, 1] -> (logits (b, t', classes), features (b, t', h', w', c))."""

    config: I3DConfig = I3DConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, clips: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        x = clips.astype(self.dtype)
        for layer in LAYERS:
            kind, name = layer[0], layer[1]
            if kind == "conv":
                _, _, width, kernel, stride = layer
                x = Unit3D(cfg.width(width), kernel, stride, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=name)(x)
            elif kind == "pool":
                x = max_pool_same(x, layer[2], layer[3])
            else:
                x = InceptionModule(tuple(cfg.width(w) for w in layer[2]), dtype=self.dtype,
                                    param_dtype=self.param_dtype, name=name)(x)
        features = nn.avg_pool(x, HEAD_POOL, strides=(1, 1, 1), padding="VALID")
        logits = nn.Conv(cfg.num_classes, (1, 1, 1), use_bias=True, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="logits")(features)  # dropout: eval no-op
        # pytorch-i3d squeezes the two spatial axes (1 x 1 at 224 px); larger inputs: their mean
        logits = jnp.mean(logits, axis=(2, 3)) if logits.shape[2:4] != (1, 1) else logits[:, :, 0, 0]
        return logits, features


def build(config: Mapping[str, Any] | I3DConfig | None = None, dtype: Any = jnp.float32) -> I3D:
    cfg = config if isinstance(config, I3DConfig) else I3DConfig.from_config(config)
    return I3D(cfg, dtype=dtype, param_dtype=jnp.float32)


def _example(frames: int = CLIP_FRAMES, size: int = CLIP_SIZE) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct((1, frames, size, size, 3), jnp.float32)


def abstract_params(config: Mapping[str, Any] | I3DConfig | None = None) -> dict[str, Any]:
    """Bare parameter tree of ShapeDtypeStructs (no memory, no compute)."""
    model = build(config)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(_example().shape))["params"])


def init_params(rng: jax.Array, config: Mapping[str, Any] | Any = None) -> dict[str, Any]:
    """Random bare parameters (LeCun-normal kernels, zero biases, BatchNorm at identity), made
    from the abstract tree without compiling the network."""
    return random_inference_params(abstract_params(config), rng)
