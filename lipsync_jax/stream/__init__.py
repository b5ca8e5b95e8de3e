"""Live mode: audio streams in, lip-synced frames stream out (see session.py).

    from lipsync_jax.stream import open_session
    with open_session(models, "avatar.mp4", num_steps=20) as session:
        session.push(samples)          # 16 kHz mono float32 / int16, any chunk size
        frame = session.next_frame()   # LiveFrame (index, timestamp, RGB image), paced at the video rate

``audio_online.py``: Whisper windows as audio arrives; ``avatar.py``: a video prepared once for
sessions; ``serve.py``: the WebSocket server and its page (``python -m lipsync_jax.stream.serve``).
"""

from lipsync_jax.stream.audio_online import OnlineAudioFeatures, stream_windows, to_float_audio, window_error
from lipsync_jax.stream.avatar import LiveAvatar
from lipsync_jax.stream.session import (LiveFrame, StreamClosed, StreamOptions, StreamOverflow, StreamSession,
                                        latency_metrics, open_session)

__all__ = ["OnlineAudioFeatures", "stream_windows", "to_float_audio", "window_error", "LiveAvatar", "LiveFrame",
           "StreamClosed", "StreamOptions", "StreamOverflow", "StreamSession", "latency_metrics", "open_session"]
