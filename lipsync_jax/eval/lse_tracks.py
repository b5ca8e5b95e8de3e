"""Face tracks for LSE, as LatentSync's ``eval/syncnet_detect.py`` (syncnet_python's pipeline)
builds them: S3FD on every frame, IoU tracking, median-smoothed boxes, 224x224 crops.

1. Detection: each frame (RGB, 25 fps) resized by ``scale`` 0.25 (cv2 INTER_LINEAR), S3FD, faces
   scoring above ``conf_th`` 0.9 after Detect's NMS (0.3) and ``nms_(0.1)`` (``models.s3fd``).
   Frames go through the network in fixed-size jitted batches (the last one padded).
2. Tracking (``track_faces``): repeatedly start a track at the first remaining face and walk
   forward through the frames, appending in each frame the first face whose IoU with the
   track's last box exceeds 0.5, as long as the gap to the last appended frame is at most
   ``num_failed_det`` (25) frames; faces used are removed. A track is kept when it has more
   than ``min_track`` (50) detections; its boxes are linearly interpolated over the missing
   frames and it must have a mean width or height above ``min_face_size`` (100 px).
   Tracking runs per shot: ``ShotDetector`` cuts where PySceneDetect's ContentDetector would with
   its defaults (mean absolute HSV difference of consecutive frames >= 27, frames subsampled to
   about 256 px wide, at least 15 frames between cuts; our re-implementation), and shots shorter
   than ``min_track`` frames are skipped, as LatentSync's ``scene_detect``.
3. Cropping (``crop_track``): per frame the half-size ``s = max(w, h) / 2`` and the centre,
   each median-filtered over 13 frames (``scipy.signal.medfilt``, zero padded); the frame is
   padded by ``int(s * 1.8)`` with the value 110 and the crop is rows ``[cy - s, cy + 1.8 s)``,
   columns ``[cx - 1.4 s, cx + 1.4 s)`` (crop_scale 0.4), resized to 224x224 (cv2 INTER_LINEAR)
   and given to the SyncNet as BGR. Differences from the original: crops are kept in memory
   instead of being written to an XVID video and re-read as JPEGs (no lossy round trip), and a
   crop window reaching past the padded frame is clipped instead of wrapping around.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

from lipsync_jax.models import s3fd

FACE_SIZE = 224
PAD_VALUE = 110


@dataclasses.dataclass(frozen=True)
class DetectSettings:
    scale: float = 0.25  # LatentSync's facedet_scale
    conf_th: float = 0.9
    batch_size: int = 8
    min_track: int = 50
    num_failed_det: int = 25
    min_face_size: float = 100.0
    iou_threshold: float = 0.5
    crop_scale: float = 0.4
    smoothing: int = 13  # median filter taps over the box size and centre
    scene_threshold: float = 27.0  # ContentDetector's default; <= 0 disables shot detection
    min_scene_len: int = 15


@dataclasses.dataclass(frozen=True)
class FaceTrackLSE:
    frames: np.ndarray  # (n,) consecutive frame indices
    boxes: np.ndarray  # (n, 4) interpolated x1, y1, x2, y2 (pixels)
    num_detections: int  # frames where the detector found this face (the rest interpolated)

    @property
    def start(self) -> int:
        return int(self.frames[0])

    @property
    def end(self) -> int:  # inclusive
        return int(self.frames[-1])


@functools.lru_cache(maxsize=4)
def _detect_fn(model: s3fd.S3FDNet, height: int, width: int):
    priors = jnp.asarray(s3fd.prior_boxes(height, width))

    @jax.jit
    def run(params, images):
        loc, conf = model.apply({"params": params}, images)
        return s3fd.decode_boxes(loc, priors), conf[..., 1]

    return run


def detect_frames(model: s3fd.S3FDNet, params: Any, frames: Iterable[np.ndarray], settings: DetectSettings,
                  progress: Any = None) -> list[np.ndarray]:
    """Per frame a (k, 5) array of faces (x1, y1, x2, y2, score in pixels of the full frame)."""
    results: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    size: tuple[int, int] | None = None  # full frame (w, h)

    def flush():
        if not batch:
            return
        images = np.stack(batch)
        count = images.shape[0]
        if count < settings.batch_size:
            images = np.concatenate([images, np.zeros((settings.batch_size - count, *images.shape[1:]), np.float32)])
        boxes, scores = _detect_fn(model, images.shape[1], images.shape[2])(params, images)
        boxes, scores = np.asarray(boxes), np.asarray(scores)
        for i in range(count):
            results.append(s3fd.faces_from_scores(boxes[i], scores[i], size, settings.conf_th))
        if progress is not None:
            progress.update(count)
        batch.clear()

    for frame in frames:
        frame_size = (frame.shape[1], frame.shape[0])
        if size is not None and frame_size != size:
            raise ValueError(f"frame size changed from {size} to {frame_size}")
        size = frame_size
        batch.append(s3fd.preprocess(frame, settings.scale))
        if len(batch) == settings.batch_size:
            flush()
    flush()
    return results


class ShotDetector:
    """Scene cuts from the frames as they stream past (``watch``), see the module docstring."""

    def __init__(self, threshold: float = 27.0, min_scene_len: int = 15):
        self.threshold, self.min_scene_len = float(threshold), int(min_scene_len)
        self.cuts: list[int] = []
        self.scores: list[float] = []  # per frame (0 for the first)
        self._last_hsv: np.ndarray | None = None
        self._count = 0

    def update(self, frame_rgb: np.ndarray) -> None:
        import cv2

        step = max(1, frame_rgb.shape[1] // 256)
        hsv = cv2.cvtColor(np.ascontiguousarray(frame_rgb[::step, ::step]), cv2.COLOR_RGB2HSV).astype(np.int32)
        score = 0.0
        if self._last_hsv is not None:
            score = float(np.mean(np.abs(hsv - self._last_hsv), axis=(0, 1)).mean())
            last_cut = self.cuts[-1] if self.cuts else 0
            if self.threshold > 0 and score >= self.threshold and self._count - last_cut >= self.min_scene_len:
                self.cuts.append(self._count)
        self.scores.append(score)
        self._last_hsv = hsv
        self._count += 1

    def watch(self, frames: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
        for frame in frames:
            self.update(frame)
            yield frame

    def shots(self) -> list[tuple[int, int]]:
        """``[(start, end_exclusive), ...]`` covering every frame seen."""
        bounds = [0, *self.cuts, self._count]
        return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two (x1, y1, x2, y2) boxes (no +1 on the sizes)."""
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def track_faces(detections: Sequence[np.ndarray], settings: DetectSettings,
                shots: Sequence[tuple[int, int]] | None = None) -> list[FaceTrackLSE]:
    """Face tracks from per-frame detections (see the module docstring, step 2), shot by shot
    (``shots``: ``[(start, end_exclusive)]``; None: one shot; shots shorter than
    ``min_track`` frames are skipped)."""
    tracks: list[FaceTrackLSE] = []
    for start, end in shots if shots is not None else [(0, len(detections))]:
        if end - start >= settings.min_track:
            tracks.extend(_track_shot(detections[start:end], start, settings))
    return tracks


def _track_shot(detections: Sequence[np.ndarray], first_frame: int, settings: DetectSettings) -> list[FaceTrackLSE]:
    remaining = [[np.asarray(face[:4], np.float64) for face in faces] for faces in detections]
    tracks: list[FaceTrackLSE] = []
    while True:
        frames, boxes = [], []
        for offset, faces in enumerate(remaining):
            index = first_frame + offset
            if frames and index - frames[-1] > settings.num_failed_det:
                break  # every later frame is further away still
            for k, box in enumerate(faces):
                if not frames or box_iou(box, boxes[-1]) > settings.iou_threshold:
                    frames.append(index)
                    boxes.append(box)
                    del faces[k]
                    break
        if not frames:
            return tracks
        if len(frames) <= settings.min_track:
            continue
        frame_ids = np.arange(frames[0], frames[-1] + 1)
        stacked = np.stack(boxes)
        filled = np.stack([np.interp(frame_ids, frames, stacked[:, j]) for j in range(4)], axis=1)
        mean_size = max(np.mean(filled[:, 2] - filled[:, 0]), np.mean(filled[:, 3] - filled[:, 1]))
        if mean_size > settings.min_face_size:
            tracks.append(FaceTrackLSE(frames=frame_ids, boxes=filled, num_detections=len(frames)))


def crop_windows(track: FaceTrackLSE, settings: DetectSettings) -> np.ndarray:
    """(n, 5) int rows (y0, y1, x0, x1, pad): the crop window in the frame padded by ``pad``,
    from the smoothed boxes (step 3)."""
    boxes = track.boxes
    half = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    cy, cx = (boxes[:, 1] + boxes[:, 3]) / 2, (boxes[:, 0] + boxes[:, 2]) / 2
    taps = settings.smoothing
    half, cy, cx = (scipy.signal.medfilt(v, kernel_size=taps) for v in (half, cy, cx))
    cs = settings.crop_scale
    pad = (half * (1 + 2 * cs)).astype(np.int64)
    my, mx = cy + pad, cx + pad
    windows = np.stack([(my - half).astype(np.int64), (my + half * (1 + 2 * cs)).astype(np.int64),
                        (mx - half * (1 + cs)).astype(np.int64), (mx + half * (1 + cs)).astype(np.int64), pad], 1)
    return windows


def _bilinear_taps(size_out: int, size_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """cv2 INTER_LINEAR sampling along one axis: source index pairs and weights per output index."""
    scale = size_in / size_out
    src = (np.arange(size_out) + 0.5) * scale - 0.5
    left = np.floor(src).astype(np.int64)
    frac = src - left
    frac = np.where(left < 0, 0.0, frac)
    left = np.clip(left, 0, size_in - 1)
    right = np.clip(left + 1, 0, size_in - 1)
    frac = np.where(left == size_in - 1, 0.0, frac)
    return left, right, frac


def _resize_window_sampled(frame: np.ndarray, y0: int, y1: int, x0: int, x1: int, pad: int) -> np.ndarray:
    """Bilinear 224x224 resize of the padded-frame window without materialising it (huge boxes):
    only the source pixels the interpolation reads are gathered (110 outside the frame)."""
    rows = _bilinear_taps(FACE_SIZE, y1 - y0)
    cols = _bilinear_taps(FACE_SIZE, x1 - x0)

    def gather(r, c):
        fr, fc = r[:, None] + y0 - pad, c[None, :] + x0 - pad
        inside = (fr >= 0) & (fr < frame.shape[0]) & (fc >= 0) & (fc < frame.shape[1])
        values = frame[np.clip(fr, 0, frame.shape[0] - 1), np.clip(fc, 0, frame.shape[1] - 1)].astype(np.float64)
        return np.where(inside[..., None], values, float(PAD_VALUE))

    wy, wx = rows[2][:, None, None], cols[2][None, :, None]
    top = gather(rows[0], cols[0]) * (1 - wx) + gather(rows[0], cols[1]) * wx
    bottom = gather(rows[1], cols[0]) * (1 - wx) + gather(rows[1], cols[1]) * wx
    return np.clip(np.round(top * (1 - wy) + bottom * wy), 0, 255).astype(np.uint8)


def crop_face(frame: np.ndarray, window: np.ndarray, max_window_pixels: int = 16_000_000) -> np.ndarray:
    """224x224 BGR crop of an RGB frame for one (y0, y1, x0, x1, pad) window: the frame padded
    by ``pad`` with 110 on every side, sliced (clipped to the padded frame), resized with cv2
    INTER_LINEAR. Windows over ``max_window_pixels`` (only absurd boxes, e.g. from random
    weights) are resampled directly instead (same bilinear taps; within 1 level of cv2)."""
    import cv2

    y0, y1, x0, x1, pad = (int(v) for v in window)
    height, width = frame.shape[0] + 2 * pad, frame.shape[1] + 2 * pad
    y0, y1, x0, x1 = max(0, y0), min(height, y1), max(0, x0), min(width, x1)
    if y1 <= y0 or x1 <= x0:
        raise ValueError(f"empty face crop window {window.tolist()}")
    if (y1 - y0) * (x1 - x0) > max_window_pixels:
        return np.ascontiguousarray(_resize_window_sampled(frame, y0, y1, x0, x1, pad)[..., ::-1])
    out = np.full((y1 - y0, x1 - x0, 3), PAD_VALUE, np.uint8)
    # the part of the window that lies inside the original frame
    fy0, fy1 = max(y0 - pad, 0), min(y1 - pad, frame.shape[0])
    fx0, fx1 = max(x0 - pad, 0), min(x1 - pad, frame.shape[1])
    if fy1 > fy0 and fx1 > fx0:
        out[fy0 + pad - y0:fy1 + pad - y0, fx0 + pad - x0:fx1 + pad - x0] = frame[fy0:fy1, fx0:fx1]
    resized = cv2.resize(out, (FACE_SIZE, FACE_SIZE), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(resized[..., ::-1])  # RGB -> BGR


def crop_tracks(frames: Iterable[np.ndarray], tracks: Sequence[FaceTrackLSE],
                settings: DetectSettings) -> list[np.ndarray]:
    """One (n, 224, 224, 3) uint8 BGR array per track, from a second pass over the frames."""
    windows = [crop_windows(track, settings) for track in tracks]
    crops = [np.zeros((len(track.frames), FACE_SIZE, FACE_SIZE, 3), np.uint8) for track in tracks]
    last = max((track.end for track in tracks), default=-1)
    for index, frame in enumerate(frames):
        if index > last:
            break
        for t, track in enumerate(tracks):
            if track.start <= index <= track.end:
                crops[t][index - track.start] = crop_face(frame, windows[t][index - track.start])
    return crops
