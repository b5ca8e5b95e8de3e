"""HyperIQA (Su et al. 2020), the no-reference image quality network of LatentSync's visual
quality filter: ``HyperNet(16, 112, 224, 112, 56, 28, 14, 7)`` + ``TargetNet``, inference only.

Channels-last: images ``(b, 224, 224, 3)``, ImageNet-normalised RGB.

1. ResNet-50 backbone (bottlenecks 3, 4, 6, 3; stride on the 3x3 conv; BatchNorm eps 1e-5 in
   inference mode) with local-distortion-aware (LDA) branches: after stages 1..3 a 1x1 conv
   (16, 32, 64 outputs, no bias) + AvgPool 7/7 flattened in PyTorch's (c, h, w) order + Linear
   to 16 each; after stage 4 AvgPool 7/7 + Linear to 224 - 3 * 16. Their concatenation is the
   target network's input ``target_in_vec`` (224).
2. Hyper network on the stage-4 map (2048 x 7 x 7): three 1x1 convs with ReLU (1024, 512, 112),
   then 3x3 convs generate the target FC weights (reshaped in PyTorch's (c, h, w) order) and
   Linears on the globally pooled map generate the biases.
3. Target network, per image: 224 -> 112 -> 56 -> 28 -> 14 with sigmoids, then -> 1 (the score).

``HyperIQA.__call__`` returns the generated target weights as a dict: ``target_in_vec`` (b, 224),
``target_fc{1..4}w`` (b, out, in), ``target_fc{1..4}b`` (b, out), ``target_fc5w`` (b, 1, 14),
``target_fc5b`` (b, 1); ``target_net(weights)`` gives the (b,) scores.
Names follow ``koniq_pretrained.pkl`` (``res.layer3.2.conv2`` -> ``res/layer3_2/conv2``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.models.frozen_norm import FrozenBatchNorm, random_inference_params

RESNET50_BLOCKS = (3, 4, 6, 3)
RESNET_PLANES = (64, 128, 256, 512)
EXPANSION = 4
LDA_CONV_WIDTHS = (16, 32, 64)  # kept at full width in the test fixtures too
LDA_POOL = 7
IMAGE_SIZE = 224


@dataclasses.dataclass(frozen=True)
class HyperIQAConfig:
    lda_out_channels: int = 16
    hyper_in_channels: int = 112
    target_in_size: int = 224
    target_fc1_size: int = 112
    target_fc2_size: int = 56
    target_fc3_size: int = 28
    target_fc4_size: int = 14
    feature_size: int = 7
    narrow_by: int = 1  # test fixtures: backbone widths divided by this

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> HyperIQAConfig:
        """From a fixture meta (``args``: HyperNet's 8 positional arguments, ``narrow_by``) or a
        dict of the fields above."""
        config = dict(config or {})
        fields = {}
        if "args" in config:
            names = [f.name for f in dataclasses.fields(cls)][:8]
            fields.update(dict(zip(names, config["args"])))
        known = {f.name for f in dataclasses.fields(cls)}
        fields.update({k: v for k, v in config.items() if k in known})
        return cls(**fields)

    @property
    def target_sizes(self) -> tuple[int, ...]:
        return (self.target_in_size, self.target_fc1_size, self.target_fc2_size,
                self.target_fc3_size, self.target_fc4_size)


def _conv(width: int, kernel: int, stride: int = 1, padding: int = 0, bias: bool = False, *, dtype, param_dtype, name):
    return nn.Conv(width, (kernel, kernel), strides=(stride, stride), padding=((padding, padding), (padding, padding)),
                   use_bias=bias, dtype=dtype, param_dtype=param_dtype, name=name)


def _torch_flatten(x: jax.Array) -> jax.Array:
    """(b, h, w, c) -> (b, c * h * w) in PyTorch's NCHW ``view`` order."""
    return x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    downsample: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        bn = lambda name: FrozenBatchNorm(1e-5, name=name, **kw)  # noqa: E731
        out = nn.relu(bn("bn1")(_conv(self.planes, 1, name="conv1", **kw)(x)))
        out = nn.relu(bn("bn2")(_conv(self.planes, 3, self.stride, 1, name="conv2", **kw)(out)))
        out = bn("bn3")(_conv(self.planes * EXPANSION, 1, name="conv3", **kw)(out))
        if self.downsample:
            x = FrozenBatchNorm(1e-5, name="downsample_1", **kw)(
                _conv(self.planes * EXPANSION, 1, self.stride, name="downsample_0", **kw)(x))
        return nn.relu(out + x)


class LDABackbone(nn.Module):
    """ResNet-50 with the LDA branches: images -> (target_in_vec (b, 224), stage-4 map (b, 7, 7, 2048))."""

    config: HyperIQAConfig
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        x = _conv(64 // cfg.narrow_by, 7, 2, 3, name="conv1", **kw)(x)
        x = nn.relu(FrozenBatchNorm(1e-5, name="bn1", **kw)(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        in_width = 64 // cfg.narrow_by
        lda = []
        for stage, (blocks, planes) in enumerate(zip(RESNET50_BLOCKS, RESNET_PLANES)):
            planes //= cfg.narrow_by
            for index in range(blocks):
                stride = 2 if (stage > 0 and index == 0) else 1
                downsample = index == 0 and (stride != 1 or in_width != planes * EXPANSION)
                x = Bottleneck(planes, stride, downsample, name=f"layer{stage + 1}_{index}", **kw)(x)
                in_width = planes * EXPANSION
            if stage < 3:
                pooled = _conv(LDA_CONV_WIDTHS[stage], 1, name=f"lda{stage + 1}_pool_0", **kw)(x)
                size = cfg.lda_out_channels
            else:
                pooled = x
                size = cfg.target_in_size - 3 * cfg.lda_out_channels
            pooled = nn.avg_pool(pooled, (LDA_POOL, LDA_POOL), strides=(LDA_POOL, LDA_POOL), padding="VALID")
            lda.append(nn.Dense(size, name=f"lda{stage + 1}_fc", **kw)(_torch_flatten(pooled)))
        return jnp.concatenate(lda, axis=-1), x


class HyperIQA(nn.Module):
    """images (b, 224, 224, 3) -> dict of the target network's input and generated weights."""

    config: HyperIQAConfig = HyperIQAConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
        cfg, kw = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
        target_in_vec, feature_map = LDABackbone(cfg, name="res", **kw)(images.astype(self.dtype))
        h = feature_map
        for index, width in ((0, 1024), (2, 512), (4, cfg.hyper_in_channels)):
            h = nn.relu(_conv(width, 1, bias=True, name=f"conv1_{index}", **kw)(h))
        if h.shape[1:3] != (cfg.feature_size, cfg.feature_size):
            raise ValueError(f"HyperIQA needs {IMAGE_SIZE}x{IMAGE_SIZE} inputs (a {cfg.feature_size}x"
                             f"{cfg.feature_size} feature map), got {images.shape[1:3]}")
        pooled = jnp.mean(h, axis=(1, 2))  # AdaptiveAvgPool2d(1)
        sizes = cfg.target_sizes
        out = {"target_in_vec": target_in_vec}
        for layer in range(1, 5):
            fan_in, fan_out = sizes[layer - 1], sizes[layer]
            channels = fan_in * fan_out // cfg.feature_size ** 2
            w = _conv(channels, 3, 1, 1, bias=True, name=f"fc{layer}w_conv", **kw)(h)
            out[f"target_fc{layer}w"] = _torch_flatten(w).reshape(-1, fan_out, fan_in)
            out[f"target_fc{layer}b"] = nn.Dense(fan_out, name=f"fc{layer}b_fc", **kw)(pooled)
        fc5w = nn.Dense(cfg.target_fc4_size, name="fc5w_fc", **kw)(pooled)
        out["target_fc5w"] = fc5w.reshape(-1, 1, cfg.target_fc4_size)
        out["target_fc5b"] = nn.Dense(1, name="fc5b_fc", **kw)(pooled)
        return out


def target_net(weights: Mapping[str, jax.Array]) -> jax.Array:
    """HyperIQA's TargetNet: each image through its own generated FC layers -> (b,) scores."""
    q = weights["target_in_vec"]
    for layer in range(1, 5):
        q = jax.nn.sigmoid(jnp.einsum("boi,bi->bo", weights[f"target_fc{layer}w"], q) + weights[f"target_fc{layer}b"])
    q = jnp.einsum("boi,bi->bo", weights["target_fc5w"], q) + weights["target_fc5b"]
    return q[:, 0]


def build(config: Mapping[str, Any] | HyperIQAConfig | None = None, dtype: Any = jnp.float32) -> HyperIQA:
    cfg = config if isinstance(config, HyperIQAConfig) else HyperIQAConfig.from_config(config)
    return HyperIQA(cfg, dtype=dtype, param_dtype=jnp.float32)


def _init(model: HyperIQA, key: jax.Array) -> dict[str, Any]:
    return model.init(key, jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3), jnp.float32))["params"]


def abstract_params(config: Mapping[str, Any] | HyperIQAConfig | None = None) -> dict[str, Any]:
    """Bare parameter tree of ShapeDtypeStructs (no memory, no compute)."""
    model = build(config)
    return jax.eval_shape(lambda: _init(model, jax.random.key(0)))


def init_params(rng: jax.Array, config: Mapping[str, Any] | Any = None) -> dict[str, Any]:
    """Random bare parameters (LeCun-normal kernels, zero biases, BatchNorm at identity), made
    from the abstract tree without compiling the network."""
    return random_inference_params(abstract_params(config), rng)
