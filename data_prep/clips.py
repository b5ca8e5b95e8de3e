"""Turn one source video into aligned training clips (runs inside a data_prep worker).

Steps, streaming one frame at a time (memory: the JPEG-encoded faces of the current shot):
1. probe the video, load its audio as 16 kHz mono (the whole track),
2. read frames resampled to 25 fps (ffmpeg's fps filter),
3. shot cuts (``shots.ShotDetector``) on downscaled frames; at a cut the face tracker's
   translation smoothing is reset, so no clip mixes the smoothing of two shots (frames of one
   shot, and so of one clip, share it),
4. every frame goes through the inference face pipeline (``lipsync_jax.face.FaceTracker``:
   MediaPipe anchors, LatentSync's template alignment, smoothing); aligned faces are JPEG-encoded,
5. shots are cut into 5-10 s clips (``shots.segment_shot``); a clip with any frame where the
   face was lost is dropped (as LatentSync's preprocessing drops such videos),
6. optional SyncNet scoring and audio-offset correction (``sync_filter``),
7. each clip's audio (640 samples per frame at 25 fps) is cut from the source track.

Everything a clip loses is reported as a ``Drop`` with a reason; a file that cannot be used at
all raises ``SourceError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any

import numpy as np

from data_prep.shots import ShotDetector, segment_shot
from data_prep.sync_filter import SyncScorer, corrected_span
from lipsync_jax.audio.load import AudioLoadError, load_audio
from lipsync_jax.data.records import AUDIO_SAMPLE_RATE, ClipRecord, audio_to_int16, encode_jpeg
from lipsync_jax.face import FaceError, FaceTracker, NoFaceError
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
    syncnet_ckpt: str | None = None
    sync_search_offset: int = 15
    sync_max_offset: int = 6
    sync_min_confidence: float = 0.0

    @property
    def min_frames(self) -> int:
        return int(round(self.min_seconds * self.fps))

    @property
    def max_frames(self) -> int:
        return int(round(self.max_seconds * self.fps))

    @property
    def samples_per_frame(self) -> int:
        return int(round(AUDIO_SAMPLE_RATE / self.fps))


@dataclasses.dataclass
class Drop:
    reason: str
    start_frame: int
    num_frames: int
    detail: str = ""


@dataclasses.dataclass
class SourceResult:
    clips: list[ClipRecord]
    drops: list[Drop]
    num_frames: int
    num_shots: int


def source_key(path: str) -> str:
    """Stable id of a source: its base name plus a hash of its absolute path."""
    stem = os.path.splitext(os.path.basename(path))[0]
    stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:40]
    return f"{stem}-{hashlib.sha1(os.path.abspath(path).encode()).hexdigest()[:10]}"


class _Shot:
    def __init__(self, start: int):
        self.start = start
        self.faces: list[bytes | None] = []


def process_source(path: str, options: PrepOptions, landmarker: Any = None,
                   scorer: SyncScorer | None = None) -> SourceResult:
    """All clips of one video, plus what was dropped and why."""
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
    tracker = FaceTracker(options.resolution, landmarker=landmarker, backend=options.face_backend, source=path)
    detector = ShotDetector(options.shot_threshold)
    shots: list[_Shot] = []
    count = 0
    try:
        for index, frame in enumerate(read_frames(path, fps=options.fps, max_frames=max_frames, info=info)):
            count += 1
            if detector.update(frame) or not shots:
                shots.append(_Shot(index))
                tracker.aligner.reset()
            aligned = tracker(frame)
            shots[-1].faces.append(None if aligned is None else encode_jpeg(aligned.face, options.jpeg_quality))
        tracker.check_found()
    except MediaError as e:
        raise SourceError("unreadable_video", str(e)) from None
    except NoFaceError as e:
        raise SourceError("no_face", str(e)) from None
    except FaceError as e:
        raise SourceError("face_pipeline", str(e)) from None
    finally:
        tracker.close()
    clips, drops = [], []
    for shot in shots:
        segments = segment_shot(shot.start, len(shot.faces), options.min_frames, options.max_frames)
        if not segments:
            drops.append(Drop("shot_too_short", shot.start, len(shot.faces),
                              f"{len(shot.faces) / options.fps:.2f} s < {options.min_seconds} s"))
        for start, length in segments:
            faces = shot.faces[start - shot.start:start - shot.start + length]
            missing = sum(face is None for face in faces)
            if missing:
                drops.append(Drop("face_lost", start, length, f"no face in {missing} of {length} frames"))
                continue
            clip, drop = _make_clip(path, info, audio, start, faces, options, scorer)
            if clip is None:
                drops.append(drop)
            else:
                clips.append(clip)
    return SourceResult(clips=clips, drops=drops, num_frames=count, num_shots=len(shots))


def _make_clip(path: str, info: Any, audio: np.ndarray, start: int, faces: list[bytes], options: PrepOptions,
               scorer: SyncScorer | None) -> tuple[ClipRecord | None, Drop | None]:
    spf = options.samples_per_frame
    score, confidence, offset = math.nan, math.nan, 0
    if scorer is not None:
        clip_audio = audio[start * spf:(start + len(faces)) * spf]
        try:
            result = scorer.score(faces, clip_audio, options.fps)
        except ValueError as e:  # too short to score
            return None, Drop("sync_unscorable", start, len(faces), str(e))
        if abs(result.offset) > options.sync_max_offset:
            return None, Drop("sync_offset", start, len(faces), f"best offset {result.offset} frames")
        if result.confidence < options.sync_min_confidence:
            return None, Drop("sync_confidence", start, len(faces), f"confidence {result.confidence:.3f}")
        score, confidence, offset = result.score, result.confidence, result.offset
    first, last = corrected_span(start, len(faces), offset, len(audio) + spf // 2, spf)
    if last - first < options.min_frames:
        return None, Drop("audio_short", start, len(faces),
                          f"audio covers {last - first} of {len(faces)} frames (offset {offset})")
    faces = faces[first:last]
    begin = (start + first + offset) * spf
    clip_audio = audio[begin:begin + len(faces) * spf]
    clip_audio = np.pad(clip_audio, (0, len(faces) * spf - len(clip_audio)))  # < half a frame short
    clip_start = start + first
    record = ClipRecord(
        clip_id=f"{source_key(path)}-{clip_start:07d}", frames=faces, audio=audio_to_int16(clip_audio),
        fps=options.fps, resolution=options.resolution, source=os.path.abspath(path), source_width=info.width,
        source_height=info.height, start_time=clip_start / options.fps, sync_score=score,
        sync_confidence=confidence, sync_offset=offset)
    return record, None
