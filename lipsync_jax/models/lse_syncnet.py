"""The classic SyncNet (syncnet_python's ``S``, weights ``syncnet_v2.model``) that LSE-C / LSE-D
are measured with, in Flax, inference only.

Audio tower (input (b, 13, 20, 1): 13 MFCCs x 20 steps of 10 ms = 0.2 s), PyTorch indices of
``netcnnaud`` in brackets: conv 3x3 pad 1 -> 64 [0], BN [1], ReLU, max pool 1x1 (a no-op);
conv 3x3 pad 1 -> 192 [4], BN [5], ReLU, max pool 3x3 stride (1, 2); conv 3x3 pad 1 -> 384 [8],
BN [9], ReLU; conv -> 256 [11], BN [12], ReLU; conv -> 256 [14], BN [15], ReLU, max pool 3x3
stride 2; conv 5x4 valid -> 512 [18], BN [19], ReLU: (b, 1, 1, 512).
Lip tower (input (b, 5, 224, 224, 3): 5 frames, BGR 0..255 as floats): conv3d (5, 7, 7) stride
(1, 2, 2) valid -> 96 [0], BN, ReLU, max pool (1, 3, 3) stride (1, 2, 2); conv3d (1, 5, 5) stride
(1, 2, 2) pad (0, 1, 1) -> 256 [4], BN, ReLU, max pool (1, 3, 3) stride (1, 2, 2) pad (0, 1, 1);
three conv3d (1, 3, 3) pad (0, 1, 1) -> 256 [8, 11, 14] with BN + ReLU, max pool (1, 3, 3) stride
(1, 2, 2); conv3d (1, 6, 6) valid -> 512 [18], BN, ReLU: (b, 1, 1, 1, 512).
Each tower's 512 features go through its head: Linear 512 -> 512, BatchNorm1d, ReLU, Linear
512 -> 1024 (``netfcaud`` / ``netfclip``). Embeddings are NOT normalised (LSE uses Euclidean
distances of the raw embeddings). BatchNorm: eps 1e-5, running statistics (eval mode), kept
as frozen ``running_mean`` / ``running_var`` leaves beside ``scale`` / ``bias`` in the params
tree (they are not learnable; ``learnable_param_count`` leaves them out).

Config: ``narrow_by`` divides every width >= 32 (1 for the real network; the golden fixture
uses 4) and ``num_layers_in_fc_layers`` is the embedding size (1024 for syncnet_v2).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from lipsync_jax.tree_utils import flatten_tree

AUDIO_WIDTHS = (64, 192, 384, 256, 256, 512)
LIP_WIDTHS = (96, 256, 256, 256, 256, 512)
FC_HIDDEN = 512
EMBED_DIM = 1024
BN_EPS = 1e-5
MFCC_STEPS = 20  # audio window: 20 MFCC columns (4 per video frame at 25 fps, 5 frames)
LIP_FRAMES = 5
FACE_SIZE = 224
STAT_LEAVES = ("running_mean", "running_var")


def _narrow(width: int, narrow_by: int) -> int:
    return width // narrow_by if width >= 32 else width


@dataclasses.dataclass(frozen=True)
class LSESyncNetConfig:
    audio_widths: tuple[int, ...] = AUDIO_WIDTHS
    lip_widths: tuple[int, ...] = LIP_WIDTHS
    fc_hidden: int = FC_HIDDEN
    embed_dim: int = EMBED_DIM

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None = None) -> LSESyncNetConfig:
        """``{"narrow_by": n, "num_layers_in_fc_layers": d}`` (both optional; syncnet_v2: 1, 1024)."""
        config = dict(config or {})
        narrow_by = int(config.get("narrow_by", 1))
        embed_dim = int(config.get("num_layers_in_fc_layers", EMBED_DIM // narrow_by))
        return cls(tuple(_narrow(w, narrow_by) for w in AUDIO_WIDTHS), tuple(_narrow(w, narrow_by) for w in LIP_WIDTHS),
                   _narrow(FC_HIDDEN, narrow_by), embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class FrozenBatchNorm(nn.Module):
    """BatchNorm in eval mode over the last axis: ``(x - mean) / sqrt(var + eps) * scale + bias``."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.features,)
        scale = self.param("scale", nn.initializers.ones, shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, shape, self.param_dtype)
        mean = self.param("running_mean", nn.initializers.zeros, shape, self.param_dtype)
        var = self.param("running_var", nn.initializers.ones, shape, self.param_dtype)
        factor = (scale * jax.lax.rsqrt(var + BN_EPS)).astype(self.dtype)
        return x * factor + (bias - mean * scale * jax.lax.rsqrt(var + BN_EPS)).astype(self.dtype)


class _Layers(nn.Module):
    """Shared conv / BN+ReLU / dense helpers for the compact towers below."""

    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def conv(self, x, width, kernel, stride, padding, index):
        return nn.Conv(width, kernel, strides=stride, padding=padding, dtype=self.dtype,
                       param_dtype=self.param_dtype, name=f"conv_{index}")(x)

    def bn_relu(self, x, index):
        return nn.relu(FrozenBatchNorm(x.shape[-1], self.dtype, self.param_dtype, name=f"norm_{index}")(x))


class AudioTower(_Layers):
    """``netcnnaud``: (b, 13, 20, 1) MFCC windows -> (b, 512) conv features."""

    widths: tuple[int, ...] = AUDIO_WIDTHS

    @nn.compact
    def __call__(self, mfcc: jax.Array) -> jax.Array:
        w, pad1 = self.widths, ((1, 1), (1, 1))
        x = mfcc.astype(self.dtype)
        x = self.bn_relu(self.conv(x, w[0], (3, 3), (1, 1), pad1, 0), 1)
        x = self.bn_relu(self.conv(x, w[1], (3, 3), (1, 1), pad1, 4), 5)
        x = nn.max_pool(x, (3, 3), strides=(1, 2))
        x = self.bn_relu(self.conv(x, w[2], (3, 3), (1, 1), pad1, 8), 9)
        x = self.bn_relu(self.conv(x, w[3], (3, 3), (1, 1), pad1, 11), 12)
        x = self.bn_relu(self.conv(x, w[4], (3, 3), (1, 1), pad1, 14), 15)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = self.bn_relu(self.conv(x, w[5], (5, 4), (1, 1), "VALID", 18), 19)
        return x.reshape(x.shape[0], -1)


class FoldedConv3d(nn.Module):
    """A Conv3d whose kernel spans the whole (short) time axis, run as a 2D conv: the input's
    frames are stacked on channels (channel = frame * c_in + c) and the (t, kh, kw, c_in, out)
    kernel reshaped to match. Same result and parameter layout as ``nn.Conv`` with a 3D kernel
    and time output 1, but XLA's CPU 2D convolutions are much faster than its 3D ones."""

    features: int
    kernel_size: tuple[int, int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Any = "VALID"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, frames, height, width, channels = x.shape
        t, kh, kw = self.kernel_size
        if frames != t:
            raise ValueError(f"FoldedConv3d expects {t} frames, got {frames}")
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (t, kh, kw, channels, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        folded = kernel.transpose(1, 2, 0, 3, 4).reshape(kh, kw, t * channels, self.features).astype(self.dtype)
        x = x.transpose(0, 2, 3, 1, 4).reshape(batch, height, width, frames * channels).astype(self.dtype)
        y = jax.lax.conv_general_dilated(x, folded, self.strides, self.padding,
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias.astype(self.dtype)


class LipTower(_Layers):
    """``netcnnlip``: (b, 5, 224, 224, 3) BGR 0..255 -> (b, 512) conv features (``forward_lipfeat``).
    The first conv spans all 5 frames, so every layer after it has one time step: all layers
    run as 2D convs (``FoldedConv3d``) with the original 3D kernels as parameters."""

    widths: tuple[int, ...] = LIP_WIDTHS

    def conv3d(self, x, width, kernel, stride, padding, index):
        return FoldedConv3d(width, kernel, stride, padding, self.dtype, self.param_dtype, name=f"conv_{index}")(x)

    @nn.compact
    def __call__(self, frames: jax.Array) -> jax.Array:
        w, pad = self.widths, ((1, 1), (1, 1))
        x = frames.astype(self.dtype)
        x = self.bn_relu(self.conv3d(x, w[0], (5, 7, 7), (2, 2), "VALID", 0), 1)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = self.bn_relu(self.conv3d(x[:, None], w[1], (1, 5, 5), (2, 2), pad, 4), 5)
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=pad)
        x = self.bn_relu(self.conv3d(x[:, None], w[2], (1, 3, 3), (1, 1), pad, 8), 9)
        x = self.bn_relu(self.conv3d(x[:, None], w[3], (1, 3, 3), (1, 1), pad, 11), 12)
        x = self.bn_relu(self.conv3d(x[:, None], w[4], (1, 3, 3), (1, 1), pad, 14), 15)
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
        x = self.bn_relu(self.conv3d(x[:, None], w[5], (1, 6, 6), (1, 1), "VALID", 18), 19)
        return x.reshape(x.shape[0], -1)


class EmbeddingHead(_Layers):
    """``netfcaud`` / ``netfclip``: Linear [0], BatchNorm1d [1], ReLU, Linear [3]."""

    hidden: int = FC_HIDDEN
    embed_dim: int = EMBED_DIM

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="dense_0")(features)
        x = self.bn_relu(x, 1)
        return nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="dense_3")(x)


class LSESyncNet(nn.Module):
    config: LSESyncNetConfig = LSESyncNetConfig()
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def setup(self):
        c, kw = self.config, {"dtype": self.dtype, "param_dtype": self.param_dtype}
        self.netcnnaud = AudioTower(widths=c.audio_widths, **kw)
        self.netcnnlip = LipTower(widths=c.lip_widths, **kw)
        self.netfcaud = EmbeddingHead(hidden=c.fc_hidden, embed_dim=c.embed_dim, **kw)
        self.netfclip = EmbeddingHead(hidden=c.fc_hidden, embed_dim=c.embed_dim, **kw)

    def audio_features(self, mfcc: jax.Array) -> jax.Array:
        return self.netcnnaud(mfcc)

    def lip_features(self, frames: jax.Array) -> jax.Array:
        return self.netcnnlip(frames)

    def embed_audio(self, mfcc: jax.Array) -> jax.Array:
        """(b, 13, 20, 1) -> (b, d) (``forward_aud``)."""
        return self.netfcaud(self.netcnnaud(mfcc))

    def embed_lip(self, frames: jax.Array) -> jax.Array:
        """(b, 5, 224, 224, 3) BGR 0..255 -> (b, d) (``forward_lip``)."""
        return self.netfclip(self.netcnnlip(frames))

    def embed_lip_with_features(self, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (lip embeddings (b, d), lip conv features (b, 512)) in one pass."""
        features = self.netcnnlip(frames)
        return self.netfclip(features), features

    def __call__(self, frames: jax.Array, mfcc: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> (lip embeddings (b, d), audio embeddings (b, d))."""
        return self.embed_lip(frames), self.embed_audio(mfcc)


def _dummy_inputs(batch: int = 1):
    return (jnp.zeros((batch, LIP_FRAMES, FACE_SIZE, FACE_SIZE, 3), jnp.float32),
            jnp.zeros((batch, 13, MFCC_STEPS, 1), jnp.float32))


def init_params(rng: jax.Array, config: LSESyncNetConfig | None = None) -> dict[str, Any]:
    """Bare params of a freshly initialised network (Flax default initialisers, unit BN stats)."""
    return LSESyncNet(config or LSESyncNetConfig()).init(rng, *_dummy_inputs())["params"]


def abstract_params(config: LSESyncNetConfig | None = None) -> dict[str, Any]:
    """Bare params as ``jax.ShapeDtypeStruct`` leaves (nothing allocated or compiled)."""
    model = LSESyncNet(config or LSESyncNetConfig())
    return jax.eval_shape(lambda key: model.init(key, *_dummy_inputs()), jax.random.key(0))["params"]


def learnable_param_count(params: Mapping[str, Any]) -> int:
    """Parameters without the BatchNorm running statistics (what PyTorch counts as parameters)."""
    return int(sum(math.prod(leaf.shape) for path, leaf in flatten_tree(params).items()
                   if path[-1] not in STAT_LEAVES))
