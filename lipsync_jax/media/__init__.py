"""Media I/O through the ffmpeg binary of imageio-ffmpeg: probing, streaming frame reading and
writing, audio muxing. Every failure is a ``MediaError`` naming the file."""

from lipsync_jax.media.ffmpeg import MediaError, ffmpeg_exe
from lipsync_jax.media.mux import mux_audio
from lipsync_jax.media.probe import VideoInfo, count_frames, probe_audio_duration, probe_video
from lipsync_jax.media.video import VideoWriter, read_frames

__all__ = ["MediaError", "VideoInfo", "VideoWriter", "count_frames", "ffmpeg_exe", "mux_audio",
           "probe_audio_duration", "probe_video", "read_frames"]
