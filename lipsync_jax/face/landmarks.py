"""Per-frame face landmarks reduced to LatentSync's three alignment anchors.

LatentSync aligns every face from three points in pixel coordinates: the centre of the
eyebrow on the image's left, the centre of the eyebrow on the image's right, and the centre
of the nose. It gets them from insightface's 106-point model (``2d106det``):

    left eyebrow  = mean of points [43, 48, 49, 51, 50]
    right eyebrow = mean of points [101, 102, 103, 104, 105]
    nose          = mean of points [74, 77, 83, 86]

(the 106 points are rounded to integers first and each mean is rounded again).

The default backend here is MediaPipe FaceMesh (478 points with ``refine_landmarks``; its
models ship inside the mediapipe wheel, so it works offline). The corresponding FaceMesh
points, chosen on the real demo frames of the ``align_restore`` golden fixture, are:

    left eyebrow  = mean of the upper contour of the subject's right eyebrow [70, 63, 105, 66, 107]
    right eyebrow = mean of the upper contour of the subject's left eyebrow [300, 293, 334, 296, 336]
    nose          = mean of the nose midline from the lower bridge to the tip [195, 5, 4, 1]

On frame 0 and 1 of demo1 these land 0.2-0.5 px from insightface's anchors (full-resolution
frames, per-frame detection). Alternatives measured on the same frames were worse: whole
eyebrows (upper + lower contour) sit 3-4 px low, the lower contours 6-8 px low, and single
nose points are off by 5 px or more along the midline. ``refine_landmarks=True`` matters:
the unrefined model moves the eyebrow points by up to 12 px.

A backend is any callable ``landmarker(frame_rgb_uint8) -> (3, 2) float64 array or None``.

Several faces (multi-person videos): both backends take ``max_num_faces`` and have
``detect(frame) -> list[FaceDetection]`` (anchors, box and score of each face, largest box
first, at most ``max_num_faces``); ``detect_faces(landmarker, frame)`` also wraps a plain
single-face callable. With the default ``max_num_faces=1`` the single-face ``__call__`` is
unchanged; with more, ``__call__`` returns the largest face. MediaPipe: FaceMesh finds up to
``max_num_faces`` faces; when it finds fewer, the full-range detector's boxes that no found
face covers are tried with FaceMesh on an enlarged crop (the single-face fallback, per box).
A face's box is the bounding box of its FaceMesh points (eyebrows to chin, ear to ear).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Protocol, runtime_checkable

import numpy as np

from lipsync_jax.face.errors import FaceBackendError, FaceInputError
from lipsync_jax.quiet import native_log_filter

# MediaPipe FaceMesh indices averaged into each anchor (see the module docstring).
MEDIAPIPE_ANCHOR_INDICES: tuple[tuple[int, ...], ...] = (
    (70, 63, 105, 66, 107),  # eyebrow on the image's left (subject's right), upper contour
    (300, 293, 334, 296, 336),  # eyebrow on the image's right (subject's left), upper contour
    (195, 5, 4, 1),  # nose midline, lower bridge to tip
)

# insightface 2d106det indices LatentSync averages into each anchor.
INSIGHTFACE_ANCHOR_INDICES: tuple[tuple[int, ...], ...] = (
    (43, 48, 49, 51, 50),
    (101, 102, 103, 104, 105),
    (74, 77, 83, 86),
)

BACKENDS = ("mediapipe", "insightface")


@dataclasses.dataclass(frozen=True)
class FaceDetection:
    """One face in one frame: its three anchors, its box and the detector's confidence."""

    anchors: np.ndarray  # (3, 2) float64 pixels, as the single-face landmarker gives them
    box: np.ndarray  # (4,) float64 pixels (x1, y1, x2, y2)
    score: float = 1.0

    @property
    def area(self) -> float:
        return box_area(self.box)

    def scaled(self, factor: float) -> FaceDetection:
        """The same face in a frame ``factor`` times larger (coordinates multiplied)."""
        return FaceDetection(self.anchors * factor, self.box * factor, self.score)


def box_area(box: np.ndarray) -> float:
    return float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))


def box_from_points(points: np.ndarray) -> np.ndarray:
    """(4,) float64 bounding box (x1, y1, x2, y2) of (n, 2) points."""
    points = np.asarray(points, np.float64)
    return np.concatenate([points.min(axis=0), points.max(axis=0)])


def box_from_anchors(anchors: np.ndarray) -> np.ndarray:
    """An approximate face box from the three anchors alone (for backends without a box): the
    eyebrow span widened 1.6x, from the eyebrows up 0.4x to 2.2x the eyebrow-nose drop below."""
    anchors = np.asarray(anchors, np.float64)
    brow_mid = anchors[:2].mean(axis=0)
    half_width = 0.8 * max(np.linalg.norm(anchors[1] - anchors[0]), 1.0)
    drop = max(np.linalg.norm(anchors[2] - brow_mid), 1.0)
    return np.array([brow_mid[0] - half_width, brow_mid[1] - 0.4 * drop,
                     brow_mid[0] + half_width, brow_mid[1] + 2.2 * drop], np.float64)


def largest_first(faces: list[FaceDetection], limit: int) -> list[FaceDetection]:
    """Faces sorted by box area, largest first (stable on ties), at most ``limit``."""
    return sorted(faces, key=lambda f: -f.area)[:limit]


@runtime_checkable
class FaceLandmarker(Protocol):
    """Maps one RGB uint8 frame (h, w, 3) to its (3, 2) anchor points, or None (no face)."""

    def __call__(self, frame: np.ndarray) -> np.ndarray | None: ...


def check_frame(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """The frame as a C-contiguous uint8 (h, w, 3) array, or FaceInputError."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise FaceInputError(f"{what}: expected an RGB image of shape (h, w, 3), got {frame.shape}")
    if frame.dtype != np.uint8:
        raise FaceInputError(f"{what}: expected uint8 pixels, got {frame.dtype}")
    if frame.shape[0] < 16 or frame.shape[1] < 16:
        raise FaceInputError(f"{what}: image {frame.shape[1]}x{frame.shape[0]} is too small")
    return np.ascontiguousarray(frame)


def anchors_from_points(points: np.ndarray, groups: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """(n, 2) landmarks -> (3, 2) float64 anchors, each the mean of one index group."""
    points = np.asarray(points, np.float64)
    return np.stack([points[list(group)].mean(axis=0) for group in groups])


class MediaPipeLandmarker:
    """MediaPipe FaceMesh anchors (default backend).

    ``tracking=False`` (default) detects the face in every frame independently, as LatentSync
    does with insightface; ``tracking=True`` lets FaceMesh reuse the previous frame's region
    (faster, but results then depend on frame order). When FaceMesh's short-range detector
    misses a small face, MediaPipe's full-range face detector proposes a box and FaceMesh runs
    again on an enlarged crop around it.
    """

    def __init__(self, tracking: bool = False, min_confidence: float = 0.5, crop_fallback: bool = True,
                 max_num_faces: int = 1):
        if max_num_faces < 1:
            raise FaceInputError(f"max_num_faces must be at least 1, got {max_num_faces}")
        self.max_num_faces = int(max_num_faces)
        with native_log_filter():  # MediaPipe's start-up lines (lipsync_jax/quiet.py)
            try:
                import mediapipe as mp
            except ImportError as e:  # pragma: no cover - mediapipe is a dependency
                raise FaceBackendError(
                    f"the mediapipe face backend needs `pip install mediapipe==0.10.21` ({e})") from e
            face_mesh = mp.solutions.face_mesh
            self._mesh = _QuietStart(face_mesh.FaceMesh(
                static_image_mode=not tracking, max_num_faces=self.max_num_faces, refine_landmarks=True,
                min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence))
            self._crop_mesh = None
            self._detector = None
            if crop_fallback:
                self._crop_mesh = _QuietStart(face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                                                 refine_landmarks=True,
                                                                 min_detection_confidence=min_confidence))
                self._detector = _QuietStart(mp.solutions.face_detection.FaceDetection(
                    model_selection=1, min_detection_confidence=min_confidence))

    def points(self, frame: np.ndarray) -> np.ndarray | None:
        """All FaceMesh points (478, 2) in pixel coordinates, or None."""
        frame = check_frame(frame)
        points = _mesh_points(self._mesh, frame)
        if points is None and self._detector is not None:
            points = self._points_from_detector_crop(frame)
        return points

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        if self.max_num_faces > 1:
            faces = self.detect(frame)
            return faces[0].anchors if faces else None
        points = self.points(frame)
        return None if points is None else anchors_from_points(points, MEDIAPIPE_ANCHOR_INDICES)

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """Up to ``max_num_faces`` faces, largest box first (see the module docstring)."""
        frame = check_frame(frame)
        found = [_detection(points) for points in _all_mesh_points(self._mesh, frame)]
        if len(found) < self.max_num_faces and self._detector is not None:
            height, width = frame.shape[:2]
            for rel in self._detector_boxes(frame):  # largest first
                if len(found) >= self.max_num_faces:
                    break
                box = np.array([rel.xmin * width, rel.ymin * height, (rel.xmin + rel.width) * width,
                                (rel.ymin + rel.height) * height], np.float64)
                if any(_covers(face.box, box) for face in found):
                    continue
                points = self._points_in_box(frame, rel)
                if points is not None:
                    face = _detection(points)
                    if not any(_covers(other.box, face.box) for other in found):
                        found.append(face)
        return largest_first(found, self.max_num_faces)

    def detect_in_box(self, frame: np.ndarray, box: np.ndarray) -> FaceDetection | None:
        """The face FaceMesh finds on an enlarged crop around ``box`` (pixels, x1, y1, x2, y2),
        or None: the detector fallback with a box known from elsewhere (a face track)."""
        frame = check_frame(frame)
        if self._crop_mesh is None:
            return None
        height, width = frame.shape[:2]
        rel = _RelativeBox(box[0] / width, box[1] / height, (box[2] - box[0]) / width, (box[3] - box[1]) / height)
        points = self._points_in_box(frame, rel)
        return None if points is None else _detection(points)

    def _detector_boxes(self, frame: np.ndarray) -> list:
        """The full-range detector's relative boxes (xmin, ymin, width, height), largest first."""
        result = self._detector.process(frame)
        boxes = [d.location_data.relative_bounding_box for d in (result.detections or [])]
        return sorted(boxes, key=lambda b: -(b.width * b.height))  # stable: first of equals first

    def _points_from_detector_crop(self, frame: np.ndarray) -> np.ndarray | None:
        boxes = self._detector_boxes(frame)
        if not boxes:
            return None
        return self._points_in_box(frame, boxes[0])  # the largest face, as LatentSync picks

    def _points_in_box(self, frame: np.ndarray, box) -> np.ndarray | None:
        """FaceMesh on a crop of twice the size of one relative detector box, or None."""
        height, width = frame.shape[:2]
        cx, cy = (box.xmin + box.width / 2) * width, (box.ymin + box.height / 2) * height
        half = 1.0 * max(box.width * width, box.height * height)  # crop twice the face size
        x0, y0 = max(int(cx - half), 0), max(int(cy - half), 0)
        x1, y1 = min(int(cx + half), width), min(int(cy + half), height)
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        crop = frame[y0:y1, x0:x1]
        scale = max(1.0, 256.0 / max(crop.shape[:2]))  # FaceMesh wants the face reasonably large
        if scale > 1.0:
            import cv2

            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        points = _mesh_points(self._crop_mesh, np.ascontiguousarray(crop))
        if points is None:
            return None
        return points / scale + np.array([x0, y0], np.float64)

    def close(self) -> None:
        for solution in (self._mesh, self._crop_mesh, self._detector):
            if solution is not None:
                solution.close()


class _QuietStart:
    """A MediaPipe graph whose start runs inside ``quiet.native_log_filter``: MediaPipe's C++
    start-up lines cannot be lowered any other way. Its threads create the interpreters (and log)
    on their own schedule after construction, so the graph runs once on a small blank image
    here, inside the filter; its calls stay inside the filter until it has found a face (a
    projection warning comes with the first face)."""

    def __init__(self, graph):
        self.graph = graph
        self.started = False
        with native_log_filter():
            graph.process(np.zeros((64, 64, 3), np.uint8))

    def process(self, image: np.ndarray):
        if self.started:
            return self.graph.process(image)
        with native_log_filter():
            result = self.graph.process(image)
        self.started = bool(getattr(result, "multi_face_landmarks", None) or getattr(result, "detections", None))
        return result

    def close(self) -> None:
        self.graph.close()


@dataclasses.dataclass(frozen=True)
class _RelativeBox:  # the fields of MediaPipe's relative_bounding_box
    xmin: float
    ymin: float
    width: float
    height: float


def _mesh_points(mesh, frame: np.ndarray) -> np.ndarray | None:
    faces = _all_mesh_points(mesh, frame)
    return faces[0] if faces else None


def _all_mesh_points(mesh, frame: np.ndarray) -> list[np.ndarray]:
    result = mesh.process(frame)
    height, width = frame.shape[:2]
    return [np.array([[p.x * width, p.y * height] for p in face.landmark], np.float64)
            for face in (result.multi_face_landmarks or [])]


def _detection(points: np.ndarray) -> FaceDetection:
    return FaceDetection(anchors_from_points(points, MEDIAPIPE_ANCHOR_INDICES), box_from_points(points))


def _covers(box: np.ndarray, other: np.ndarray) -> bool:
    """True when ``other``'s centre lies inside ``box`` (the same face seen twice)."""
    cx, cy = (other[0] + other[2]) / 2, (other[1] + other[3]) / 2
    return bool(box[0] <= cx <= box[2] and box[1] <= cy <= box[3])


INSIGHTFACE_HELP = (
    "The insightface face backend needs `pip install insightface onnxruntime` (or onnxruntime-gpu) and "
    "insightface's buffalo_l detection and 106-point landmark models: {root}/models/buffalo_l/det_10g.onnx "
    "and {root}/models/buffalo_l/2d106det.onnx (LatentSync's checkpoint repository ships them under "
    "auxiliary/models/buffalo_l/; pass that auxiliary folder as the root). Or use --face_backend mediapipe."
)


class InsightFaceLandmarker:
    """insightface ``2d106det`` anchors, exactly as LatentSync computes them.

    Face selection follows LatentSync: detector input 512x512, faces narrower than 50 px or
    shorter than 80 px, with width/height outside [0.2, 1.5] or a score below 0.5 are dropped,
    and the largest remaining face is used. On frames downscaled from the source (the track
    pre-pass) set ``size_scale`` to the source pixels per frame pixel so that the size limits
    stay in source pixels. Points are rounded before and after the means.
    The frame is passed as RGB, as LatentSync does.
    """

    MODEL_FILES = ("det_10g.onnx", "2d106det.onnx")

    def __init__(self, root: str = "checkpoints/auxiliary", det_size: int = 512, min_score: float = 0.5,
                 providers: tuple[str, ...] | None = None, max_num_faces: int = 1):
        if max_num_faces < 1:
            raise FaceInputError(f"max_num_faces must be at least 1, got {max_num_faces}")
        self.max_num_faces = int(max_num_faces)
        self.size_scale = 1.0  # source pixels per frame pixel: the size filter in source pixels
        model_dir = os.path.join(root, "models", "buffalo_l")
        missing = [f for f in self.MODEL_FILES if not os.path.isfile(os.path.join(model_dir, f))]
        if missing:
            raise FaceBackendError(f"insightface model files missing in {model_dir}: {', '.join(missing)}. "
                                   + INSIGHTFACE_HELP.format(root=root))
        try:
            face_analysis = importlib.import_module("insightface.app").FaceAnalysis
        except ImportError as e:
            raise FaceBackendError(f"insightface is not installed ({e}). " + INSIGHTFACE_HELP.format(root=root)) from e
        if providers is None:
            providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
        self._app = face_analysis(name="buffalo_l", root=root, allowed_modules=["detection", "landmark_2d_106"],
                                  providers=list(providers))
        self._app.prepare(ctx_id=0, det_size=(det_size, det_size))
        self.min_score = min_score

    def _kept_faces(self, frame: np.ndarray) -> list:
        """insightface faces passing LatentSync's size/shape/score filter, largest box first
        (stable: among equal areas the detector's order)."""
        kept = []
        for face in self._app.get(frame):
            x1, y1, x2, y2 = face.bbox.astype(np.int64).tolist()
            w, h = x2 - x1, y2 - y1
            if self.size_scale != 1.0:  # downscaled frames (detection pre-pass)
                w, h = w * self.size_scale, h * self.size_scale
            if w < 50 or h < 80 or not 0.2 <= w / h <= 1.5 or face.det_score < self.min_score:
                continue
            kept.append((w * h, face))
        return [face for _, face in sorted(kept, key=lambda item: -item[0])]

    def points(self, frame: np.ndarray) -> np.ndarray | None:
        """The 106 landmarks (rounded to integers, as LatentSync does) of the chosen face, or None."""
        faces = self._kept_faces(check_frame(frame))
        return None if not faces else np.round(faces[0].landmark_2d_106).astype(np.float64)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        points = self.points(frame)
        if points is None:
            return None
        return np.round(anchors_from_points(points, INSIGHTFACE_ANCHOR_INDICES))

    def detect(self, frame: np.ndarray) -> list[FaceDetection]:
        """Up to ``max_num_faces`` faces (same filter), largest box first; box = detector box."""
        detections = []
        for face in self._kept_faces(check_frame(frame))[:self.max_num_faces]:
            points = np.round(face.landmark_2d_106).astype(np.float64)
            detections.append(FaceDetection(np.round(anchors_from_points(points, INSIGHTFACE_ANCHOR_INDICES)),
                                            np.asarray(face.bbox, np.float64)[:4], float(face.det_score)))
        return detections


def detect_faces(landmarker: FaceLandmarker, frame: np.ndarray) -> list[FaceDetection]:
    """Every face a landmarker finds in one frame: its ``detect`` when it has one, else its single
    face with a box estimated from the anchors (``box_from_anchors``)."""
    detect = getattr(landmarker, "detect", None)
    if detect is not None:
        return list(detect(frame))
    anchors = landmarker(frame)
    if anchors is None:
        return []
    anchors = np.asarray(anchors, np.float64)
    return [FaceDetection(anchors, box_from_anchors(anchors))]


def make_landmarker(backend: str = "mediapipe", **kwargs) -> FaceLandmarker:
    """Build a landmark backend by name: ``"mediapipe"`` (default) or ``"insightface"``."""
    if backend == "mediapipe":
        return MediaPipeLandmarker(**kwargs)
    if backend == "insightface":
        return InsightFaceLandmarker(**kwargs)
    raise FaceBackendError(f"unknown face backend {backend!r}; choose one of {', '.join(BACKENDS)}")
