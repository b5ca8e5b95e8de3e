"""Per-clip filters of LatentSync's data pipeline, behind small pluggable interfaces.

Order per candidate clip (a 5-10 s segment of one shot, its aligned faces, its audio):

1. ``single_face`` one person per clip (``--multi_face drop``, the default): LatentSync keeps a
                   clip only when MediaPipe face detection finds exactly one face in every
                   frame. Here the faces are detected on the source frames (a second person
                   beside the speaker is not in the aligned crop) and the clip is kept only if
                   one face covers all its frames and no other face competes with it (another
                   box at least ``competing_face_ratio`` as tall as the main one, 0 = any other
                   face, in at least 3 frames of the clip). ``--multi_face split`` joins the
                   boxes into tracks (``TrackFinder``: ``lipsync_jax.face.tracks``) and makes
                   one clip per track that covers the whole segment,
2. ``face_size``   LatentSync's high-resolution prefilter: the main face's box (median height
                   over the clip, source pixels) must be at least ``--min_face_size``,
3. ``face``        a frame where the aligner lost the face drops the clip (``face_lost``),
4. ``sync``        LatentSync's sync_av: confidence >= ``--sync_conf_threshold`` and
                   |offset| <= ``--sync_max_offset`` (6); the audio is then re-cut by the offset
                   (``sync_filter.corrected_span``; frames are never re-encoded),
5. ``quality``     LatentSync's filter_visual_quality: the mean quality score of the first,
                   middle and last aligned frame >= ``--min_quality`` (40).

Interfaces (duck-typed, so test doubles and other models plug in):

- ``SyncScorer.score(jpeg_frames, audio_float_16k, fps) -> SyncResult(score, confidence, offset)``
  (``sync_filter.SyncScorer``: StableSyncNet; ``LseSyncScorer``: the classic SyncNet + S3FD
  LSE pipeline, ``lipsync_jax.eval.lse``),
- ``QualityScorer(frames uint8 (k, h, w, 3)) -> float`` (mean over the k frames given),
- ``FaceDetector(frame uint8 (h, w, 3)) -> (n, 5) float boxes x0, y0, x1, y1, score``,
- ``TrackFinder(boxes_per_frame) -> list of FaceTrackSpan`` (one entry per associated face).
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

STAGES = ("segment", "single_face", "face_size", "face", "sync", "quality")  # in filter order
MULTI_FACE_MODES = ("drop", "split", "keep")
SYNC_SCORERS = ("lse", "stable")
MIN_COMPETING_FRAMES = 3  # a second face must be seen in this many frames of a clip to compete
LSE_CONF_THRESHOLD = 3.0  # LatentSync's sync_av default (LSE-C)
STABLE_CONF_THRESHOLD = 0.0  # StableSyncNet's confidence is a cosine-similarity margin, not LSE-C


def default_sync_threshold(scorer: str) -> float:
    return LSE_CONF_THRESHOLD if scorer == "lse" else STABLE_CONF_THRESHOLD


# ---- interfaces -----------------------------------------------------------------------------

class QualityScorer(Protocol):
    def __call__(self, frames: np.ndarray) -> float: ...


class FaceDetector(Protocol):
    def __call__(self, frame: np.ndarray) -> np.ndarray: ...


@dataclasses.dataclass
class FaceTrackSpan:
    """One associated face: ``frames`` (m,) increasing indices where it was detected, ``boxes``
    (m, 4). As ``lipsync_jax.face.tracks`` defines a track, it covers the frames from its first
    to its last detection when no gap between detections is longer than ``max_gap`` frames;
    boxes in a gap are interpolated."""

    frames: np.ndarray
    boxes: np.ndarray
    max_gap: int = 12

    def covers(self, start: int, stop: int) -> bool:
        frames = np.asarray(self.frames)
        if not len(frames) or frames[0] > start or frames[-1] < stop - 1:
            return False
        inside = frames[(frames >= start) & (frames < stop)]
        edges = np.concatenate([[start - 1], inside, [stop]])
        return bool(np.all(np.diff(edges) <= self.max_gap + 1))

    def detected_in(self, start: int, stop: int) -> np.ndarray:
        """The detected boxes (k, 4) in frames [start, stop)."""
        frames = np.asarray(self.frames)
        return np.asarray(self.boxes, np.float64)[(frames >= start) & (frames < stop), :4]

    def boxes_in(self, start: int, stop: int) -> np.ndarray:
        """(stop - start, 4) boxes, interpolated between detections (edge boxes held)."""
        frames, boxes = np.asarray(self.frames, np.float64), np.asarray(self.boxes, np.float64)[:, :4]
        wanted = np.arange(start, stop, dtype=np.float64)
        return np.stack([np.interp(wanted, frames, boxes[:, c]) for c in range(4)], axis=1)


TrackFinder = Callable[[Sequence[np.ndarray]], list[FaceTrackSpan]]


# ---- single face / face size ----------------------------------------------------------------

@dataclasses.dataclass
class FaceVerdict:
    ok: bool
    reason: str = ""
    detail: str = ""
    face_size: float = math.nan  # median main-face box height, source pixels
    max_faces: int = 0


def box_heights(boxes: np.ndarray) -> np.ndarray:
    """Heights of (n, >=4) boxes x0, y0, x1, y1[, score]."""
    boxes = np.asarray(boxes, np.float64)
    return boxes[:, 3] - boxes[:, 1] if boxes.size else np.zeros(0)


def _competing(boxes: np.ndarray, ratio: float) -> int:
    """Faces in one frame that compete with its largest one (the largest itself excluded)."""
    if len(boxes) < 2:
        return 0
    heights = np.sort(box_heights(boxes))[::-1]
    return int((heights[1:] >= ratio * heights[0]).sum())


def single_face_verdict(boxes_per_frame: Sequence[np.ndarray], competing_face_ratio: float = 0.0,
                        tracks: list[FaceTrackSpan] | None = None,
                        min_competing_frames: int = MIN_COMPETING_FRAMES) -> FaceVerdict:
    """LatentSync's one-face check over one clip's source frames (boxes relative to the clip).

    Without ``tracks``: every frame must have a face and no second face may compete in
    ``min_competing_frames`` (3) or more frames (a lone false detection, e.g. a hand in one
    frame of the demo, does not drop a clip; ``lipsync_jax.face.tracks`` likewise drops tracks
    of fewer than 3 detections). With
    ``tracks`` (associated over the clip's frames): exactly one track covers all frames and no
    other track has a competing box in any frame."""
    n = len(boxes_per_frame)
    counts = [len(b) for b in boxes_per_frame]
    max_faces = max(counts, default=0)
    empty = sum(c == 0 for c in counts)
    if tracks is None:
        if empty:
            return FaceVerdict(False, "face_track", f"no face detected in {empty} of {n} frames", max_faces=max_faces)
        competing = sum(_competing(np.asarray(b), competing_face_ratio) > 0 for b in boxes_per_frame)
        main = [float(np.max(box_heights(np.asarray(b)))) for b in boxes_per_frame]
        size = float(np.median(main))
        if competing >= max(1, min_competing_frames):
            return FaceVerdict(False, "multi_face", f"another face in {competing} of {n} frames", size, max_faces)
        return FaceVerdict(True, face_size=size, max_faces=max_faces)
    full = [t for t in tracks if t.covers(0, n)]
    if not full:
        return FaceVerdict(False, "face_track", f"no face track covers all {n} frames ({len(tracks)} tracks)",
                           max_faces=max_faces)
    main = max(full, key=lambda t: float(np.median(box_heights(t.boxes_in(0, n)))))
    main_heights = box_heights(main.boxes_in(0, n))
    size = float(np.median(main_heights))
    for other in tracks:
        if other is main:
            continue
        heights = box_heights(other.detected_in(0, n))
        if len(heights) and np.max(heights) >= competing_face_ratio * size:
            return FaceVerdict(False, "multi_face", f"{len(tracks)} face tracks in the clip", size, max_faces)
    return FaceVerdict(True, face_size=size, max_faces=max_faces)


def stable_tracks(tracks: list[FaceTrackSpan], n: int) -> list[FaceTrackSpan]:
    """Tracks covering all ``n`` frames of a clip, left to right (by mean box centre)."""
    full = [t for t in tracks if t.covers(0, n)]
    return sorted(full, key=lambda t: float(np.mean(t.boxes_in(0, n)[:, [0, 2]])))


def face_size_verdict(face_size: float, min_face_size: float) -> FaceVerdict:
    if min_face_size > 0 and not face_size >= min_face_size:
        return FaceVerdict(False, "face_small", f"face {face_size:.0f} px < {min_face_size:.0f} px", face_size)
    return FaceVerdict(True, face_size=face_size)


# ---- sync / quality -------------------------------------------------------------------------

def sync_verdict(confidence: float, offset: int, conf_threshold: float, max_offset: int) -> tuple[str, str]:
    """("", "") when a clip passes LatentSync's sync_av rule, else (reason, detail)."""
    if abs(offset) > max_offset:
        return "sync_offset", f"offset {offset} frames (|offset| > {max_offset})"
    if not confidence >= conf_threshold:
        return "sync_confidence", f"confidence {confidence:.3f} < {conf_threshold:g}"
    return "", ""


def quality_frame_indices(num_frames: int) -> list[int]:
    """First, middle and last frame, as LatentSync's filter_visual_quality samples them."""
    return [0, num_frames // 2, num_frames - 1]


def quality_verdict(score: float, min_quality: float) -> tuple[str, str]:
    if not score >= min_quality:
        return "low_quality", f"quality {score:.2f} < {min_quality:g}"
    return "", ""


# ---- default face detector ------------------------------------------------------------------

class MediaPipeFaceDetector:
    """MediaPipe face detection (the detector of LatentSync's one-face check), both of its
    models: the short-range one (faces within ~2 m) finds both faces of the small two-person
    demo in every frame where the full-range one misses the smaller face in ~1 frame of 5, and
    the full-range one is surer of large single faces (demo1: >= 0.74 where short-range drops to
    0.55). Boxes of both are merged; a box mostly inside a higher-scoring one (the same face) is
    dropped. Minimum score 0.6: on the demos real faces score >= 0.61, the false positives (a
    torso) 0.50-0.55."""

    def __init__(self, min_confidence: float = 0.6, models: tuple[int, ...] = (0, 1), duplicate_overlap: float = 0.5):
        import mediapipe as mp

        self._detectors = [mp.solutions.face_detection.FaceDetection(model_selection=m,
                                                                     min_detection_confidence=min_confidence)
                           for m in models]
        self.duplicate_overlap, self.min_confidence = duplicate_overlap, min_confidence

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        frame = np.ascontiguousarray(frame)
        boxes = []
        for detector in self._detectors:
            for det in detector.process(frame).detections or ():
                b = det.location_data.relative_bounding_box
                boxes.append([b.xmin * width, b.ymin * height, (b.xmin + b.width) * width,
                              (b.ymin + b.height) * height, float(det.score[0])])
        boxes = np.asarray(boxes, np.float64).reshape(-1, 5)
        boxes = boxes[boxes[:, 4] >= self.min_confidence]  # MediaPipe's own threshold lets some lower ones pass
        return drop_duplicate_boxes(boxes, self.duplicate_overlap)

    def close(self) -> None:
        for detector in self._detectors:
            detector.close()


def drop_duplicate_boxes(boxes: np.ndarray, overlap: float = 0.5) -> np.ndarray:
    """Boxes (n, 5) by decreasing score, without those whose intersection with a kept box covers
    more than ``overlap`` of the smaller of the two."""
    kept: list[np.ndarray] = []
    for box in boxes[np.argsort(-boxes[:, 4], kind="stable")]:
        duplicate = False
        for other in kept:
            iw = min(box[2], other[2]) - max(box[0], other[0])
            ih = min(box[3], other[3]) - max(box[1], other[1])
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if iw > 0 and ih > 0 and iw * ih > overlap * smaller:
                duplicate = True
                break
        if not duplicate:
            kept.append(box)
    return np.asarray(kept, np.float64).reshape(-1, 5)


# ---- adapters to the evaluation modules (imported only when a filter asks for them: they load JAX models)

class FilterSetupError(ValueError):
    """A filter that cannot be built (a missing checkpoint): one line for the user."""


def load_track_finder(**association: Any) -> TrackFinder:
    """Association of per-frame boxes into tracks by ``lipsync_jax.face.tracks.build_tracks``
    (options: its ``TrackBuilder``'s). A track covers the frames from its first to its last
    detection (gaps of at most its ``max_gap`` frames get interpolated boxes)."""
    from lipsync_jax.face import tracks as tracks_module
    from lipsync_jax.face.landmarks import FaceDetection

    def find(boxes_per_frame: Sequence[np.ndarray]) -> list[FaceTrackSpan]:
        detections = [[FaceDetection(anchors=np.zeros((3, 2)), box=np.asarray(b[:4], np.float64), score=float(b[4]))
                       for b in np.asarray(boxes, np.float64).reshape(-1, 5)] for boxes in boxes_per_frame]
        max_gap = int(association.get("max_gap", tracks_module.DEFAULT_MAX_GAP))
        return [FaceTrackSpan(np.asarray(t.frames), np.asarray(t.boxes)[:, :4], max_gap)
                for t in tracks_module.build_tracks(detections, **association)]

    return find


class LseSyncScorer:
    """LatentSync's sync_av scorer: the classic SyncNet + S3FD LSE pipeline
    (``lipsync_jax.eval.lse.evaluate_lse``) on the aligned clip, written to a temporary video
    and wav (removed afterwards) as syncnet_python reads it. Confidence = LSE-C, score = -LSE-D,
    both the means over the clip's face tracks as LatentSync's syncnet_eval gives them.
    Offset: LSE's AV offset is the shift that best matches the lips when the AUDIO IS DELAYED
    by it (LatentSync's ``-itsoffset``); data_prep's offset is where the matching sound lies
    (after the picture: positive), so ``offset = -av_offset``. ``syncnet`` / ``detector``:
    already loaded nets (``load_lse_syncnet`` / ``load_s3fd``) instead of checkpoints."""

    def __init__(self, syncnet_ckpt: str | None = None, detector_ckpt: str | None = None, *, syncnet: Any = None,
                 detector: Any = None):
        from lipsync_jax.eval import lse

        self._lse = lse
        if detector is None and not detector_ckpt:
            raise FilterSetupError("--sync_scorer lse needs --detector_ckpt (S3FD: sfd_face.pth or a converted folder)")
        self.syncnet = syncnet if syncnet is not None else self._lse.load_lse_syncnet(syncnet_ckpt)
        self.detector = detector if detector is not None else self._lse.load_s3fd(detector_ckpt)

    def score(self, jpeg_frames: list[bytes], audio: np.ndarray, fps: float):
        from data_prep.sync_filter import SyncResult
        from lipsync_jax.data.records import decode_frames

        if abs(fps - self._lse.LSE_FPS) > 1e-6:
            raise ValueError(f"the LSE SyncNet needs {self._lse.LSE_FPS:g} fps clips, got {fps:g}")
        with tempfile.TemporaryDirectory(prefix="lse-clip-") as tmp:
            video, wav = os.path.join(tmp, "clip.mp4"), os.path.join(tmp, "clip.wav")
            _write_clip(video, wav, decode_frames(jpeg_frames, range(len(jpeg_frames))), audio, fps)
            result = self._lse.evaluate_lse(video, wav, syncnet=self.syncnet, detector=self.detector,
                                            progress=False)  # no face track / too short: ValueError subclasses
        return SyncResult(score=-float(result.lse_d), confidence=float(result.lse_c), offset=-int(result.av_offset))


def _write_clip(video: str, wav: str, frames: np.ndarray, audio: np.ndarray, fps: float) -> None:
    import subprocess

    import scipy.io.wavfile

    from lipsync_jax.data.records import audio_to_int16
    from lipsync_jax.media import ffmpeg_exe

    scipy.io.wavfile.write(wav, 16000, audio_to_int16(audio))
    h, w = frames.shape[1:3]
    cmd = [ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
           "-r", f"{fps:g}", "-i", "-", "-c:v", "libx264", "-preset", "veryfast", "-crf", "16",
           "-pix_fmt", "yuv420p", video]
    subprocess.run(cmd, input=np.ascontiguousarray(frames).tobytes(), check=True)


class HyperIqaQualityScorer:
    """LatentSync's filter_visual_quality score with HyperIQA (``lipsync_jax.eval.quality``):
    mean over the frames given (data_prep passes the first, middle and last; frames must be at
    least 224 px, HyperIQA's centre crop). ``scorer``: an already loaded ``load_hyperiqa``."""

    def __init__(self, checkpoint: str | None = None, *, scorer: Any = None):
        from lipsync_jax.eval import quality

        self._scorer = scorer if scorer is not None else quality.load_hyperiqa(checkpoint)

    def __call__(self, frames: np.ndarray) -> float:
        return float(np.mean(self._scorer.frame_scores(np.asarray(frames))))


def build_sync_scorer(kind: str, checkpoint: str | None, *, search_offset: int = 15,
                      detector_ckpt: str | None = None) -> Any:
    """The sync scorer a run asks for, or None without a checkpoint (no sync filter)."""
    if not checkpoint:
        return None
    if kind == "stable":
        from data_prep.sync_filter import SyncScorer

        return SyncScorer(checkpoint, search_offset=search_offset)
    if kind == "lse":
        return LseSyncScorer(checkpoint, detector_ckpt)
    raise FilterSetupError(f"--sync_scorer {kind}: choose one of {', '.join(SYNC_SCORERS)}")


def build_quality_scorer(checkpoint: str | None) -> QualityScorer | None:
    return HyperIqaQualityScorer(checkpoint) if checkpoint else None
