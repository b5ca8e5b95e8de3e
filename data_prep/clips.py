"""Turn one source video into aligned training clips (runs inside a data_prep worker).

Steps, streaming one frame at a time (memory: the JPEG-encoded faces of the current shot and
the face boxes of every frame):
1. probe the video, load its audio as 16 kHz mono (the whole track),
2. read frames resampled to 25 fps (ffmpeg's fps filter),
3. shot cuts (``shots.ShotDetector``) on downscaled frames; at a cut the face tracker's
   translation smoothing is reset, so no clip mixes the smoothing of two shots,
4. every frame goes through the inference face pipeline (``lipsync_jax.face.FaceTracker``:
   MediaPipe anchors, LatentSync's template alignment, smoothing); aligned faces are
   JPEG-encoded; unless ``--multi_face keep``, all faces of the frame are also detected
   (boxes, ``filters.FaceDetector``) for the one-person check and the face size,
5. shots are cut into 5-10 s clips (``shots.segment_shot``), and each candidate clip goes
   through the filters of ``data_prep.filters`` (one person, face size, face lost, sync,
   quality); with ``--multi_face split`` a segment with several faces is aligned again, once
   per face track that covers all its frames (a second decode of that segment only),
6. each kept clip's audio (640 samples per frame at 25 fps) is cut from the source track,
   shifted by the sync offset.

Every candidate clip gives one statistics row (``ClipStat``: kept, or the stage and reason that
dropped it, with its scores); a file that cannot be used at all raises ``SourceError``.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import os
import time
from typing import Any

import numpy as np

from data_prep import filters
from data_prep.shots import ShotDetector, segment_shot
from data_prep.sync_filter import corrected_span
from lipsync_jax.audio.load import AudioLoadError, load_audio
from lipsync_jax.data.records import AUDIO_SAMPLE_RATE, ClipRecord, audio_to_int16, decode_frames, encode_jpeg
from lipsync_jax.face import FaceAligner, FaceError, FaceTracker, NoFaceError
from lipsync_jax.media import MediaError, probe_video, read_frames


class SourceError(Exception):
    """A source video that yields nothing: ``reason`` is a short category for the summary."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PrepOptions:
    resolution: int = 256
    fps: float = 25.0
    min_seconds: float = 5.0
    max_seconds: float = 10.0  # clip length limit
    max_source_seconds: float | None = None  # only the first N seconds of each source
    shot_threshold: float = 0.3
    jpeg_quality: int = 95
    face_backend: str = "mediapipe"
    # one person per clip / face size
    multi_face: str = "drop"  # drop | split | keep (see data_prep.filters)
    competing_face_ratio: float = 0.0
    min_face_size: float = 0.0
    # sync (LatentSync's sync_av)
    sync_scorer: str = "lse"  # lse | stable
    syncnet_ckpt: str | None = None
    detector_ckpt: str | None = None  # S3FD, for the LSE scorer
    sync_search_offset: int = 15
    sync_max_offset: int = 6
    sync_conf_threshold: float | None = None  # None: 3 for lse, 0 for stable
    # visual quality (LatentSync's filter_visual_quality)
    quality_ckpt: str | None = None
    min_quality: float = 40.0

    @property
    def min_frames(self) -> int:
        return int(round(self.min_seconds * self.fps))

    @property
    def max_frames(self) -> int:
        return int(round(self.max_seconds * self.fps))

    @property
    def samples_per_frame(self) -> int:
        return int(round(AUDIO_SAMPLE_RATE / self.fps))

    @property
    def conf_threshold(self) -> float:
        if self.sync_conf_threshold is not None:
            return float(self.sync_conf_threshold)
        return filters.default_sync_threshold(self.sync_scorer)

    @property
    def detects_faces(self) -> bool:
        return self.multi_face != "keep" or self.min_face_size > 0


@dataclasses.dataclass
class Tools:
    """What a worker builds once and reuses for every source (see ``prepare._worker_tools``)."""

    landmarker: Any = None
    face_detector: Any = None  # filters.FaceDetector, needed unless multi_face == "keep"
    sync_scorer: Any = None  # None: not scored (NaN, offset 0)
    quality_scorer: Any = None  # None: not scored (NaN)
    track_finder: Any = None  # filters.TrackFinder; required by multi_face == "split"


@dataclasses.dataclass
class ClipStat:
    """One row of the per-clip statistics table."""

    source: str
    clip_id: str
    start_frame: int
    num_frames: int
    status: str = "kept"  # kept | dropped
    stage: str = "kept"  # the filters.STAGES entry that dropped it, or "kept"
    reason: str = ""
    detail: str = ""
    track: int = -1  # face track index with --multi_face split, else -1
    face_size: float = math.nan
    max_faces: int = -1
    sync_score: float = math.nan
    sync_confidence: float = math.nan
    sync_offset: int = 0
    quality: float = math.nan

    def drop(self, stage: str, reason: str, detail: str = "") -> ClipStat:
        self.status, self.stage, self.reason, self.detail = "dropped", stage, reason, detail
        return self


@dataclasses.dataclass
class SourceResult:
    clips: list[ClipRecord]
    stats: list[ClipStat]
    num_frames: int
    num_shots: int
    seconds_by_step: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)  # step: wall, cpu

    @property
    def drops(self) -> list[ClipStat]:
        return [s for s in self.stats if s.status != "kept"]


def source_key(path: str) -> str:
    """Stable id of a source: its base name plus a hash of its absolute path."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return f"{stem}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]}"


class _Timer:
    """Wall and CPU seconds per step (CPU: this process's threads; ``decode`` adds ffmpeg's)."""

    def __init__(self):
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.cpu_seconds: dict[str, float] = collections.defaultdict(float)

    @staticmethod
    def now() -> tuple[float, float]:
        return time.perf_counter(), time.process_time()

    def add(self, step: str, since: tuple[float, float]) -> tuple[float, float]:
        now = self.now()
        self.seconds[step] += now[0] - since[0]
        self.cpu_seconds[step] += now[1] - since[1]
        return now

    def summary(self) -> dict[str, dict[str, float]]:
        return {step: {"wall": round(self.seconds[step], 3), "cpu": round(self.cpu_seconds[step], 3)}
                for step in self.seconds}


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class _Shot:
    def __init__(self, start: int):
        self.start = start
        self.faces: list[bytes | None] = []
        self.boxes: list[np.ndarray] = []


def process_source(path: str, options: PrepOptions, landmarker: Any = None, scorer: Any = None, *,
                   tools: Tools | None = None) -> SourceResult:
    """All clips of one video, plus a statistics row for every candidate clip."""
    tools = tools or Tools(landmarker=landmarker, sync_scorer=scorer)
    if options.multi_face == "split" and tools.track_finder is None:
        tools = dataclasses.replace(tools, track_finder=filters.load_track_finder())
    if options.detects_faces and tools.face_detector is None:
        detector = filters.MediaPipeFaceDetector()
        try:
            return process_source(path, options, tools=dataclasses.replace(tools, face_detector=detector))
        finally:
            detector.close()
    timer = _Timer()
    tick, children_before = timer.now(), _children_cpu()
    try:
        info = probe_video(path, count=False)
    except MediaError as e:
        raise SourceError("unreadable_video", str(e)) from None
    try:
        audio = load_audio(path)
    except AudioLoadError as e:
        raise SourceError("no_audio", str(e)) from None
    max_frames = None if options.max_source_seconds is None else int(options.max_source_seconds * options.fps)
    if options.max_source_seconds is not None:
        audio = audio[:int(options.max_source_seconds * AUDIO_SAMPLE_RATE)]
    tracker = FaceTracker(options.resolution, landmarker=tools.landmarker, backend=options.face_backend, source=path)
    detector = ShotDetector(options.shot_threshold)
    shots: list[_Shot] = []
    count = 0
    tick = timer.add("probe_audio", tick)
    timer.cpu_seconds["probe_audio"] += _children_cpu() - children_before  # ffprobe / ffmpeg audio decode
    children_before = _children_cpu()
    try:
        for index, frame in enumerate(read_frames(path, fps=options.fps, max_frames=max_frames, info=info)):
            tick = timer.add("decode", tick)
            count += 1
            if detector.update(frame) or not shots:
                shots.append(_Shot(index))
                tracker.aligner.reset()
            tick = timer.add("shots", tick)
            aligned = tracker(frame)
            tick = timer.add("align", tick)
            shots[-1].faces.append(None if aligned is None else encode_jpeg(aligned.face, options.jpeg_quality))
            tick = timer.add("jpeg", tick)
            if tools.face_detector is not None:
                shots[-1].boxes.append(np.asarray(tools.face_detector(frame), np.float64).reshape(-1, 5))
                tick = timer.add("detect_faces", tick)
        timer.cpu_seconds["decode"] += _children_cpu() - children_before  # ffmpeg (exited by now)
        tracker.check_found()
    except MediaError as e:
        raise SourceError("unreadable_video", str(e)) from None
    except NoFaceError as e:
        raise SourceError("no_face", str(e)) from None
    except FaceError as e:
        raise SourceError("face_pipeline", str(e)) from None
    finally:
        tracker.close()
    context = _Context(path, info, audio, options, tools, timer)
    for shot in shots:
        segments = segment_shot(shot.start, len(shot.faces), options.min_frames, options.max_frames)
        if not segments:
            context.stats.append(ClipStat(os.path.abspath(path), context.clip_id(shot.start), shot.start,
                                          len(shot.faces)).drop("segment", "shot_too_short",
                                          f"{len(shot.faces) / options.fps:.2f} s < {options.min_seconds} s"))
        for start, length in segments:
            offset = start - shot.start
            context.segment(start, shot.faces[offset:offset + length],
                            shot.boxes[offset:offset + length] if shot.boxes else None)
    return SourceResult(clips=context.clips, stats=context.stats, num_frames=count, num_shots=len(shots),
                        seconds_by_step=timer.summary())


class _Context:
    """The filters applied to the candidate clips of one source."""

    def __init__(self, path, info, audio, options: PrepOptions, tools: Tools, timer: _Timer):
        self.path, self.info, self.audio = path, info, audio
        self.options, self.tools, self.timer = options, tools, timer
        self.key = source_key(path)
        self.clips: list[ClipRecord] = []
        self.stats: list[ClipStat] = []

    def clip_id(self, start: int, track: int = -1) -> str:
        return f"{self.key}-{start:07d}" + (f"-t{track}" if track >= 0 else "")

    def segment(self, start: int, faces: list[bytes | None], boxes: list[np.ndarray] | None) -> None:
        options = self.options
        n = len(faces)
        row = ClipStat(os.path.abspath(self.path), self.clip_id(start), start, n)
        if boxes is None:  # --multi_face keep and no size filter
            self.candidate(row, faces)
            return
        row.max_faces = max(len(b) for b in boxes)
        tracks = self.tools.track_finder(boxes) if self.tools.track_finder is not None else None
        if options.multi_face == "split" and tracks is not None and len(tracks) > 1:
            full = filters.stable_tracks(tracks, n)
            if not full:
                self.stats.append(row.drop("single_face", "face_track",
                                           f"no face track covers all {n} frames ({len(tracks)} tracks)"))
                return
            tick = self.timer.now()
            track_faces = _align_tracks(self.path, self.info, options, self.tools.landmarker, start, n,
                                        [t.boxes_in(0, n) for t in full])
            self.timer.add("align_tracks", tick)
            for k, (track, aligned) in enumerate(zip(full, track_faces)):
                track_row = dataclasses.replace(row, clip_id=self.clip_id(start, k), track=k)
                track_row.face_size = float(np.median(filters.box_heights(track.boxes_in(0, n))))
                self.candidate(track_row, aligned)
            return
        if options.multi_face == "keep":
            heights = [filters.box_heights(b).max() for b in boxes if len(b)]
            verdict = filters.FaceVerdict(True, face_size=float(np.median(heights)) if heights else math.nan)
        else:
            verdict = filters.single_face_verdict(boxes, options.competing_face_ratio, tracks)
        row.face_size = verdict.face_size
        if not verdict.ok:
            self.stats.append(row.drop("single_face", verdict.reason, verdict.detail))
            return
        self.candidate(row, faces)

    def candidate(self, row: ClipStat, faces: list[bytes | None]) -> None:
        """Face size, face lost, sync and quality filters for one clip; appends its row."""
        options, tools = self.options, self.tools
        self.stats.append(row)
        size = filters.face_size_verdict(row.face_size, options.min_face_size)
        if not size.ok:
            row.drop("face_size", size.reason, size.detail)
            return
        missing = sum(face is None for face in faces)
        if missing:
            row.drop("face", "face_lost", f"no face in {missing} of {len(faces)} frames")
            return
        spf, start = options.samples_per_frame, row.start_frame
        offset = 0
        if tools.sync_scorer is not None:
            tick = self.timer.now()
            try:
                result = tools.sync_scorer.score(faces, self.audio[start * spf:(start + len(faces)) * spf], options.fps)
            except ValueError as e:  # too short to score
                row.drop("sync", "sync_unscorable", str(e))
                return
            finally:
                self.timer.add("sync", tick)
            row.sync_score, row.sync_confidence, row.sync_offset = result.score, result.confidence, result.offset
            reason, detail = filters.sync_verdict(result.confidence, result.offset, options.conf_threshold,
                                                  options.sync_max_offset)
            if reason:
                row.drop("sync", reason, detail)
                return
            offset = result.offset
        first, last = corrected_span(start, len(faces), offset, len(self.audio) + spf // 2, spf)
        if last - first < options.min_frames:
            row.drop("sync", "audio_short", f"audio covers {last - first} of {len(faces)} frames (offset {offset})")
            return
        faces = faces[first:last]
        if tools.quality_scorer is not None:
            tick = self.timer.now()
            picked = decode_frames(faces, filters.quality_frame_indices(len(faces)))
            row.quality = float(tools.quality_scorer(picked))
            self.timer.add("quality", tick)
            reason, detail = filters.quality_verdict(row.quality, options.min_quality)
            if reason:
                row.drop("quality", reason, detail)
                return
        begin = (start + first + offset) * spf
        clip_audio = self.audio[begin:begin + len(faces) * spf]
        clip_audio = np.pad(clip_audio, (0, len(faces) * spf - len(clip_audio)))  # < half a frame short
        clip_start = start + first
        if first:
            row.clip_id = row.clip_id.replace(f"-{start:07d}", f"-{clip_start:07d}", 1)
            row.start_frame = clip_start
        row.num_frames = len(faces)
        self.clips.append(ClipRecord(
            clip_id=row.clip_id, frames=faces, audio=audio_to_int16(clip_audio), fps=options.fps,
            resolution=options.resolution, source=os.path.abspath(self.path), source_width=self.info.width,
            source_height=self.info.height, start_time=clip_start / options.fps, sync_score=row.sync_score,
            sync_confidence=row.sync_confidence, sync_offset=offset))


def _crop_box(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
    """A square twice the face box's larger side around its centre, inside the frame."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1])
    return (max(int(cx - half), 0), max(int(cy - half), 0), min(int(cx + half), width), min(int(cy + half), height))


def _align_tracks(path: str, info: Any, options: PrepOptions, landmarker: Any, start: int, n: int,
                  track_boxes: list[np.ndarray]) -> list[list[bytes | None]]:
    """Second decode of frames [start, start + n): align each track's face (landmarks on a crop
    around its box, own smoothing) -> per track n JPEG faces (None where landmarks fail)."""
    if landmarker is None:
        from lipsync_jax.face import make_landmarker

        landmarker = make_landmarker(options.face_backend)
    aligners = [FaceAligner(options.resolution) for _ in track_boxes]
    out: list[list[bytes | None]] = [[] for _ in track_boxes]
    frames = read_frames(path, fps=options.fps, max_frames=start + n, info=info)
    for index, frame in enumerate(frames):
        if index < start:
            continue
        for k, boxes in enumerate(track_boxes):
            x0, y0, x1, y1 = _crop_box(boxes[index - start], info.width, info.height)
            anchors = landmarker(np.ascontiguousarray(frame[y0:y1, x0:x1])) if x1 - x0 >= 16 and y1 - y0 >= 16 else None
            if anchors is None:
                out[k].append(None)
                continue
            aligned = aligners[k](frame, np.asarray(anchors, np.float64) + np.array([x0, y0], np.float64))
            out[k].append(encode_jpeg(aligned.face, options.jpeg_quality))
    return out
