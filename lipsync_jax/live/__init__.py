"""Live mode: audio streams in, lip-synced frames stream out (see session.py).

    from lipsync_jax.live import LiveAvatar, StreamOptions, StreamSession, warm_up
    avatar = LiveAvatar.prepare(engine.models, "avatar.mp4")
    options = StreamOptions(seed=1, stride=4)      # 4 new frames per 16-frame window
    warm_up(engine, options)                       # compiled and run once before any audio
    with StreamSession(engine, avatar, options) as session:
        session.push(samples)          # 16 kHz mono float32 / int16, any chunk size
        frame = session.next_frame()   # LiveFrame (index, timestamp, RGB image), paced at the video rate

``audio_online.py``: Whisper windows as audio arrives; ``avatar.py``: a video prepared once for
sessions; ``latency.py``: the latency figures and their split; ``programs.py``: warm-up, device
time per window and the stride a latency budget allows. The WebSocket server and its page:
``lipsync_jax/serving/live_server.py``. An engine whose device takes a set time per window (the
latency machinery measured without a fast device): tests/helpers/stand_in.py.
"""

from lipsync_jax.live.audio_online import (
                                           OnlineAudioFeatures,
                                           look_ahead_seconds,
                                           stream_windows,
                                           to_float_audio,
                                           window_error,
)
from lipsync_jax.live.avatar import LiveAvatar
from lipsync_jax.live.latency import SPLIT, latency_metrics
from lipsync_jax.live.programs import StrideChoice, choose_stride, warm_up
from lipsync_jax.live.session import LiveFrame, StreamClosed, StreamOptions, StreamOverflow, StreamSession

__all__ = ["OnlineAudioFeatures", "look_ahead_seconds", "stream_windows", "to_float_audio", "window_error",
           "LiveAvatar", "SPLIT", "latency_metrics", "StrideChoice", "choose_stride", "warm_up", "LiveFrame",
           "StreamClosed", "StreamOptions", "StreamOverflow", "StreamSession"]
