"""Face tracks for multi-person videos: who is where, in which frames, with a stable identity.

Per-frame detections (``FaceDetection``: three anchors + box, from ``detect_faces``) are joined
over time into tracks, online, frame by frame:

* every open track predicts its box at the new frame: its last box moved by its recent centre
  velocity (from its last few detections), same size;
* a detection may join a track when the size ratio is within [1/2, 2] and either IoU(predicted
  box, detection) >= ``min_iou`` or the centre distance is at most ``max_centre_distance`` face
  sizes (size = sqrt(width x height) of the track's last box); among allowed pairs the
  assignment of least total cost (centre distance in face sizes + 1 - IoU) is taken, one
  detection per track at most;
* a detection joining no track starts a new one;
* optionally (the pre-pass does, with MediaPipe) a track no detection joined is looked for once
  more with FaceMesh on a crop around its predicted box; a face found there that passes the
  same gates and overlaps none of the frame's detections joins it (small faces in wide frames
  are often missed by the whole-frame detectors); likewise a new track is extended back over
  up to ``max_gap`` earlier frames while the face is found there (a face first seen late);
* **the gap rule**: a track that has missed more than ``max_gap`` consecutive frames is closed
  and never continues; a face that comes back later (same person or not) starts a new track.
  A face missing for at most ``max_gap`` frames keeps its track (the missing frames are gaps in
  the track; ``box_at`` interpolates its box there).

At the end tracks with fewer than ``min_frames`` detections are dropped (spurious detections;
unless that would drop every track, then the longest is kept) and the rest get ids 0, 1, ...
in order of their first frame, then of their box's left edge. The ids are deterministic for a
given video and settings, so ids printed by ``list_faces`` name the same faces in a later run.

Selection (``choose_track``): ``"largest"`` (default: the largest mean box area over the clip),
``"left"`` / ``"right"`` (smallest / largest mean box centre x) or a track id.

Engine glue (the face pass of the inference engine). Before it, the pre-pass
``find_face_tracks(video_path, fps=...) -> VideoFaceTracks`` reads the video at the engine's
fps (so frame i is the engine's frame i), downscaled to ``max_side``; boxes and anchors come
back in source pixels. Then, in the full-resolution face pass, for frames i = 0, 1, 2, ... in
order, with a landmarker built with ``max_num_faces`` (``make_landmarker(backend,
max_num_faces=4)``) and ``detections = detect_faces(landmarker, frame)``:

* ``TrackAnchorSelector(tracks).anchors(i, detections, frame, landmarker)
  -> {track_id: (3, 2) float64 anchors | None}`` matches the frame's detections to every track
  present at i (one detection per track, least cost, same gates; a track's box at i is its
  pre-pass box or, in a gap, the interpolated one). A present track that nothing matched is
  retried on a crop around that box (MediaPipe). A track absent at i, or not found, gets None:
  the frame is kept unchanged for that person, as a frame without a face is today;
* ``select_track_anchors(tracks, choice, per_frame_detections, frames=None, landmarker=None)
  -> list[anchors | None]`` is the same for one chosen track over a whole clip;
* ``TrackLandmarker(landmarker, tracks, choice)`` is a drop-in ``FaceLandmarker`` following one
  track, so ``FaceTracker(resolution, landmarker=TrackLandmarker(...))`` aligns that person with
  the single-face tracker's smoothing, gap and no-face handling (``--face``);
* ``track_align.MultiTrackAligner(resolution, tracks, landmarker, track_ids)`` aligns several
  tracks per frame, each with its own ``FaceTracker`` (``--faces all``, ``--face_audio``).

With a single track (the usual one-person video) the selector takes every frame's largest
detection, which is what the single-face landmarker gives (``MediaPipeLandmarker`` with
``max_num_faces`` > 1 finds the same points for a lone face), so the result does not depend on
the downscaled pre-pass. Simplest for the engine: with at most one track it keeps the single-face path.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from lipsync_jax.face.errors import FaceError
from lipsync_jax.face.landmarks import FaceDetection, FaceLandmarker, box_area, detect_faces

DEFAULT_MAX_GAP = 12  # frames (about half a second at 25 fps)
DEFAULT_MIN_IOU = 0.3
DEFAULT_MAX_CENTRE_DISTANCE = 0.6  # in face sizes
DEFAULT_MIN_FRAMES = 3
_VELOCITY_SPAN = 5  # detections used for a track's velocity
_MAX_SIZE_RATIO = 2.0
_INFEASIBLE = 1e9
CHOICES = ("largest", "left", "right")


class FaceSelectionError(FaceError, ValueError):
    """A face choice names no track (unknown word or id)."""


@dataclasses.dataclass
class PersonTrack:
    """One face over time: the frames it was detected in and its box and anchors there.

    Coordinates are source-video pixels. ``frames`` is increasing; gaps between consecutive
    entries are at most the association's ``max_gap`` + 1. ``thumbnail`` (RGB uint8) is a crop
    around the track's largest detection when the frames were available.
    """

    track_id: int
    frames: np.ndarray  # (k,) int64 frame indices
    boxes: np.ndarray  # (k, 4) float64 (x1, y1, x2, y2)
    anchors: np.ndarray  # (k, 3, 2) float64
    scores: np.ndarray  # (k,) float64
    thumbnail: np.ndarray | None = None
    thumbnail_frame: int | None = None

    @property
    def num_frames(self) -> int:
        return int(self.frames.size)

    @property
    def first_frame(self) -> int:
        return int(self.frames[0])

    @property
    def last_frame(self) -> int:
        return int(self.frames[-1])

    @property
    def mean_box(self) -> np.ndarray:
        """(4,) mean (x1, y1, x2, y2) over the detected frames."""
        return self.boxes.mean(axis=0)

    @property
    def mean_area(self) -> float:
        return float(np.mean([box_area(b) for b in self.boxes]))

    @property
    def mean_centre_x(self) -> float:
        return float(((self.boxes[:, 0] + self.boxes[:, 2]) / 2).mean())

    def covers(self, frame_index: int) -> bool:
        """True inside [first_frame, last_frame] (detected or in a short gap)."""
        return self.first_frame <= frame_index <= self.last_frame

    def box_at(self, frame_index: int) -> np.ndarray | None:
        """The box at a frame: detected, linearly interpolated in a gap, None outside the track."""
        if not self.covers(frame_index):
            return None
        pos = int(np.searchsorted(self.frames, frame_index))
        if self.frames[pos] == frame_index:
            return self.boxes[pos]
        f0, f1 = self.frames[pos - 1], self.frames[pos]
        t = (frame_index - f0) / (f1 - f0)
        return (1 - t) * self.boxes[pos - 1] + t * self.boxes[pos]

    def anchors_at(self, frame_index: int) -> np.ndarray | None:
        """The detected anchors at a frame, or None (gap or outside the track)."""
        pos = int(np.searchsorted(self.frames, frame_index))
        if pos < self.frames.size and self.frames[pos] == frame_index:
            return self.anchors[pos]
        return None

    def summary(self) -> str:
        x1, y1, x2, y2 = (int(round(v)) for v in self.mean_box)
        return (f"face {self.track_id}: frames {self.first_frame}-{self.last_frame} ({self.num_frames} detected), "
                f"mean box ({x1}, {y1}, {x2}, {y2}), mean area {self.mean_area:.0f} px^2")


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = box_area(a) + box_area(b) - inter
    return float(inter / union) if union > 0 else 0.0


def _centre(box: np.ndarray) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])


def _size(box: np.ndarray) -> float:
    return max(np.sqrt(box_area(box)), 1e-6)


def match_cost(expected: np.ndarray, box: np.ndarray, *, min_iou: float = DEFAULT_MIN_IOU,
               max_centre_distance: float = DEFAULT_MAX_CENTRE_DISTANCE) -> float | None:
    """Cost of taking ``box`` as the face expected at ``expected``, or None when not allowed
    (see the module docstring)."""
    ratio = _size(box) / _size(expected)
    if not 1 / _MAX_SIZE_RATIO <= ratio <= _MAX_SIZE_RATIO:
        return None
    overlap = iou(expected, box)
    distance = float(np.linalg.norm(_centre(box) - _centre(expected))) / _size(expected)
    if overlap < min_iou and distance > max_centre_distance:
        return None
    return distance + 1.0 - overlap


def assign(expected: Sequence[np.ndarray], boxes: Sequence[np.ndarray], **gates) -> dict[int, int]:
    """Least-cost one-to-one matching ``{expected index: box index}`` among allowed pairs."""
    if not expected or not boxes:
        return {}
    cost = np.full((len(expected), len(boxes)), _INFEASIBLE)
    for i, e in enumerate(expected):
        for j, b in enumerate(boxes):
            c = match_cost(e, b, **gates)
            if c is not None:
                cost[i, j] = c
    from scipy.optimize import linear_sum_assignment  # lazy: importing scipy.optimize takes ~1 s

    rows, cols = linear_sum_assignment(cost)
    return {int(i): int(j) for i, j in zip(rows, cols) if cost[i, j] < _INFEASIBLE}


@dataclasses.dataclass
class _OpenTrack:
    frames: list[int]
    detections: list[FaceDetection]
    thumbnail: np.ndarray | None = None
    thumbnail_frame: int | None = None
    thumbnail_area: float = -1.0

    def predicted_box(self, frame_index: int) -> np.ndarray:
        last = self.detections[-1].box
        k = min(len(self.frames), _VELOCITY_SPAN)
        if k < 2:
            return last
        first = self.detections[-k].box
        velocity = (_centre(last) - _centre(first)) / (self.frames[-1] - self.frames[-k])
        shift = velocity * (frame_index - self.frames[-1])
        return last + np.concatenate([shift, shift])


class TrackBuilder:
    """Online association: ``update(frame_index, detections[, frame])`` for frames in increasing
    order, then ``finish() -> list[PersonTrack]``. With ``frame`` (the image the detections were
    made on) each track keeps a thumbnail crop of its largest detection; ``scale`` (one factor or
    (x, y) factors) maps the detections' coordinates to source pixels (thumbnails are cut
    before scaling)."""

    def __init__(self, *, max_gap: int = DEFAULT_MAX_GAP, min_iou: float = DEFAULT_MIN_IOU,
                 max_centre_distance: float = DEFAULT_MAX_CENTRE_DISTANCE, min_frames: int = DEFAULT_MIN_FRAMES,
                 scale: float | tuple[float, float] = 1.0):
        if max_gap < 0 or min_frames < 1:
            raise ValueError(f"need max_gap >= 0 and min_frames >= 1, got {max_gap}, {min_frames}")
        self.max_gap, self.min_frames = int(max_gap), int(min_frames)
        self.scale = np.broadcast_to(np.asarray(scale, np.float64), (2,))  # (x, y)
        self.gates = dict(min_iou=min_iou, max_centre_distance=max_centre_distance)
        self._open: list[_OpenTrack] = []
        self._closed: list[_OpenTrack] = []
        self._last_frame = -1

    def update(self, frame_index: int, detections: Sequence[FaceDetection], frame: np.ndarray | None = None,
               retry: Callable[[np.ndarray], FaceDetection | None] | None = None,
               retry_before: Callable[[int, np.ndarray], FaceDetection | None] | None = None) -> None:
        """Add one frame's detections. ``retry(box)``, when given, looks for a face around an open
        track's predicted box when no detection matched it (e.g. ``landmarker.detect_in_box``
        bound to the frame); a face found there joins the track if it passes the same gates and
        overlaps none of the frame's detections. ``retry_before(earlier_index, box)`` does the
        same on an earlier frame (None when that frame is gone): a new track is extended back,
        frame by frame, up to ``max_gap`` frames, until the face is not found there or would
        overlap another track's face."""
        if frame_index <= self._last_frame:
            raise ValueError(f"frames must come in increasing order ({frame_index} after {self._last_frame})")
        self._last_frame = frame_index
        still_open = []
        for track in self._open:  # the gap rule: missed > max_gap frames closes a track for good
            missed = frame_index - track.frames[-1] - 1
            (still_open if missed <= self.max_gap else self._closed).append(track)
        self._open = still_open
        matches = assign([t.predicted_box(frame_index) for t in self._open], [d.box for d in detections],
                         **self.gates)
        taken = set(matches.values())
        for t_index, d_index in matches.items():
            self._extend(self._open[t_index], frame_index, detections[d_index], frame)
        if retry is not None:
            claimed = [d.box for d in detections]
            for t_index, track in enumerate(self._open):
                if t_index in matches:
                    continue
                expected = track.predicted_box(frame_index)
                found = retry(expected)
                if (found is not None and match_cost(expected, found.box, **self.gates) is not None
                        and all(iou(found.box, box) < DEFAULT_MIN_IOU for box in claimed)):
                    self._extend(track, frame_index, found, frame)
                    claimed.append(found.box)
        new = [d for j, d in enumerate(detections) if j not in taken]
        for detection in sorted(new, key=lambda d: d.box[0]):  # new tracks left to right
            track = _OpenTrack([], [])
            self._extend(track, frame_index, detection, frame)
            if retry_before is not None:
                self._extend_back(track, retry_before)
            self._open.append(track)

    def _extend_back(self, track: _OpenTrack, retry_before) -> None:
        expected = track.detections[0].box
        others = self._closed + self._open
        for earlier in range(track.frames[0] - 1, max(track.frames[0] - 1 - self.max_gap, -1), -1):
            found = retry_before(earlier, expected)
            if found is None or match_cost(expected, found.box, **self.gates) is None:
                return
            if any(iou(found.box, box) >= DEFAULT_MIN_IOU for box in _boxes_at(others, earlier)):
                return
            track.frames.insert(0, earlier)
            track.detections.insert(0, found)
            expected = found.box

    def _extend(self, track: _OpenTrack, frame_index: int, detection: FaceDetection, frame: np.ndarray | None):
        track.frames.append(frame_index)
        track.detections.append(detection)
        if frame is not None and detection.area > track.thumbnail_area:
            track.thumbnail = crop_around(frame, detection.box)
            track.thumbnail_frame, track.thumbnail_area = frame_index, detection.area

    def finish(self) -> list[PersonTrack]:
        everything = self._closed + self._open
        kept = [t for t in everything if len(t.frames) >= self.min_frames]
        if not kept and everything:
            kept = [max(everything, key=lambda t: len(t.frames))]
        kept.sort(key=lambda t: (t.frames[0], t.detections[0].box[0]))
        return [PersonTrack(track_id=i, frames=np.asarray(t.frames, np.int64),
                            boxes=np.stack([d.box for d in t.detections]) * np.tile(self.scale, 2),
                            anchors=np.stack([d.anchors for d in t.detections]) * self.scale,
                            scores=np.array([d.score for d in t.detections], np.float64),
                            thumbnail=t.thumbnail, thumbnail_frame=t.thumbnail_frame)
                for i, t in enumerate(kept)]


def _boxes_at(tracks: Sequence[_OpenTrack], frame_index: int) -> list[np.ndarray]:
    boxes = []
    for track in tracks:
        if track.frames[0] <= frame_index <= track.frames[-1]:
            pos = int(np.searchsorted(track.frames, frame_index))
            if track.frames[pos] == frame_index:
                boxes.append(track.detections[pos].box)
    return boxes


def build_tracks(per_frame_detections: Iterable[Sequence[FaceDetection]], **options) -> list[PersonTrack]:
    """Tracks from every frame's detections (frame i = the i-th item); options as ``TrackBuilder``."""
    builder = TrackBuilder(**options)
    for index, detections in enumerate(per_frame_detections):
        builder.update(index, detections)
    return builder.finish()


def crop_around(frame: np.ndarray, box: np.ndarray, margin: float = 0.3) -> np.ndarray:
    """A copy of the frame around a box widened by ``margin`` of its size on every side."""
    height, width = frame.shape[:2]
    w, h = box[2] - box[0], box[3] - box[1]
    x0, y0 = max(int(box[0] - margin * w), 0), max(int(box[1] - margin * h), 0)
    x1, y1 = min(int(np.ceil(box[2] + margin * w)), width), min(int(np.ceil(box[3] + margin * h)), height)
    return np.array(frame[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)])


def choose_track(tracks: Sequence[PersonTrack], choice: str | int = "largest") -> PersonTrack:
    """The track named by ``choice``: "largest" (largest mean box area), "left" / "right" (by mean
    box centre), or a track id (int or digits). ``FaceSelectionError`` names the valid ids."""
    if not tracks:
        raise FaceSelectionError("no face tracks to choose from")
    ids = ", ".join(str(t.track_id) for t in tracks)
    key = str(choice).strip().lower()
    if key == "largest":
        return max(tracks, key=lambda t: (t.mean_area, -t.track_id))
    if key == "left":
        return min(tracks, key=lambda t: (t.mean_centre_x, t.track_id))
    if key == "right":
        return max(tracks, key=lambda t: (t.mean_centre_x, -t.track_id))
    if key.isdigit():
        for track in tracks:
            if track.track_id == int(key):
                return track
        raise FaceSelectionError(f"no face track with id {key}; the video has ids {ids}")
    raise FaceSelectionError(f"unknown face choice {choice!r}; use largest, left, right or a track id ({ids})")


def match_face_track(tracks: Sequence[PersonTrack], frames: np.ndarray, boxes: np.ndarray, *,
                     min_iou: float = 0.2, min_shared: float = 0.5) -> int | None:
    """The id of the face track that a track from another detector (frame indices ``frames`` (k,),
    boxes (k, 4) x1 y1 x2 y2, same frame numbering and pixels) follows, or None: the track with
    the highest mean IoU over the shared frames (its boxes interpolated in its gaps), when that
    mean is at least ``min_iou`` and the frames shared are at least ``min_shared`` of ``frames``.
    (E.g. the LSE evaluation's S3FD tracks: S3FD boxes are larger than the landmark boxes, so
    the IoU threshold is low; two people side by side never overlap.)"""
    frames = np.asarray(frames, np.int64)
    best, best_iou = None, min_iou
    for track in tracks:
        overlaps = [iou(track.box_at(int(f)), b) for f, b in zip(frames, boxes) if track.covers(int(f))]
        if len(overlaps) < max(1, min_shared * len(frames)):
            continue
        mean = float(np.mean(overlaps))
        if mean >= best_iou:
            best, best_iou = track.track_id, mean
    return best


class TrackAnchorSelector:
    """Per frame: full-resolution detections -> each track's anchors (or None); see the module
    docstring. ``tracks`` are the pre-pass tracks in source pixels; matching uses the same gates
    as the association, with ``min_iou`` lowered to 0.2 by default (pre-pass boxes are coarser)."""

    def __init__(self, tracks: Sequence[PersonTrack], *, min_iou: float = 0.2,
                 max_centre_distance: float = DEFAULT_MAX_CENTRE_DISTANCE, single_track_passthrough: bool = True):
        self.tracks = list(tracks)
        self.gates = dict(min_iou=min_iou, max_centre_distance=max_centre_distance)
        self.passthrough = single_track_passthrough and len(self.tracks) == 1

    def anchors(self, frame_index: int, detections: Sequence[FaceDetection], frame: np.ndarray | None = None,
                landmarker: FaceLandmarker | None = None) -> dict[int, np.ndarray | None]:
        """{track id: anchors or None} at one frame. With ``frame`` and a ``landmarker`` that has
        ``detect_in_box`` (MediaPipe), a track present at the frame that no detection matched is
        looked for once more on a crop around its expected box (small faces in wide frames)."""
        result: dict[int, np.ndarray | None] = {t.track_id: None for t in self.tracks}
        if self.passthrough:  # one person in the video: the single-face behaviour
            if detections:
                result[self.tracks[0].track_id] = max(detections, key=lambda d: d.area).anchors
            return result
        present = [(t, t.box_at(frame_index)) for t in self.tracks]
        present = [(t, box) for t, box in present if box is not None]
        matches = assign([box for _, box in present], [d.box for d in detections], **self.gates)
        taken = [detections[j].box for j in matches.values()]
        for t_index, d_index in matches.items():
            result[present[t_index][0].track_id] = detections[d_index].anchors
        retry = getattr(landmarker, "detect_in_box", None)
        if frame is None or retry is None:
            return result
        for t_index, (track, expected) in enumerate(present):
            if t_index in matches:
                continue
            found = retry(frame, expected)
            if (found is not None and match_cost(expected, found.box, **self.gates) is not None
                    and all(iou(found.box, box) < DEFAULT_MIN_IOU for box in taken)):
                result[track.track_id] = found.anchors
                taken.append(found.box)
        return result


def select_track_anchors(tracks: Sequence[PersonTrack], choice: str | int,
                         per_frame_detections: Iterable[Sequence[FaceDetection]],
                         frames: Iterable[np.ndarray] | None = None,
                         landmarker: FaceLandmarker | None = None) -> list[np.ndarray | None]:
    """For each frame (i-th item of ``per_frame_detections``), the chosen track's (3, 2) anchors
    among that frame's detections, or None where the track is absent. With the ``frames`` and
    their ``landmarker``, a track no detection matched is retried on a crop (``detect_in_box``)."""
    chosen = choose_track(tracks, choice).track_id
    selector = TrackAnchorSelector(tracks)
    frames = iter(frames) if frames is not None else None
    result = []
    for i, detections in enumerate(per_frame_detections):
        frame = next(frames) if frames is not None else None
        result.append(selector.anchors(i, detections, frame, landmarker)[chosen])
    return result


class TrackLandmarker:
    """A ``FaceLandmarker`` following one track: call it on frames 0, 1, 2, ... in order; it
    detects every face (``detect_faces(landmarker, frame)``) and returns the track's anchors or
    None. ``last_detections`` holds the frame's detections for reuse by other tracks."""

    def __init__(self, landmarker: FaceLandmarker, tracks: Sequence[PersonTrack], choice: str | int = "largest"):
        self.landmarker = landmarker
        self.track = choose_track(tracks, choice)
        self.selector = TrackAnchorSelector(tracks)
        self.frame_index = 0
        self.last_detections: list[FaceDetection] = []

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        self.last_detections = detect_faces(self.landmarker, frame)
        anchors = self.selector.anchors(self.frame_index, self.last_detections, frame,
                                        self.landmarker)[self.track.track_id]
        self.frame_index += 1
        return anchors

    def close(self) -> None:
        if hasattr(self.landmarker, "close"):
            self.landmarker.close()


@dataclasses.dataclass
class VideoFaceTracks:
    """The pre-pass result: tracks in source pixels over ``num_frames`` frames read at ``fps``."""

    video_path: str
    tracks: list[PersonTrack]
    num_frames: int
    width: int  # source frame size
    height: int
    fps: float
    detection_scale: float  # source pixels per pre-pass pixel along x (>= 1; y differs by rounding only)

    def choose(self, choice: str | int = "largest") -> PersonTrack:
        return choose_track(self.tracks, choice)

    def boxes_at(self, frame_index: int) -> dict[int, np.ndarray]:
        """{track id: box} of the tracks present at a frame (detected or interpolated)."""
        boxes = {t.track_id: t.box_at(frame_index) for t in self.tracks}
        return {k: v for k, v in boxes.items() if v is not None}


def find_face_tracks(video_path: str, *, fps: float | None = 25.0, max_frames: int | None = None,
                     max_side: int | None = 640, backend: str = "mediapipe", max_num_faces: int = 4,
                     landmarker: FaceLandmarker | None = None, thumbnails: bool = False, recover_missed: bool = True,
                     progress: bool = True, on_frame: Callable[[int, int], None] | None = None,
                     **association) -> VideoFaceTracks:
    """The detection pre-pass over a whole video: frames decoded at ``fps`` (frame indices match
    a ``read_frames(video_path, fps)`` pass), downscaled to ``max_side``, every face detected with
    ``landmarker`` (default: ``backend`` with ``max_num_faces``), joined into tracks (options of
    ``TrackBuilder``: max_gap, min_iou, max_centre_distance, min_frames). Boxes and anchors are
    scaled back to source pixels. ``recover_missed``: a track no detection matched is looked for
    on a crop around its predicted box, and a new track is extended back over the last
    ``max_gap`` frames (``detect_in_box``, MediaPipe only; keeps small faces' tracks whole).
    ``thumbnails`` keeps one crop per track (pre-pass resolution). ``progress``: a bar with the
    frame total and an ETA; ``on_frame(done, total)`` after each frame (the web app's progress).
    Memory: one frame at a time plus the detections. ``NoFaceError`` is not raised: a video
    without faces gives no tracks."""
    from tqdm import tqdm

    from lipsync_jax.face.landmarks import make_landmarker
    from lipsync_jax.media import probe_video, read_frames
    from lipsync_jax.media.video import scaled_size

    info = probe_video(video_path, count=False)
    total = info.frame_count_at(fps if fps is not None else info.fps)  # an estimate from the duration
    total = total if max_frames is None else min(total, int(max_frames))
    width, height = scaled_size(info.width, info.height, max_side)
    scale = (info.width / width, info.height / height)
    builder = TrackBuilder(scale=scale, **association)
    owns = landmarker is None
    if owns:
        landmarker = make_landmarker(backend, max_num_faces=max_num_faces)
    if hasattr(landmarker, "size_scale"):  # insightface: its size filter stays in source pixels
        restore_size_scale, landmarker.size_scale = landmarker.size_scale, scale[0]
    else:
        restore_size_scale = None
    count = 0
    recent: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()  # for extending new tracks back

    def retry_before(index: int, box: np.ndarray) -> FaceDetection | None:
        return landmarker.detect_in_box(recent[index], box) if index in recent else None

    try:
        frames = read_frames(video_path, fps, max_frames=max_frames, info=info, max_side=max_side)
        for index, small in enumerate(tqdm(frames, desc="Finding faces", unit="frame", total=total,
                                           disable=not progress)):
            retry = back = None
            if recover_missed and hasattr(landmarker, "detect_in_box"):
                retry, back = functools.partial(landmarker.detect_in_box, small), retry_before
            builder.update(index, detect_faces(landmarker, small), small if thumbnails else None, retry=retry,
                           retry_before=back)
            if back is not None and builder.max_gap > 0:
                recent[index] = small
                while len(recent) > builder.max_gap:
                    recent.popitem(last=False)
            count += 1
            if on_frame is not None:
                on_frame(count, total)
        tracks = builder.finish()
    finally:
        if restore_size_scale is not None:
            landmarker.size_scale = restore_size_scale
        if owns and hasattr(landmarker, "close"):
            landmarker.close()
    return VideoFaceTracks(video_path=video_path, tracks=tracks, num_frames=count, width=info.width,
                           height=info.height, fps=float(fps if fps is not None else info.fps),
                           detection_scale=scale[0])
