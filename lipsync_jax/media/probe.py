"""Stream information from ``ffmpeg -i`` (imageio-ffmpeg ships no ffprobe).

``ffmpeg -i FILE`` with no output prints the container and stream description to stderr and
exits with an error; we parse that text. The parser is a pure function (``parse_ffmpeg_info``).
"""

from __future__ import annotations

import dataclasses
import re
import subprocess

from lipsync_jax.media.ffmpeg import MediaError, ffmpeg_exe, require_file, run_ffmpeg, stderr_tail


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What a media file holds. ``width``/``height`` are the DISPLAYED size: when the file carries
    a 90/270 degree rotation, ffmpeg rotates decoded frames and the stored size is swapped."""

    path: str
    width: int
    height: int
    fps: float  # the video stream's frame rate (its "fps", else "tbr" value)
    num_frames: int  # exact when counted (the default), else round(duration * fps)
    duration: float  # container duration in seconds (0.0 when unknown)
    has_audio: bool
    rotation: int  # display-matrix rotation in degrees as ffmpeg reports it (counter-clockwise)
    video_codec: str
    audio_codec: str | None
    audio_sample_rate: int | None
    frames_counted: bool  # whether num_frames was counted (True) or estimated (False)

    def frame_count_at(self, fps: float) -> int:
        """Frames after resampling to ``fps`` (the fps filter keeps duration): an estimate."""
        return max(1, round(self.duration * fps)) if self.duration > 0 else self.num_frames


_DURATION = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_STREAM = re.compile(r"^\s*Stream #\d+:\d+.*?: (Video|Audio): (.*)$")
_SIZE = re.compile(r"(?<![\w.])(\d{1,5})x(\d{1,5})(?![\w])")
_RATE = re.compile(r"(\d+(?:\.\d+)?)(k?) (fps|tbr)\b")
_ROTATION = re.compile(r"rotation of (-?\d+(?:\.\d+)?) degrees", re.IGNORECASE)  # display matrix
_ROTATE_TAG = re.compile(r"^\s*rotate\s*:\s*(-?\d+)\s*$", re.MULTILINE)
_SAMPLE_RATE = re.compile(r"(\d+) Hz")


def _rate(text: str, unit: str) -> float | None:
    for value, kilo, found_unit in _RATE.findall(text):
        if found_unit == unit:
            return float(value) * (1000.0 if kilo else 1.0)
    return None


def parse_ffmpeg_info(text: str, path: str) -> dict:
    """Fields of the FIRST video and first audio stream in ``ffmpeg -i`` stderr ``text``."""
    info: dict = {"duration": 0.0, "video": None, "audio": None, "rotation": 0}
    match = _DURATION.search(text)
    if match:
        h, m, s = match.groups()
        info["duration"] = int(h) * 3600 + int(m) * 60 + float(s)
    lines = text.splitlines()
    for i, line in enumerate(lines):
        stream = _STREAM.match(line)
        if not stream:
            continue
        kind, desc = stream.groups()
        codec = desc.split(",")[0].split()[0] if desc.strip() else "?"
        if kind == "Video" and info["video"] is None:
            size = _SIZE.search(desc)
            if size is None:
                raise MediaError(f"{path}: cannot read the video frame size from ffmpeg")
            fps = _rate(desc, "fps") or _rate(desc, "tbr")
            # side data / metadata lines of this stream follow until the next "Stream #"
            block = []
            for follow in lines[i + 1:]:
                if follow.lstrip().startswith("Stream #"):
                    break
                block.append(follow)
            info["video"] = {"codec": codec, "width": int(size.group(1)),
                             "height": int(size.group(2)), "fps": fps}
            info["rotation"] = _parse_rotation("\n".join(block))
        elif kind == "Audio" and info["audio"] is None:
            rate = _SAMPLE_RATE.search(desc)
            info["audio"] = {"codec": codec, "sample_rate": int(rate.group(1)) if rate else None}
    return info


def _parse_rotation(block: str) -> int:
    match = _ROTATION.search(block)
    if match:
        return int(round(float(match.group(1))))
    tag = _ROTATE_TAG.search(block)  # old ffmpeg: "rotate : 90" (clockwise) metadata tag
    return -int(tag.group(1)) if tag else 0


def read_ffmpeg_info(path: str) -> dict:
    """Runs ``ffmpeg -i path`` and parses its stream description (see ``parse_ffmpeg_info``)."""
    require_file(path)
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", path],
                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    text = proc.stderr.decode("utf-8", "replace")
    if "Input #0" not in text:
        raise MediaError(f"{path}: not a readable media file ({stderr_tail(text, 2)})")
    return parse_ffmpeg_info(text, path)


def count_frames(path: str) -> int:
    """Exact number of video frames (demux only, no decoding: fast)."""
    log = run_ffmpeg(["-loglevel", "info", "-i", path, "-map", "0:v:0", "-c", "copy", "-f", "null", "-"],
                     what=path)
    counts = re.findall(r"frame=\s*(\d+)", log)
    if not counts:
        raise MediaError(f"{path}: ffmpeg did not report a frame count")
    return int(counts[-1])


def probe_video(path: str, *, count: bool = True) -> VideoInfo:
    """Describes the first video stream of ``path`` (plus whether it has audio).

    Raises MediaError naming the file if it is missing, unreadable or has no video stream.
    """
    info = read_ffmpeg_info(path)
    video = info["video"]
    if video is None:
        raise MediaError(f"{path}: no video stream")
    fps = video["fps"]
    if not fps or fps <= 0:
        raise MediaError(f"{path}: cannot determine the video frame rate")
    width, height = video["width"], video["height"]
    rotation = info["rotation"]
    if rotation % 180 != 0:  # ffmpeg auto-rotates decoded frames by +-90: displayed size swaps
        width, height = height, width
    num_frames = count_frames(path) if count else max(0, round(info["duration"] * fps))
    if count and num_frames == 0:
        raise MediaError(f"{path}: the video stream has no frames")
    audio = info["audio"]
    return VideoInfo(path=path, width=width, height=height, fps=float(fps), num_frames=num_frames,
                     duration=info["duration"], has_audio=audio is not None, rotation=rotation,
                     video_codec=video["codec"], audio_codec=audio["codec"] if audio else None,
                     audio_sample_rate=audio["sample_rate"] if audio else None,
                     frames_counted=count)


def probe_audio_duration(path: str) -> float:
    """Duration in seconds of a file that must contain an audio stream."""
    info = read_ffmpeg_info(path)
    if info["audio"] is None:
        raise MediaError(f"{path}: no audio stream")
    if info["duration"] <= 0:
        raise MediaError(f"{path}: cannot determine the audio duration")
    return info["duration"]
