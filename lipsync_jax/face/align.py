"""Face alignment as LatentSync's AlignRestore does it.

Three anchors (two eyebrow centres and the nose centre, pixel coordinates) are mapped onto a
fixed template by a least-squares similarity transform (Procrustes: centre both point sets,
divide each by its overall standard deviation, rotation from the SVD of the 2x2
cross-covariance). The crop is ``face_size`` = (75, 100) x ratio pixels (width, height) with
ratio = 2.8 * resolution / 256, i.e. 210x280 at 256 and 420x560 at 512. The warp is bilinear
with a constant border of 127; its float result is truncated to uint8, then resized to
``resolution`` x ``resolution`` with Lanczos-4.

Temporal smoothing (per video, LatentSync's ``p_bias``): with both point sets centred and
normalised, the nose offset ``bias = template_norm[2] - points_norm[2]`` is blended with the
previous frame's (0.2 previous + 0.8 current), stored, and added to the translation. It is
added in normalised units to a pixel translation, exactly as LatentSync does.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

from lipsync_jax.face.errors import FaceInputError
from lipsync_jax.face.landmarks import check_frame

BORDER_VALUE = 127.0
SMOOTH_PREVIOUS_WEIGHT = 0.2

# LatentSync's 3-point template in its 75x100 base box (before scaling by the crop ratio).
_BASE_TEMPLATE = np.array([[19 - 2, 30 - 10], [56 + 2, 30 - 10], [37.5, 45 - 5]], np.float64)
_BASE_SIZE = (75, 100)  # (width, height)


@dataclasses.dataclass(frozen=True)
class AlignTemplate:
    """Template anchors (3, 2) in crop pixels, crop size (width, height), model resolution."""

    face_template: np.ndarray
    face_size: tuple[int, int]
    resolution: int

    @classmethod
    def for_resolution(cls, resolution: int) -> AlignTemplate:
        if resolution <= 0 or resolution % 8:
            raise FaceInputError(f"resolution must be a positive multiple of 8, got {resolution}")
        ratio = resolution / 256 * 2.8
        size = (int(_BASE_SIZE[0] * ratio), int(_BASE_SIZE[1] * ratio))
        return cls(face_template=_BASE_TEMPLATE * ratio, face_size=size, resolution=resolution)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(x1, y1, x2, y2) of the crop, as LatentSync records it."""
        return (0, 0, self.face_size[0], self.face_size[1])


@dataclasses.dataclass
class AlignedFace:
    """One aligned frame: the face at model resolution and how to put it back."""

    face: np.ndarray  # (resolution, resolution, 3) uint8
    affine: np.ndarray  # (2, 3) float32, frame pixels -> crop pixels
    box: tuple[int, int, int, int]  # (x1, y1, x2, y2) of the crop before the resize
    landmarks: np.ndarray  # (3, 2) float64 anchors used


def _normalise(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    centre = points.mean(axis=0)
    centred = points - centre
    spread = float(np.std(centred, ddof=1))  # torch.std over all entries (unbiased)
    if spread < 1e-6:
        raise FaceInputError(f"degenerate landmarks (all points coincide): {points.tolist()}")
    return centred / spread, centre, spread


def similarity_transform(points: np.ndarray, template: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares similarity (2, 3) float64 mapping ``points`` onto ``template``.

    Also returns the smoothing offset (2,): template_norm[2] - points_norm[2].
    """
    points = np.asarray(points, np.float64).reshape(-1, 2)
    template = np.asarray(template, np.float64).reshape(-1, 2)
    if points.shape != template.shape or points.shape[0] < 3:
        raise FaceInputError(f"need matching (n>=3, 2) point sets, got {points.shape} and {template.shape}")
    if not np.all(np.isfinite(points)):
        raise FaceInputError(f"landmarks contain NaN/inf: {points.tolist()}")
    src_norm, src_centre, src_spread = _normalise(points)
    dst_norm, dst_centre, dst_spread = _normalise(template)
    u, _, vt = np.linalg.svd(src_norm.T @ dst_norm)
    rotation = vt.T @ u.T
    if np.linalg.det(rotation) < 0:  # keep a proper rotation, no reflection
        vt[-1] *= -1
        rotation = vt.T @ u.T
    scale = dst_spread / src_spread
    translation = dst_centre - scale * rotation @ src_centre
    matrix = np.concatenate([scale * rotation, translation[:, None]], axis=1)
    return matrix, dst_norm[2] - src_norm[2]


class TranslationSmoother:
    """LatentSync's per-video smoothing of the alignment translation."""

    def __init__(self):
        self.bias: np.ndarray | None = None

    def reset(self) -> None:
        self.bias = None

    def __call__(self, matrix: np.ndarray, bias: np.ndarray) -> np.ndarray:
        if self.bias is not None:
            bias = SMOOTH_PREVIOUS_WEIGHT * self.bias + (1.0 - SMOOTH_PREVIOUS_WEIGHT) * bias
        self.bias = bias
        smoothed = matrix.copy()
        smoothed[:, 2] += bias
        return smoothed


def sampled_region(affine: np.ndarray, face_size: tuple[int, int], shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the frame pixels a bilinear warp by ``affine`` (frame -> crop) into a crop
    of ``face_size`` can read (the crop's corner pixels mapped back, widened by 2 px), clipped."""
    height, width = shape[:2]
    inverse = cv2.invertAffineTransform(np.asarray(affine, np.float64))
    crop_w, crop_h = face_size
    corners = np.array([[0, 0, 1], [crop_w - 1, 0, 1], [0, crop_h - 1, 1], [crop_w - 1, crop_h - 1, 1]],
                       np.float64) @ inverse.T
    if not np.all(np.isfinite(corners)) or np.abs(corners).max() > 1e9:
        return 0, 0, width, height
    x0 = min(max(int(np.floor(corners[:, 0].min())) - 2, 0), width)
    y0 = min(max(int(np.floor(corners[:, 1].min())) - 2, 0), height)
    x1 = max(min(int(np.ceil(corners[:, 0].max())) + 3, width), x0)
    y1 = max(min(int(np.ceil(corners[:, 1].max())) + 3, height), y0)
    return x0, y0, x1, y1


def warp_face(frame: np.ndarray, affine: np.ndarray, face_size: tuple[int, int],
              scratch: np.ndarray | None = None) -> np.ndarray:
    """Bilinear warp of an RGB uint8 frame into the (h, w, 3) uint8 crop, border 127.

    ``scratch``: a reusable float32 array of the frame's shape (its contents do not matter); only
    the region the warp reads (``sampled_region``) is converted into it instead of the whole frame
    (same result: same source size and coordinates, and the warp reads no other pixel)."""
    affine = np.asarray(affine, np.float64)
    if scratch is None or scratch.shape != frame.shape or scratch.dtype != np.float32:
        source = frame.astype(np.float32)
    else:
        x0, y0, x1, y1 = sampled_region(affine, face_size, frame.shape)
        scratch[y0:y1, x0:x1] = frame[y0:y1, x0:x1]
        source = scratch
    warped = cv2.warpAffine(source, affine, tuple(face_size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(BORDER_VALUE,) * 3)
    return np.clip(warped, 0, 255).astype(np.uint8)  # truncation, as LatentSync's float -> uint8 cast


def resize_face(crop: np.ndarray, resolution: int) -> np.ndarray:
    """The aligned crop resized to (resolution, resolution) with Lanczos-4 (uint8)."""
    return cv2.resize(crop, (resolution, resolution), interpolation=cv2.INTER_LANCZOS4)


class FaceAligner:
    """Aligns the faces of one video; keeps the smoothing state between frames."""

    def __init__(self, resolution: int = 256, smooth: bool = True):
        self.template = AlignTemplate.for_resolution(resolution)
        self.smooth = smooth
        self.smoother = TranslationSmoother()
        self._scratch: np.ndarray | None = None  # float32 frame buffer reused by warp_face

    def reset(self) -> None:
        """Forget the smoothing state (call between videos or at a scene cut)."""
        self.smoother.reset()

    def affine(self, landmarks: np.ndarray) -> np.ndarray:
        """(2, 3) float32 frame -> crop transform for one frame's anchors (updates smoothing)."""
        matrix, bias = similarity_transform(landmarks, self.template.face_template)
        if self.smooth:
            matrix = self.smoother(matrix, bias)
        return matrix.astype(np.float32)

    def crop(self, frame: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(face_size crop (h, w, 3) uint8, affine (2, 3) float32) before the resize."""
        frame = check_frame(frame)
        affine = self.affine(landmarks)
        if self._scratch is None or self._scratch.shape != frame.shape:
            self._scratch = np.empty(frame.shape, np.float32)
        return warp_face(frame, affine, self.template.face_size, self._scratch), affine

    def __call__(self, frame: np.ndarray, landmarks: np.ndarray) -> AlignedFace:
        crop, affine = self.crop(frame, landmarks)
        return AlignedFace(face=resize_face(crop, self.template.resolution), affine=affine,
                           box=self.template.box, landmarks=np.asarray(landmarks, np.float64))
