"""Put a generated face back into its full-resolution frame (LatentSync's ``restore_video``):
resize to the alignment crop (antialiased bicubic), quantise to uint8 as LatentSync does
(``(x / 2 + 0.5).clamp(0, 1) * 255`` truncated), then ``restore_face`` (inverse warp and
feathered blend)."""

from __future__ import annotations

import numpy as np

from lipsync_jax.face import AlignedFace, resize_to_crop, restore_face


def paste_generated_face(frame: np.ndarray, face: np.ndarray, aligned: AlignedFace) -> np.ndarray:
    """frame (H, W, 3) uint8, face (R, R, 3) float in [-1, 1] -> new (H, W, 3) uint8 frame."""
    x1, y1, x2, y2 = aligned.box
    crop = resize_to_crop(np.nan_to_num(np.asarray(face, np.float32)), (int(x2 - x1), int(y2 - y1)))
    crop_u8 = (np.clip(crop / 2 + 0.5, 0.0, 1.0) * 255).astype(np.uint8)
    return restore_face(frame, crop_u8, aligned.affine)
