"""Conditioning kernels shared by training and inference, so both see the same UNet inputs.

- ``nearest_resize``: torch ``F.interpolate(mode="nearest")`` over the (h, w) axes of a
  channels-last ``(..., h, w, c)`` array: output pixel (i, j) reads source pixel
  ``(floor(i * h / out_h), floor(j * w / out_w))``. Used for the UNet's nearest 2x upsampling
  and for the mask channel.
- ``latent_mask``: the UNet's mask channel, the pixel mask's first channel resized (nearest) to
  the latent grid; for an 8x VAE that is pixel ``(8i, 8j)``, as LatentSync's
  ``F.interpolate(mask, size=latent_hw)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def nearest_resize(x: jax.Array, size: Sequence[int]) -> jax.Array:
    """(..., h, w, c) -> (..., out_h, out_w, c) by torch's nearest rule (see module docstring).
    Works on numpy and JAX arrays (the indices are static)."""
    h, w = x.shape[-3:-1]
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == (h, w):
        return x
    if (out_h, out_w) == (2 * h, 2 * w) and isinstance(x, jax.Array):
        return jnp.repeat(jnp.repeat(x, 2, axis=-3), 2, axis=-2)
    rows = (np.arange(out_h) * h) // out_h
    cols = (np.arange(out_w) * w) // out_w
    return x[..., rows, :, :][..., cols, :]


def latent_mask(pixel_mask: jax.Array, latent_hw: Sequence[int]) -> jax.Array:
    """Pixel mask (..., H, W, c) (1 keeps a pixel, 0 hides it) -> the UNet's mask channel
    (..., h, w, 1) on the latent grid ``latent_hw``, nearest-neighbour."""
    return nearest_resize(pixel_mask[..., :1], latent_hw)
