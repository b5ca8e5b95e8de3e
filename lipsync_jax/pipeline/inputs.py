"""Checks of the user's files before any heavy work (model loading, face alignment, sampling).

Every problem is an ``InputError`` whose message names the file: missing or unreadable files,
an audio-only file given as the video, a video without sound given as the audio, an output
path in a missing folder or with a container that cannot hold H.264 + AAC.
"""

from __future__ import annotations

import dataclasses
import os

from lipsync_jax.media import MediaError, VideoInfo, probe_video
from lipsync_jax.media.probe import read_ffmpeg_info
from lipsync_jax.pipeline.errors import InputError

OUTPUT_EXTENSIONS = (".mp4", ".mov", ".m4v")


@dataclasses.dataclass(frozen=True)
class CheckedInputs:
    video: VideoInfo
    audio_path: str
    audio_duration: float  # seconds, from the container


def _media_info(path: str, role: str) -> dict:
    if not path:
        raise InputError(f"no {role} file given")
    if not os.path.exists(path):
        raise InputError(f"{role} {path}: no such file")
    if os.path.isdir(path):
        raise InputError(f"{role} {path}: is a folder, not a media file")
    try:
        return read_ffmpeg_info(path)
    except MediaError as e:
        raise InputError(f"{role} {e}") from None


def check_video(path: str) -> VideoInfo:
    info = _media_info(path, "video")
    if info["video"] is None:
        hint = " (it is an audio file: pass it as --audio)" if info["audio"] is not None else ""
        raise InputError(f"video {path}: has no video stream{hint}")
    try:
        video = probe_video(path, count=True)
    except MediaError as e:
        raise InputError(f"video {e}") from None
    if video.width < 16 or video.height < 16:
        raise InputError(f"video {path}: frames of {video.width}x{video.height} are too small")
    return video


def check_audio(path: str) -> float:
    info = _media_info(path, "audio")
    if info["audio"] is None:
        hint = " (a video without sound?)" if info["video"] is not None else ""
        raise InputError(f"audio {path}: has no audio stream{hint}")
    if info["duration"] <= 0:
        raise InputError(f"audio {path}: cannot determine its duration")
    return float(info["duration"])


def check_output(path: str, inputs: tuple[str, ...] = ()) -> None:
    if not path:
        raise InputError("no output file given")
    if os.path.isdir(path):
        raise InputError(f"output {path}: is a folder; give a file name such as {os.path.join(path, 'out.mp4')}")
    if not path.lower().endswith(OUTPUT_EXTENSIONS):
        raise InputError(f"output {path}: use one of {', '.join(OUTPUT_EXTENSIONS)} (H.264 video + AAC audio)")
    folder = os.path.dirname(os.path.abspath(path))
    try:  # a missing output folder is created, as a user expects of `--output runs/x/out.mp4`
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        raise InputError(f"output {path}: cannot create folder {folder} ({error.strerror or error})") from None
    for other in inputs:
        if other and os.path.exists(other) and os.path.exists(path) and os.path.samefile(other, path):
            raise InputError(f"output {path}: is the same file as input {other}")


def check_inputs(video_path: str, audio_path: str, output_path: str) -> CheckedInputs:
    """Probe both inputs and the output location; raises ``InputError`` naming the bad file."""
    video = check_video(video_path)
    duration = check_audio(audio_path)
    check_output(output_path, (video_path, audio_path))
    return CheckedInputs(video=video, audio_path=audio_path, audio_duration=duration)
