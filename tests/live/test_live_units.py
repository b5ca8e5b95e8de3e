"""Live mode's pure parts (no model, no compile): the sliding-window layout (timeline.window_at /
window_bounds with lead_in), the stride a latency budget picks (live/programs.choose_stride), the
latency split adding up to the latency (live/latency.py), stream options and the protocol's
message parsing (serving/live_protocol.py), audio refused when not whole samples or not finite."""

from __future__ import annotations

import types

import numpy as np
import pytest

from lipsync_jax.pipeline.job import OptionError


@pytest.mark.parametrize("lead_in", [False, True])
def test_live_windows_are_the_offline_windows_and_tile_the_output(lead_in):
    from lipsync_jax.pipeline.timeline import chunk_bounds, window_at, window_bounds, window_frames

    for n in range(1, 70):
        for overlap in range(16):
            bounds = window_bounds(n, 16, overlap, lead_in=lead_in)
            live = [window_at(j, 16, overlap, lead_in) for j in range(len(bounds))]
            assert bounds == [(a, s, min(e, n)) for a, s, e in live]
            assert [i for _, s, e in bounds for i in range(s, e)] == list(range(n))
            assert window_at(len(bounds), 16, overlap, lead_in)[1] >= n  # the live stream's end test
            for first, _start, stop in bounds:
                assert 0 < stop - first <= 16 and (stop - first == 16 or stop == n)
        if lead_in:  # every window writes its last S frames; S = 16 is LatentSync's chunks
            assert window_bounds(n, 16, 0, lead_in=True) == [(a, a, b) for a, b in chunk_bounds(n)]
            assert all(stop - start == min(4, n - start) for _, start, stop in window_bounds(n, 16, 12, True))
    assert window_bounds(40, 16, 12, lead_in=True)[:2] == [(-12, 0, 4), (-8, 4, 8)]
    assert list(window_frames(-12, 4)) == [0] * 13 + [1, 2, 3]  # positions before frame 0 show frame 0


def test_choose_stride_takes_the_largest_that_fits_with_its_own_measurement():
    from lipsync_jax.live import choose_stride

    measured = []
    choice = choose_stride(0.35, lambda s: measured.append(s) or 0.03)
    # waits: stride S / 25 + 0.0825 + 0.03 <= 0.35 -> S <= 5.9
    assert choice.stride == 5 and measured == [6, 5] and choice.latency == pytest.approx(0.2 + 0.0825 + 0.03)
    assert choice.describe().startswith("max_latency 0.35 s: stride 5 (audio 0.200 s + look-ahead 0.0825 s")
    # a slow device: real time needs S / 25 >= device seconds
    assert choose_stride(2.0, lambda s: 0.3).stride == 16
    assert choose_stride(0.8, lambda s: 0.25, strides=(16, 8, 4)).stride == 8
    # a stride is chosen only with its own measurement (estimates from another stride only steer the search)
    measured.clear()
    choice = choose_stride(0.5, lambda s: measured.append(s) or (0.15 if s == 10 else 0.01))
    assert measured == [10, 6, 9] and choice.stride == 9 and choice.measured == {10: 0.15, 6: 0.01, 9: 0.01}
    with pytest.raises(OptionError, match=r"max_latency 0.1 s: shorter than the audio any window waits for"):
        choose_stride(0.1, lambda s: 0.0)
    with pytest.raises(OptionError, match=r"no stride fits: the device takes 0.200 s per window, which needs stride "
                                          r">= 5 for real time, i.e. a latency of at least 0.483 s"):
        choose_stride(0.35, lambda s: 0.2)
    with pytest.raises(OptionError, match=r"slower than real time even at stride 16"):
        choose_stride(5.0, lambda s: 0.9)
    with pytest.raises(OptionError, match=r"max_latency nan: must be a finite number >= 0"):
        choose_stride(float("nan"), lambda s: 0.0)


def test_the_latency_split_adds_up_to_each_frames_latency():
    from lipsync_jax.live import SPLIT, latency_metrics
    from lipsync_jax.live.latency import frame_split

    fps, frames = 25.0, []
    for i in range(40):  # stride 4: windows of 4, audio in real time, 0.03 s of compute
        start = i - i % 4
        end = (start + 4) / fps
        frames.append(types.SimpleNamespace(index=i, window_start=start, audio_arrived_at=i / fps, audio_end_at=end,
                                            final_at=end + 0.0825, ready_at=end + 0.1125,
                                            emitted_at=end + 0.1125 + (i - start) / fps + 0.01,
                                            latency=end + 0.1225 + (i - start) / fps - i / fps))
    for frame in frames:
        assert sum(frame_split(frame, fps).values()) == pytest.approx(frame.latency)
    metrics = latency_metrics(frames, fps, skip=4)
    assert metrics["split"] == pytest.approx(dict(audio=0.16, look_ahead=0.0825, compute=0.03, pacing=0.01))
    assert tuple(metrics["split"]) == SPLIT and metrics["frames"] == 40
    assert metrics["steady_latency_median"] == pytest.approx(0.2825) and metrics["achieved_fps"] == pytest.approx(25)
    assert metrics["first_frame_latency"] == pytest.approx(0.2825) and metrics["jitter"] == pytest.approx(0, abs=1e-9)
    # frames dropped from the middle of the kept metadata (long streams): counts and rate stay right
    kept = frames[:4] + frames[20:]
    assert latency_metrics(kept, fps, skip=4)["frames"] == 40
    assert latency_metrics(kept, fps, skip=4)["achieved_fps"] == pytest.approx(25)


def test_stream_options_take_the_overlap_from_the_stride():
    from lipsync_jax.live import StreamOptions
    from lipsync_jax.pipeline import Sampling

    assert StreamOptions(stride=4).program_sampling.overlap == 12
    assert StreamOptions().program_sampling.overlap == 0
    assert StreamOptions(stride=8, sampling=Sampling(overlap=8)).program_sampling.overlap == 8
    with pytest.raises(OptionError, match=r"^stride 0: must be a whole number in 1..16$"):
        StreamOptions(stride=0)
    with pytest.raises(OptionError, match=r"overlap 2: live sessions take the overlap from the stride"):
        StreamOptions(stride=8, sampling=Sampling(overlap=2))
    with pytest.raises(OptionError, match=r"^seed -1: must be a whole number in 0..4294967295$"):
        StreamOptions(seed=-1)


def test_audio_must_be_whole_finite_samples():
    from lipsync_jax.live import to_float_audio

    assert to_float_audio(np.array([16384, -32768], np.int16).tobytes()).tolist() == [0.5, -1.0]
    with pytest.raises(ValueError, match=r"^audio message of 3 bytes: int16 audio needs a multiple of 2 bytes"):
        to_float_audio(b"\x00\x01\x02")
    with pytest.raises(ValueError, match=r"^audio message of 5 bytes: float32 audio needs a multiple of 4 bytes"):
        to_float_audio(b"\x00" * 5, "float32")
    with pytest.raises(ValueError, match=r"^audio: 2 of 3 samples are NaN or infinite"):
        to_float_audio(np.array([np.nan, 0.0, -np.inf], np.float32))


def test_protocol_messages_are_parsed_with_the_job_parsers():
    from lipsync_jax.pipeline.job import parse_seed
    from lipsync_jax.serving.live_protocol import ProtocolError, Start, parse_start, parse_text

    assert parse_start(parse_text('{"type": "start"}')) == Start()
    assert parse_start(parse_text('{"type": "start", "format": "float32", "sample_rate": 16000, "seed": "7", '
                                  '"pace": false, "stride": 4}')) == Start("float32", 7, False, 4, None)
    assert parse_start(parse_text('{"type": "start", "max_latency": 0.35}')).max_latency == 0.35
    assert parse_text('{"type": "end"}') == {"type": "end"}
    for text, message in [("", "message '': not JSON"), ('"end"', "message '\"end\"': a JSON string"),
                          ("null", "message 'null': a JSON null"), ("3", "message '3': a JSON number"),
                          ('{"kind": "end"}', "message type None: use start"),
                          ('{"type": "end", "a": 1, "b": 2}', "end message: unknown fields 'a', 'b' (known: none)")]:
        with pytest.raises(ProtocolError) as caught:
            parse_text(text)
        assert str(caught.value).startswith(message), caught.value
    with pytest.raises(OptionError) as expected:
        parse_seed(2 ** 70)
    with pytest.raises(OptionError) as got:
        parse_start({"type": "start", "seed": 2 ** 70})
    assert str(got.value) == str(expected.value)
    assert str(got.value) == "seed 1180591620717411303424: must be a whole number in 0..4294967295"


class VirtualTime:
    """``time.perf_counter`` / ``time.sleep`` on a simulated clock (pacing without real sleeps)."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += max(0.0, seconds)


def paced(frames_ready, audio_at, monkeypatch, stride=4, fps=25.0, consumer_delay=None):
    """Hand out frames through StreamSession's pacing on a virtual clock: each frame once it is
    ready (and ``consumer_delay[i]`` seconds later); returns the latencies."""
    import collections
    import threading

    from lipsync_jax.live import session as session_module
    from lipsync_jax.live.session import LiveFrame, StreamOptions, StreamSession

    clock = VirtualTime()
    monkeypatch.setattr(session_module, "time", clock)
    session = StreamSession.__new__(StreamSession)  # only the pacing state
    session.options, session.fps, session.stride = StreamOptions(stride=stride), fps, stride
    session.stop, session.late_frames, session._clock, session._audio_zero = threading.Event(), 0, None, None
    session._spare, session._last_emit = collections.deque(maxlen=max(8, 2 * stride)), 0.0
    t0 = clock.now
    latencies = []
    for i, (ready, arrived) in enumerate(zip(frames_ready, audio_at)):
        clock.now = max(clock.now, t0 + ready) + (0.0 if consumer_delay is None else consumer_delay[i])
        frame = LiveFrame(i, i / fps, None, i // stride, True, i - i % stride, ready_at=t0 + ready,
                          audio_arrived_at=t0 + arrived)
        frame.emitted_at = session._pace(frame)
        latencies.append(frame.latency)
    return np.array(latencies), session


def test_pacing_catches_up_after_a_slow_window_only_when_audio_comes_in_real_time(monkeypatch):
    fps, n = 25.0, 100
    ready = np.array([(i - i % 4 + 4) / fps + 0.1 for i in range(n)])  # window's audio + 0.1 s
    base = 4 / fps + 0.1
    latency, _ = paced(ready, np.arange(n) / fps, monkeypatch)
    assert latency == pytest.approx(base)  # every frame: its window's audio + 0.1 s, then its turn
    ready[8:12] += 0.3  # window 2 is 0.3 s late (one slow device call)
    latency, session = paced(ready, np.arange(n) / fps, monkeypatch)
    assert latency[:8] == pytest.approx(base) and latency[8:16] == pytest.approx(base + 0.3)
    assert session.late_frames == 1  # the frame that re-based the clock
    assert latency[-40:] == pytest.approx(base + 0.002)  # ... caught up again within 2 s (to the 2 ms slack)
    emitted = latency + np.arange(n) / fps
    assert np.diff(emitted).min() == pytest.approx(0.8 / fps)  # at most 20 % faster while catching up
    # the consumer stalls 0.5 s once (frames ready in time): the clock stays, the frames catch up
    latency, session = paced(ready * 0 + (np.arange(n) - np.arange(n) % 4 + 4) / fps + 0.1, np.arange(n) / fps,
                             monkeypatch, consumer_delay=[0.5 if i == 20 else 0.0 for i in range(n)])
    assert session.late_frames == 0 and latency[20] == pytest.approx(base + 0.5)
    assert latency[-10:] == pytest.approx(base) and np.diff(latency[20:]).min() >= -0.2 / fps - 1e-9  # 0.5 s / 8 ms
    # a burst (all audio at once): the same late window, but no catching up: the video rate holds
    latency, _ = paced(ready, np.zeros(n), monkeypatch)
    assert np.diff(latency[12:]) == pytest.approx(1 / fps)
