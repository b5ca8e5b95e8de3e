"""LatentSync's fixed mouth mask (``mask.png``: 1 keeps a pixel, 0 masks the lower face)."""

from __future__ import annotations

import functools
import importlib.resources
import os

import cv2
import numpy as np

from lipsync_jax.face.errors import FaceInputError


def default_mask_path() -> str:
    """Path of the mask.png shipped with the package."""
    return str(importlib.resources.files("lipsync_jax.face").joinpath("assets", "mask.png"))


@functools.lru_cache(maxsize=8)
def _load(resolution: int, path: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise FaceInputError(f"{path}: mask image not found")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise FaceInputError(f"{path}: cannot be read as an image")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    resized = cv2.resize(rgb, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)
    mask = resized.astype(np.float32) / 255.0
    mask.setflags(write=False)
    return mask


def load_fixed_mask(resolution: int, path: str | None = None) -> np.ndarray:
    """(resolution, resolution, 3) float32 mask in [0, 1] (Lanczos-4 resize of mask.png).

    Read-only and cached; the UNet's 1-channel mask is ``mask[..., :1]``.
    """
    if resolution <= 0:
        raise FaceInputError(f"mask resolution must be positive, got {resolution}")
    return _load(int(resolution), path or default_mask_path())
