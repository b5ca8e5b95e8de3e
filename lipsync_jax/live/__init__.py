"""Live mode: audio streams in, lip-synced frames stream out (see session.py).

    from lipsync_jax.live import LiveAvatar, StreamOptions, StreamSession
    avatar = LiveAvatar.prepare(engine.models, "avatar.mp4")
    with StreamSession(engine, avatar, StreamOptions(seed=1)) as session:
        session.push(samples)          # 16 kHz mono float32 / int16, any chunk size
        frame = session.next_frame()   # LiveFrame (index, timestamp, RGB image), paced at the video rate

``audio_online.py``: Whisper windows as audio arrives; ``avatar.py``: a video prepared once for
sessions. The WebSocket server and its page: ``lipsync_jax/serving/live_server.py``.
"""

from lipsync_jax.live.audio_online import OnlineAudioFeatures, stream_windows, to_float_audio, window_error
from lipsync_jax.live.avatar import LiveAvatar
from lipsync_jax.live.session import (
                                      LiveFrame,
                                      StreamClosed,
                                      StreamOptions,
                                      StreamOverflow,
                                      StreamSession,
                                      latency_metrics,
                                      warm_up,
)

__all__ = ["OnlineAudioFeatures", "stream_windows", "to_float_audio", "window_error", "LiveAvatar", "LiveFrame",
           "StreamClosed", "StreamOptions", "StreamOverflow", "StreamSession", "latency_metrics", "warm_up"]
