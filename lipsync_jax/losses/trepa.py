"""TREPA as LatentSync computes it: MSE between L2-normalised VideoMAEv2 features of generated
and real clips.

Each frame in [-1, 1] is resized to 224x224 with PyTorch's bicubic kernel (a = -0.75,
align_corners=False, no antialiasing, edge-clamped taps), mapped to [0, 1] and clamped, then
fed to the frozen VideoMAEv2 ViT. The resize is a pair of fixed (out, in) interpolation
matrices built in numpy, so it is exact and differentiable.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.models.videomae import VideoMAEv2

CUBIC_A = -0.75
FEATURE_EPS = 1e-12  # torch.nn.functional.normalize


def _cubic_weights(t: np.ndarray, a: float = CUBIC_A) -> np.ndarray:
    """Keys cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 for fraction t: (n, 4)."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=16)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 matrix M with resized = M @ signal, matching
    ``F.interpolate(mode="bicubic", align_corners=False)`` along one axis."""
    scale = in_size / out_size
    source = (np.arange(out_size) + 0.5) * scale - 0.5  # no clamping for cubic
    floor = np.floor(source)
    weights = _cubic_weights(source - floor)  # (out, 4)
    taps = np.clip(floor[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    np.add.at(matrix, (np.repeat(np.arange(out_size), 4), taps.ravel()), weights.ravel())
    return matrix


def resize_bicubic(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(..., h, w, c) -> (..., size[0], size[1], c), torch-bicubic without antialiasing, computed
    in at least float32."""
    h, w = images.shape[-3], images.shape[-2]
    dtype = jnp.promote_types(images.dtype, jnp.float32)
    rows = jnp.asarray(bicubic_matrix(h, size[0]), dtype)
    cols = jnp.asarray(bicubic_matrix(w, size[1]), dtype)
    hi = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,...hwc->...owc", rows, images.astype(dtype), precision=hi)
    return jnp.einsum("pw,...owc->...opc", cols, x, precision=hi)


def l2_normalize(features: jax.Array, eps: float = FEATURE_EPS) -> jax.Array:
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / jnp.maximum(norm, eps)


@dataclasses.dataclass(frozen=True)
class TREPALoss:
    """Hashable (usable as a static argument). ``model`` is the VideoMAEv2 feature network."""

    model: VideoMAEv2

    def features(self, params: Mapping[str, Any], videos: jax.Array) -> jax.Array:
        """(b, f, h, w, 3) in [-1, 1] -> (b, d) L2-normalised features (at least float32)."""
        size = self.model.config.img_size
        frames = resize_bicubic(videos, (size, size))  # (b, f, size, size, 3)
        frames = jnp.clip(frames / 2 + 0.5, 0.0, 1.0)
        feats = self.model.apply({"params": jax.lax.stop_gradient(params)}, frames)
        return l2_normalize(feats.astype(jnp.promote_types(feats.dtype, jnp.float32)))

    def __call__(self, params: Mapping[str, Any], videos_fake: jax.Array, videos_real: jax.Array) -> jax.Array:
        """Scalar MSE between the normalised features; gradients flow to ``videos_fake`` only."""
        feats_fake = self.features(params, videos_fake)
        feats_real = self.features(params, jax.lax.stop_gradient(videos_real))
        return jnp.mean(jnp.square(feats_fake - feats_real))
