"""Paste a generated face back into its full frame (LatentSync's ``restore_img``).

Steps, for a face crop in [-1, 1] at the crop size (``face_size``) and the frame -> crop
affine of that frame:
1. inverse-warp the face into the frame (bilinear, border 127), map to [0, 255];
2. inverse-warp an all-ones crop mask (bilinear, border 0), erode it with a 2x2 kernel;
3. ``edge = int(sqrt(sum(mask))) // 20``; erode the mask again with a (2 edge)^2 kernel and
   blur it with a Gaussian of size 2 edge + 1 (sigma from OpenCV's size rule);
4. blend ``soft * mask * face + (1 - soft) * frame`` and truncate to uint8.

Everything outside the warped crop is untouched, so the work is done on the crop's bounding
box in the frame only (identical result, much less work on large frames).

The decoder gives faces at the model resolution; ``resize_to_crop`` brings them to the crop
size with torchvision's antialiased bicubic (as LatentSync's ``restore_video`` does).
"""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np

from lipsync_jax.face.align import BORDER_VALUE, AlignedFace
from lipsync_jax.face.errors import FaceInputError
from lipsync_jax.face.landmarks import check_frame

_ROI_PAD = 4  # pixels around the warped crop's bounding box


def _cubic_weights(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=32)
def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of torch's antialiased bicubic resize (PIL kernel, a = -0.5)."""
    scale = in_size / out_size
    stretch = max(scale, 1.0)
    support = 2.0 * stretch
    weights = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        lo = max(int(centre - support + 0.5), 0)
        hi = min(int(centre + support + 0.5), in_size)
        taps = _cubic_weights((np.arange(lo, hi) - centre + 0.5) / stretch)
        weights[i, lo:hi] = taps / taps.sum()
    weights = weights.astype(np.float32)
    weights.setflags(write=False)
    return weights


def resize_to_crop(face: np.ndarray, face_size: tuple[int, int]) -> np.ndarray:
    """(h, w, c) float face -> (face_size[1], face_size[0], c) float32, antialiased bicubic."""
    face = np.asarray(face, np.float32)
    if face.ndim != 3:
        raise FaceInputError(f"face: expected (h, w, c), got {face.shape}")
    width, height = face_size
    in_h, in_w, channels = face.shape
    rows = _resize_matrix(in_h, height)  # (height, in_h)
    cols = _resize_matrix(in_w, width)  # (width, in_w)
    tall = (rows @ face.reshape(in_h, in_w * channels)).reshape(height, in_w, channels)
    wide = cols @ tall.transpose(1, 0, 2).reshape(in_w, height * channels)  # (width, height * channels)
    return np.ascontiguousarray(wide.reshape(width, height, channels).transpose(1, 0, 2))


def _as_signed_face(face: np.ndarray) -> np.ndarray:
    face = np.asarray(face)
    if face.ndim != 3 or face.shape[2] != 3:
        raise FaceInputError(f"face: expected (h, w, 3), got {face.shape}")
    if face.dtype == np.uint8:
        return face.astype(np.float32) / 127.5 - 1.0
    return face.astype(np.float32)


def _crop_bounds(inverse: np.ndarray, crop_w: int, crop_h: int, width: int, height: int):
    corners = np.array([[0, 0, 1], [crop_w, 0, 1], [0, crop_h, 1], [crop_w, crop_h, 1]], np.float64)
    mapped = corners @ inverse.T  # (4, 2) frame coords
    x0 = max(int(math.floor(mapped[:, 0].min())) - _ROI_PAD, 0)
    y0 = max(int(math.floor(mapped[:, 1].min())) - _ROI_PAD, 0)
    x1 = min(int(math.ceil(mapped[:, 0].max())) + _ROI_PAD, width)
    y1 = min(int(math.ceil(mapped[:, 1].max())) + _ROI_PAD, height)
    return x0, y0, x1, y1


def restore_face(frame: np.ndarray, face: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Blend ``face`` (crop size (h, w, 3), float in [-1, 1] or uint8) back into ``frame``.

    ``frame`` is the RGB uint8 (H, W, 3) original, ``affine`` the (2, 3) frame -> crop
    transform used to align it. Returns a new uint8 frame.
    """
    frame = check_frame(frame)
    face = _as_signed_face(face)
    affine = np.asarray(affine, np.float64)
    if affine.shape != (2, 3):
        raise FaceInputError(f"affine: expected (2, 3), got {affine.shape}")
    height, width = frame.shape[:2]
    crop_h, crop_w = face.shape[:2]
    inverse = cv2.invertAffineTransform(affine)
    x0, y0, x1, y1 = _crop_bounds(inverse, crop_w, crop_h, width, height)
    out = frame.copy()
    if x1 <= x0 or y1 <= y0:  # the crop lies outside the frame
        return out
    roi_inverse = inverse.copy()
    roi_inverse[:, 2] -= (x0, y0)
    roi_size = (x1 - x0, y1 - y0)

    warped = cv2.warpAffine(face, roi_inverse, roi_size, flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(BORDER_VALUE,) * 3)
    warped = np.clip(warped / 2 + 0.5, 0.0, 1.0) * 255  # (h, w, 3) in [0, 255]
    support = cv2.warpAffine(np.ones((crop_h, crop_w), np.float32), roi_inverse, roi_size,
                             flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    support = cv2.erode(support, np.ones((2, 2), np.uint8))
    edge = int(float(support.sum(dtype=np.float64)) ** 0.5) // 20
    inner = cv2.erode(support, np.ones((2 * edge, 2 * edge), np.uint8))
    blur = 2 * edge + 1
    sigma = 0.3 * ((blur - 1) * 0.5 - 1) + 0.8
    soft = cv2.GaussianBlur(inner, (blur, blur), sigma, sigma, borderType=cv2.BORDER_REFLECT_101)[..., None]

    region = frame[y0:y1, x0:x1].astype(np.float32)
    blended = soft * (support[..., None] * warped) + (1.0 - soft) * region
    out[y0:y1, x0:x1] = np.clip(blended, 0, 255).astype(np.uint8)  # truncation, as LatentSync
    return out


def paste_back(frame: np.ndarray, face: np.ndarray, aligned: AlignedFace) -> np.ndarray:
    """Restore a generated face at model resolution (float [-1, 1] or uint8) into ``frame``."""
    face = _as_signed_face(face)
    x1, y1, x2, y2 = aligned.box
    crop_size = (int(x2 - x1), int(y2 - y1))
    if face.shape[1::-1] != crop_size:
        face = resize_to_crop(face, crop_size)
    return restore_face(frame, face, aligned.affine)
