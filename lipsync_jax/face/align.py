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


def warp_face(frame: np.ndarray, affine: np.ndarray, face_size: tuple[int, int]) -> np.ndarray:
    """Bilinear warp of an RGB uint8 frame into the (h, w, 3) uint8 crop, border 127."""
    warped = cv2.warpAffine(frame.astype(np.float32), np.asarray(affine, np.float64), tuple(face_size),
                            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(BORDER_VALUE,) * 3)
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
        return warp_face(frame, affine, self.template.face_size), affine

    def __call__(self, frame: np.ndarray, landmarks: np.ndarray) -> AlignedFace:
        crop, affine = self.crop(frame, landmarks)
        return AlignedFace(face=resize_face(crop, self.template.resolution), affine=affine,
                           box=self.template.box, landmarks=np.asarray(landmarks, np.float64))
