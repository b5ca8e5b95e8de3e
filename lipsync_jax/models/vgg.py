"""VGG16 ("D") convolution stack, cut into the five slices LPIPS compares.

torchvision's ``vgg16().features`` is a flat list of layers; LPIPS taps the ReLU after the last
conv of each stage (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3). Each conv here is named
``conv_<N>`` with N its index in torchvision's ``features`` list, so converting a checkpoint is
a rename. Stages 2..5 start with a 2x2/2 max pool (torchvision indices 4, 9, 16, 23).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# torchvision feature indices of the 3x3 convs in each LPIPS slice (relu follows each conv)
SLICE_CONVS: tuple[tuple[int, ...], ...] = (
    (0, 2),  # slice1: features 0..3  -> relu1_2
    (5, 7),  # slice2: features 4..8  -> relu2_2
    (10, 12, 14),  # slice3: features 9..15  -> relu3_3
    (17, 19, 21),  # slice4: features 16..22 -> relu4_3
    (24, 26, 28),  # slice5: features 23..29 -> relu5_3
)
VGG16_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """(n, h, w, 3) -> the five slice outputs [(n, h, w, c1), (n, h/2, w/2, c2), ...]."""

    widths: Sequence[int] = VGG16_WIDTHS
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array) -> list[jax.Array]:
        if len(self.widths) != len(SLICE_CONVS):
            raise ValueError(f"VGG16 needs {len(SLICE_CONVS)} stage widths, got {tuple(self.widths)}")
        x = images.astype(self.dtype)
        slices = []
        for stage, (width, conv_indices) in enumerate(zip(self.widths, SLICE_CONVS)):
            if stage > 0:
                x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            for index in conv_indices:
                x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                            param_dtype=self.param_dtype, name=f"conv_{index}")(x)
                x = nn.relu(x)
            slices.append(x)
        return slices
