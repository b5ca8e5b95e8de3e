"""The live server as a user meets it (slow): the real ``python -m lipsync_jax.serving.live_server``
process on loopback (tiny random model) says its weights are random, answers bad messages over a
WebSocket with an error and a normal close, serves a stride-8 session, and on SIGTERM / Ctrl-C
(real signals: during the compile and with a session streaming) exits within 5 s with 143 / 130,
leaving no avatar frame store behind; and the page in headless Chromium (stand-in engine, stride
4) shows the random-weights warning and the session's own latency median, p95 and achieved fps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.helpers.browser import Browser, require_chromium
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("clip") / "avatar.mp4", seconds=1.2)


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory):
    """The test session's XLA cache (conftest.py): programs test_stream.py compiled are reused."""
    return os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("xla"))


class LiveProcess:
    """The live server in a child process (SIGINT at its default, as from a terminal) with its own
    temp folder; its output lines are collected by reader threads."""

    def __init__(self, clip, compile_cache, tmp, *extra):
        from tests.helpers.net import free_port

        self.port = free_port()
        self.tmpdir = str(tmp / "tmpdir")
        os.makedirs(self.tmpdir, exist_ok=True)
        env = dict(os.environ, TMPDIR=self.tmpdir, JAX_COMPILATION_CACHE_DIR=compile_cache)
        args = [sys.executable, "-m", "lipsync_jax.serving.live_server", f"--config={TINY_CONFIG}", "--random_init",
                "--avatar", clip, "--port", str(self.port), "--compile_cache", compile_cache, *extra]
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=self._read, args=(stream, lines), daemon=True)
                        for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()
        self.ws = f"ws://127.0.0.1:{self.port}/ws"

    @staticmethod
    def _read(stream, lines):
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_line(self, text: str, timeout: float = 600.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(text in line for line in self.out + self.err):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no {text!r} line; stdout {self.out[-20:]}, stderr {self.err[-20:]}")

    def wait_serving(self, timeout: float = 900.0) -> None:
        """Until the server answers on its port (the "live:" line comes just before it listens)."""
        import httpx

        self.wait_line("live: http://", timeout)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/status", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError(f"the server does not answer on port {self.port}; stderr {self.err[-20:]}")

    def stop(self, signum) -> tuple[int, float]:
        """Send ``signum``; (exit status, seconds until the process ended)."""
        sent = time.perf_counter()
        self.proc.send_signal(signum)
        code = self.proc.wait(30)
        took = time.perf_counter() - sent
        for reader in self.readers:
            reader.join(5)
        return code, took

    def leftovers(self) -> list[str]:
        return sorted(os.listdir(self.tmpdir))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def streaming_client(url, seconds: float = 30.0):
    """A client streaming silence-free audio at real time in a thread (until the server goes)."""
    from websockets.sync.client import connect

    received = []

    def run():
        try:
            with connect(url, open_timeout=30) as ws:
                ws.send(json.dumps({"type": "start", "format": "int16"}))
                tone = (np.sin(np.arange(int(16000 * seconds)) * 0.05) * 8000).astype("<i2")
                for start in range(0, len(tone), 640):
                    ws.send(tone[start:start + 640].tobytes())
                    time.sleep(0.04)
                    try:
                        while True:
                            received.append(ws.recv(timeout=0))
                    except TimeoutError:
                        pass
        except Exception:  # noqa: BLE001 - the server was stopped under it
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, received


def test_sigterm_during_the_compile_exits_at_once_without_a_frame_store(clip, compile_cache, tmp_path):
    from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING

    server = LiveProcess(clip, compile_cache, tmp_path, "--steps", "3", "--stride", "8")
    try:
        server.wait_line("compiling the device program")
        assert any(name.startswith("frames_") for name in server.leftovers())  # the avatar's store exists now
        code, took = server.stop(signal.SIGTERM)
    finally:
        server.kill()
    assert code == 143 and took < 5.0, (code, took, server.err[-10:])
    assert RANDOM_WEIGHTS_WARNING in server.err
    assert "interrupted (SIGTERM): server stopped, avatar frame store deleted" in server.err
    assert server.leftovers() == [] and not any("Traceback" in line for line in server.err)


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "Ctrl-C"])
def test_real_server_answers_bad_messages_serves_and_stops_clean(clip, compile_cache, tmp_path, signum, status):
    from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING
    from tests.helpers.live import exchange, pcm

    server = LiveProcess(clip, compile_cache, tmp_path, "--steps", "2", "--stride", "8", "--strides", "16")
    try:
        server.wait_serving()
        assert RANDOM_WEIGHTS_WARNING in server.err  # the log says so (the page: test_page_shows_...)
        assert any("stride 8:" in line and "device time per window" in line for line in server.out)
        for messages, expected in ((["not json"], "not JSON"), (['{"type": "start", "seed": "x"}'], "seed 'x'"),
                                   (['{"type": "start", "seed": 1180591620717411303424}'], "0..4294967295"),
                                   (['{"type": "start"}', b"\x00" * 3], "int16 audio needs a multiple of 2"),
                                   (['{"type": "start", "format": "float32"}', np.full(8, np.nan, "<f4").tobytes()],
                                    "NaN or infinite")):
            texts, _, code = exchange(server.ws, messages)
            kinds = [t["type"] for t in texts]  # a start that was fine is answered "started" first
            assert code == 1000 and kinds in (["error"], ["started", "error"]) and expected in texts[-1]["message"]
        speech = np.zeros(16000, np.float32)
        texts, frames, code = exchange(server.ws, ['{"type": "start", "pace": false}', pcm(speech),
                                                   '{"type": "end"}'], timeout=300)
        assert texts[0]["stride"] == 8 and texts[-1]["type"] == "done" and frames == 25 and code == 1000
        client, received = streaming_client(server.ws)
        deadline = time.time() + 300
        while time.time() < deadline and not any(isinstance(m, bytes) for m in received):
            time.sleep(0.1)
        assert any(isinstance(m, bytes) for m in received)  # a session is streaming frames now
        code, took = server.stop(signum)
        client.join(10)
    finally:
        server.kill()
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    assert code == status and took < 5.0, (code, took, server.err[-10:])
    assert f"interrupted ({name}): server stopped, avatar frame store deleted" in server.err
    assert not any("DeprecationWarning" in line for line in server.out + server.err)  # websockets-sansio
    errors = [line for line in server.err if ": error: " in line]
    assert len(errors) == 5 and not any("Traceback" in line for line in server.out + server.err), server.err
    assert server.leftovers() == []  # the frame store (and anything else the server made in its temp folder)


def test_page_shows_the_warning_and_the_sessions_own_figures(tmp_path):
    import cv2

    from lipsync_jax.live import LiveAvatar, StreamOptions, warm_up
    from lipsync_jax.media import ffmpeg_exe
    from lipsync_jax.pipeline import Sampling
    from lipsync_jax.serving.live_server import create_app
    from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING
    from tests.helpers.engine import SEED, build_tiny_models
    from tests.helpers.live import Server
    from tests.helpers.stand_in import StandInEngine

    require_chromium()
    sample = str(tmp_path / "sample.wav")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path("demo1_audio.wav"), "-t", "3.0",
                    "-ac", "1", "-ar", "16000", sample], check=True)
    models = build_tiny_models()
    engine = StandInEngine(models, device_seconds=0.03, encoder_seconds=0.005)
    strides = {}
    for stride in (16, 8, 4):
        strides[stride] = warm_up(engine, StreamOptions(sampling=Sampling(steps=2), stride=stride), repeats=2)
    with LiveAvatar.prepare(models, make_clip(tmp_path / "avatar.mp4", seconds=1.2)) as avatar:
        app = create_app(engine, avatar, options=StreamOptions(sampling=Sampling(steps=2), seed=SEED),
                         strides=strides, sample_audio=sample, max_side=480, random_weights=True, log=lambda _: None)
        server = Server(app)
        try:
            with Browser(server.url + "/?autoplay=sample&stride=4", width=900, height=760,
                         profile=str(tmp_path / "profile")) as page:
                state = page.wait_for("window.liveState", 120, until=lambda s: s.get("done") or s.get("error"))
                time.sleep(0.3)
                shown = page.eval("Object.fromEntries(['median', 'p95', 'achieved', 'first', 'stride_used', "
                                      "'split_audio', 'split_look_ahead', 'split_compute', 'split_pacing', 'warning']"
                                      ".map((id) => [id, document.getElementById(id).textContent]))")
                warning_visible = page.eval("!document.getElementById('warning').hidden")
                png = page.screenshot()
        finally:
            server.stop()
    assert not state.get("error") and state["done"] and state["frames"] == 75, state
    metrics = app.state.live["last"]["metrics"]  # the session's own figures, server side
    assert shown["median"] == f"{metrics['steady_latency_median']:.3f}"
    assert shown["p95"] == f"{metrics['steady_latency_p95']:.3f}"
    assert shown["achieved"] == f"{metrics['achieved_fps']:.2f}"
    assert shown["first"] == f"{metrics['first_frame_latency']:.3f}"
    for part in ("audio", "look_ahead", "compute", "pacing"):
        assert shown[f"split_{part}"] == f"{metrics['split'][part]:.3f}"
    assert shown["stride_used"] == "4" and state["started"]["overlap"] == 12
    assert warning_visible and shown["warning"] == RANDOM_WEIGHTS_WARNING
    shot = tmp_path / "live.png"
    shot.write_bytes(png)
    image = cv2.imread(str(shot))
    assert image is not None and image[150:700, 20:300].std() > 10  # a picture in the frame area
    if os.environ.get("LIPSYNC_UPDATE_DOCS"):
        import shutil

        shutil.copy(shot, os.path.join(ROOT, "docs", "live.png"))
