"""Combine an encoded video with an audio track (AAC) into the final mp4."""

from __future__ import annotations

from lipsync_jax.media.atomic import atomic_output
from lipsync_jax.media.ffmpeg import MediaError, run_ffmpeg
from lipsync_jax.media.probe import probe_audio_duration, probe_video


def mux_audio(video_path: str, audio_path: str, out_path: str, *,
              duration: float | None = None, audio_bitrate: str = "192k") -> float:
    """Writes ``out_path``: the video stream of ``video_path`` (copied, not re-encoded) with the
    first audio stream of ``audio_path`` encoded as AAC.

    The output lasts ``duration`` seconds, by default the shorter of the two inputs (like
    ffmpeg's -shortest, but exact). The file appears at ``out_path`` only on success.
    Returns the duration used.
    """
    video = probe_video(video_path, count=False)
    audio_duration = probe_audio_duration(audio_path)
    if duration is None:
        duration = min(d for d in (video.duration, audio_duration) if d > 0)
    if duration <= 0:
        raise MediaError(f"{out_path}: nothing to write (duration {duration})")
    with atomic_output(out_path) as tmp:
        run_ffmpeg(["-y", "-i", video_path, "-i", audio_path, "-map", "0:v:0", "-map", "1:a:0",
                    "-c:v", "copy", "-c:a", "aac", "-b:a", audio_bitrate, "-t", f"{duration:.6f}",
                    "-movflags", "+faststart", tmp],
                   what=f"muxing {video_path} + {audio_path} -> {out_path}")
    return duration
