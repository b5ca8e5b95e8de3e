"""The live server over loopback (lipsync_jax/serving/live_server.py, live_protocol.py) with a
WebSocket client: every bad message gets an ``error`` naming the problem (the job parsers' own
words), is logged, and the socket closes normally (1000, never 1006); a disconnect frees its slot
at once while the abandoned window is still running; strides and ``max_latency`` per client; the
random-weights warning in ``/status``. The engine is ``StandInEngine`` (tests/helpers/stand_in.py: the
device program and the Whisper encoder take a set time), so nothing compiles and these run in
the integration tier; the real server, its signals and the page in Chromium: tests/serving/test_live_real.py."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from lipsync_jax.pipeline import Sampling
from tests.helpers.clips import make_clip
from tests.helpers.engine import SEED
from tests.helpers.live import Server, exchange, pcm
from tests.helpers.paths import asset_path

pytestmark = pytest.mark.integration

DEVICE_SECONDS = 0.02  # the stand-in device's time per window
STRIDES = {16: DEVICE_SECONDS, 8: DEVICE_SECONDS, 4: DEVICE_SECONDS}


@pytest.fixture(scope="module")
def avatar(tiny_models, tmp_path_factory):
    from lipsync_jax.live import LiveAvatar

    clip = make_clip(tmp_path_factory.mktemp("clip") / "avatar.mp4", seconds=1.2)
    with LiveAvatar.prepare(tiny_models, clip) as avatar:
        yield avatar


@pytest.fixture(scope="module")
def speech(tiny_models):
    from lipsync_jax.pipeline import prepare_audio

    return prepare_audio(tiny_models, asset_path("demo1_audio.wav"), 25.0, 2.0).samples


def serve(tiny_models, avatar, log, **options):
    from lipsync_jax.live import StreamOptions, warm_up
    from lipsync_jax.serving.live_server import create_app
    from tests.helpers.stand_in import StandInEngine

    engine = StandInEngine(tiny_models, device_seconds=DEVICE_SECONDS, encoder_seconds=0.002)
    base = StreamOptions(sampling=Sampling(steps=2), seed=SEED, **options)
    for stride in STRIDES:
        warm_up(engine, StreamOptions(sampling=base.sampling, stride=stride))
    app = create_app(engine, avatar, options=base, strides=STRIDES, max_sessions=1, max_side=240,
                     random_weights=True, log=log.append)
    return Server(app)


@pytest.fixture(scope="module")
def server(tiny_models, avatar):
    log: list[str] = []
    srv = serve(tiny_models, avatar, log)
    srv.log = log
    yield srv
    srv.stop()


def job_message(parse, value) -> str:
    from lipsync_jax.pipeline.job import OptionError

    with pytest.raises(OptionError) as caught:
        parse(value)
    return str(caught.value)


def bad_messages():
    from lipsync_jax.pipeline.job import parse_seed

    start = json.dumps({"type": "start", "format": "int16"})
    start_f32 = json.dumps({"type": "start", "format": "float32"})
    nan = np.array([0.1, np.nan, 0.2], "<f4").tobytes()
    inf = np.array([np.inf] * 4, "<f4").tobytes()
    return {
        "text that is not JSON": (["hello"], "message 'hello': not JSON"),
        "a JSON list": (["[1, 2]"], "message '[1, 2]': a JSON list, not an object"),
        "seed 'x'": ([json.dumps({"type": "start", "seed": "x"})], job_message(parse_seed, "x")),
        "seed 2**70": ([json.dumps({"type": "start", "seed": 2 ** 70})], job_message(parse_seed, 2 ** 70)),
        "sample_rate 'abc'": ([json.dumps({"type": "start", "sample_rate": "abc"})],
                              "sample_rate 'abc': must be a whole number >= 1"),
        "sample_rate 44100": ([json.dumps({"type": "start", "sample_rate": 44100})],
                              "sample_rate 44100: must be 16000"),
        "odd int16 bytes": ([start, b"\x01" * 641], "audio message of 641 bytes: int16 audio needs a multiple of 2"),
        "float32 bytes not a multiple of 4": ([start_f32, b"\x00" * 6], "float32 audio needs a multiple of 4"),
        "garbage after start": ([start, pcm(np.zeros(640)), "{garbage"], "message '{garbage': not JSON"),
        "audio after end": ([start, pcm(np.zeros(640)), json.dumps({"type": "end"}), pcm(np.zeros(640))],
                            "audio message of 1280 bytes after end"),
        "unknown start field": ([json.dumps({"type": "start", "voice": "x"})],
                                "start message: unknown field 'voice' (known: format, sample_rate, seed, pace, "
                                "stride, max_latency)"),
        "unknown end field": ([start, json.dumps({"type": "end", "now": True})], "end message: unknown field 'now'"),
        "unknown type": ([json.dumps({"type": "stop"})], "message type 'stop': use start"),
        "a second start": ([start, start], "start message: only as the first message"),
        "NaN float32 audio": ([start_f32, nan], "audio: 1 of 3 samples are NaN or infinite"),
        "infinite float32 audio": ([start_f32, inf], "audio: 4 of 4 samples are NaN or infinite"),
        "odd bytes as the first message": ([b"\xff\x7f" * 4 + b"\x00"], "audio message of 9 bytes: int16 audio"),
        "format 'mp3'": ([json.dumps({"type": "start", "format": "mp3"})],
                         "format 'mp3': choose one of int16, float32"),
        "pace 'yes'": ([json.dumps({"type": "start", "pace": "yes"})], "pace 'yes': must be true or false"),
        "stride 17": ([json.dumps({"type": "start", "stride": 17})], "stride 17: must be a whole number in 1..16"),
        "stride not offered": ([json.dumps({"type": "start", "stride": 3})], "stride 3: this server offers 16, 8, 4"),
        "stride and max_latency": ([json.dumps({"type": "start", "stride": 4, "max_latency": 1})],
                                   "use stride or max_latency, not both"),
        "max_latency too short": ([json.dumps({"type": "start", "max_latency": 0.1})],
                                  "max_latency 0.1 s: shorter than the audio any window waits for (stride 4"),
        "max_latency NaN": (['{"type": "start", "max_latency": NaN}'], "max_latency nan: must be a finite number"),
    }


@pytest.mark.parametrize("case", list(bad_messages()))
def test_every_bad_message_gets_an_error_naming_it_and_a_normal_close(server, case):
    messages, expected = bad_messages()[case]
    before = len(server.log)
    texts, _, code = exchange(server.ws, messages)
    errors = [t for t in texts if t["type"] == "error"]
    assert len(errors) == 1 and expected in errors[0]["message"], texts
    assert "\n" not in errors[0]["message"] and "Traceback" not in errors[0]["message"]
    assert code == 1000  # a normal close, never 1006 (dropped) or 1011 (internal)
    deadline = time.time() + 5  # the log line is written as the socket closes
    while time.time() < deadline and not any(errors[0]["message"] in line for line in server.log[before:]):
        time.sleep(0.02)
    assert any(f"error: {errors[0]['message']}" in line for line in server.log[before:]), server.log[before:]
    assert wait_idle(server)


def wait_idle(server, timeout=10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server.status()["active_sessions"] == 0:
            return True
        time.sleep(0.02)
    return False


def test_a_session_at_stride_4_streams_every_frame_with_the_latency_split(server, speech):
    start = json.dumps({"type": "start", "stride": 4, "pace": False})
    audio = pcm(speech[:16000])  # 1.0 s: 25 frames
    pieces = [audio[k:k + 1280] for k in range(0, len(audio), 1280)]
    texts, frames, code = exchange(server.ws, [start, *pieces, json.dumps({"type": "end"})])
    kinds = [t["type"] for t in texts]
    assert kinds[0] == "started" and texts[0]["stride"] == 4 and texts[0]["overlap"] == 12
    assert texts[0]["device_seconds"] == DEVICE_SECONDS and kinds[-1] == "done" and code == 1000
    assert frames == 25 and "error" not in kinds
    statuses = [t for t in texts if t["type"] == "status"]
    assert statuses and all(s["stride"] == 4 for s in statuses)
    split = texts[-1]["metrics"]["split"]
    assert sorted(split) == ["audio", "compute", "look_ahead", "pacing"]
    assert texts[-1]["metrics"]["frames"] == 25 and texts[-1]["status"]["windows"] == 7  # 6 x 4 + 1
    assert wait_idle(server)


def test_max_latency_picks_the_largest_offered_stride_that_fits(server, speech):
    start = json.dumps({"type": "start", "max_latency": 0.35, "pace": False})
    texts, frames, _ = exchange(server.ws, [start, pcm(speech[:8000]), json.dumps({"type": "end"})])
    started = texts[0]
    # stride 8 waits 0.32 s + 0.0825 s > 0.35 s; stride 4: 0.16 + 0.0825 + 0.02 = 0.26 s
    assert started["type"] == "started" and started["stride"] == 4, started
    assert started["choice"].startswith("max_latency 0.35 s: stride 4 (audio 0.160 s + look-ahead 0.0825 s + "
                                        "device 0.020 s per window = 0.263 s")
    assert frames == 12 and texts[-1]["type"] == "done"


def test_status_offers_the_strides_and_says_the_weights_are_random(server):
    from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING

    status = server.status()
    assert status["strides"] == [dict(stride=s, device_seconds=DEVICE_SECONDS) for s in (4, 8, 16)]
    assert status["stride"] == 16 and status["look_ahead"] == pytest.approx(0.0825)
    assert status["random_weights"] is True and status["warning"] == RANDOM_WEIGHTS_WARNING


def test_a_disconnect_frees_its_slot_at_once_while_its_window_is_abandoned(tiny_models, avatar, speech):
    """The session's worker sits in its window (on_chunk sleeps 4 s, as a slow device call would);
    the client goes away: the slot is free within half a second, the worker ends on its own."""
    from websockets.sync.client import connect

    inside, log = threading.Event(), []

    def slow_window(index, start, faces):
        inside.set()
        time.sleep(4.0)

    srv = serve(tiny_models, avatar, log, on_chunk=slow_window)
    try:
        before = set(threading.enumerate())
        ws = connect(srv.ws, open_timeout=30)
        ws.send(json.dumps({"type": "start", "stride": 8}))
        ws.send(pcm(speech[:16000]))
        assert inside.wait(30)
        workers = [t for t in set(threading.enumerate()) - before if t.name.startswith("live-session")]
        assert len(workers) == 1 and srv.status()["active_sessions"] == 1
        ws.close()
        left = time.perf_counter()
        assert wait_idle(srv, timeout=5)
        freed = time.perf_counter() - left
        assert freed < 0.5, freed
        assert workers[0].is_alive()  # still inside the abandoned window: not awaited
        # the slot is usable at once: a new client is served, not told busy
        texts, _, code = exchange(srv.ws, [json.dumps({"type": "start", "pace": False}), json.dumps({"type": "end"})])
        assert [t["type"] for t in texts] == ["started", "done"] and code == 1000
        workers[0].join(10)
        assert not workers[0].is_alive()
    finally:
        srv.stop()


def test_a_second_client_beyond_max_sessions_is_told_busy(server, speech):
    from websockets.sync.client import connect

    with connect(server.ws, open_timeout=30) as first:
        first.send(json.dumps({"type": "start"}))
        first.send(pcm(speech[:8000]))
        assert json.loads(first.recv(timeout=30))["type"] == "started"
        texts, _, code = exchange(server.ws, [])
        assert texts == [dict(type="error", message="busy: 1 live sessions running, try again later")]
        assert code == 1013
    assert wait_idle(server)


def test_a_burst_beyond_max_pending_seconds_is_refused_with_an_error_at_stride_4(tiny_models, avatar, speech):
    log: list[str] = []
    srv = serve(tiny_models, avatar, log, max_pending_seconds=1.0)
    try:
        burst = pcm(speech[:32000])  # 2 s at once: more than the 1 s a session may hold
        texts, _, code = exchange(srv.ws, [json.dumps({"type": "start", "stride": 4}), burst])
        assert [t["type"] for t in texts] == ["started", "error"] and code == 1000
        assert texts[1]["message"].startswith("2.0 s of audio waiting (limit 1 s)")
        assert any("error: 2.0 s of audio waiting" in line for line in log)
    finally:
        srv.stop()


def test_a_session_that_fails_is_reported_with_one_line_and_closed(tiny_models, avatar, speech):
    def broken(index, start, faces):
        raise RuntimeError("the device went away")

    log: list[str] = []
    srv = serve(tiny_models, avatar, log, on_chunk=broken)
    try:
        texts, frames, code = exchange(srv.ws, [json.dumps({"type": "start", "stride": 8}), pcm(speech[:16000])])
        assert [t["type"] for t in texts] == ["started", "error"] and frames == 0 and code == 1011
        assert texts[1]["message"] == "live session failed: RuntimeError: the device went away"
        assert len(log) == 1 and log[0].startswith("live session 1 (127.0.0.1:")
        assert log[0].endswith("): error: live session failed: RuntimeError: the device went away")
        assert wait_idle(srv)
    finally:
        srv.stop()
