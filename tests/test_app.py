"""The web app as a user meets it: ``python app.py`` on a free loopback port with the tiny random
config, called through its API with gradio_client on the demo media, and (slow) the page loaded
in headless Chromium.

One server per module (its first request compiles the device program; the second must compile
nothing, checked with the server's XLA compile counter, not with wall-clock time). The server
tests are marked slow (start + first compile take minutes on 2 shared cores; CI runs them); the
queue test needs no model and runs by default.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import asset_path
from lipsync_jax.audio import load_audio
from lipsync_jax.media import probe_video

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "unet", "tiny.py")
MAX_SECONDS = 0.64  # the server's per-request limit: 16 frames, one chunk
STEPS = 1
START_TIMEOUT = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    port = free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False",
               GRADIO_TEMP_DIR=str(work / "gradio"), PYTHONUNBUFFERED="1")
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), f"--config={TINY}", "--random_init",
                             "--host=127.0.0.1", f"--port={port}", f"--max_seconds={MAX_SECONDS}",
                             f"--work_dir={work / 'requests'}", f"--compile_cache={work / 'xla'}"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    (work / "requests").mkdir()
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"app.py exited {proc.returncode}:\n{(work / 'server.log').read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise AssertionError("app.py did not start:\n" + (work / "server.log").read_text()[-3000:])
        time.sleep(1.0)
    yield {"url": url, "work": work, "proc": proc}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def client(server):
    from gradio_client import Client

    return Client(server["url"], verbose=False)


def video_path(answer) -> str:
    return answer["video"] if isinstance(answer, dict) else answer


def stats(client) -> dict:
    answer = client.predict(api_name="/stats")
    return answer if isinstance(answer, dict) else json.loads(answer)


@pytest.mark.slow  # the server's start and first compile: 1-4 min on 2 shared cores
def test_api_lipsyncs_the_demo_and_second_request_compiles_nothing(client, server):
    from gradio_client import handle_file

    video = asset_path("demo1_video.mp4")
    answer, status = client.predict(handle_file(video), handle_file(asset_path("demo1_audio.wav")), 1.5, STEPS, 7,
                                    "", 0, api_name="/lipsync")
    out = video_path(answer)
    info, source = probe_video(out), probe_video(video)
    assert (info.width, info.height) == (source.width, source.height)  # frame size of the input
    assert info.fps == 25.0 and info.num_frames == 16  # --max_seconds=0.64 at 25 fps
    assert info.audio_codec == "aac"
    assert abs(len(load_audio(out)) / 16000 - MAX_SECONDS) < 0.06
    assert "16 frames" in status and "RANDOM" in status
    first = stats(client)
    assert first["jobs_done"] == 1 and first["compiles"] > 0

    answer2, status2 = client.predict(handle_file(video), handle_file(asset_path("demo2_audio.wav")), 1.5, STEPS,
                                      8, "", 0, api_name="/lipsync")
    assert probe_video(video_path(answer2)).num_frames == 16
    second = stats(client)
    assert second["jobs_done"] == 2
    assert second["compiles"] == first["compiles"], (first, second)  # nothing compiled for the second request
    assert "compiled 0 programs" in status2
    assert os.listdir(server["work"] / "requests") == []  # per-request temp folders are gone


@pytest.mark.slow  # the server's start and first compile: 1-4 min on 2 shared cores
def test_bad_file_gets_a_message_not_a_traceback(client, server, tmp_path):
    from gradio_client import handle_file

    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video at all" * 50)
    with pytest.raises(Exception) as caught:
        client.predict(handle_file(str(bad)), handle_file(asset_path("demo1_audio.wav")), 1.5, STEPS, 1, "", 0,
                       api_name="/lipsync")
    message = str(caught.value)
    assert "broken.mp4" in message and "video" in message, message
    assert "Traceback" not in message and "/tmp" not in message, message  # upload paths are shortened
    assert stats(client)["failures"] >= 1
    assert os.listdir(server["work"] / "requests") == []


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.slow
def test_page_renders_in_headless_chromium(server, tmp_path):
    browser = chromium()
    if browser is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing under CI (.ci/run installs it)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1280,1100", "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(common + ["--dump-dom", server["url"]], capture_output=True, text=True, timeout=180)
    assert dom.returncode == 0, dom.stderr[-2000:]
    for needle in ("input_video", "input_audio", "run_button", "Guidance scale", "Lip sync"):
        assert needle in dom.stdout, needle
    shot = tmp_path / "app.png"
    proc = subprocess.run(common + [f"--screenshot={shot}", server["url"]], capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0 and shot.exists() and shot.stat().st_size > 20_000, proc.stderr[-2000:]
    if os.environ.get("LIPSYNC_APP_SCREENSHOT"):  # refresh docs/app.png: LIPSYNC_APP_SCREENSHOT=docs/app.png
        shutil.copy(shot, os.environ["LIPSYNC_APP_SCREENSHOT"])


class SlowFakeService:
    """Stands in for LipsyncService in the queue test: each job holds the device for a while."""

    random_weights = True

    def __init__(self):
        import threading

        from lipsync_jax.pipeline import JobDefaults

        self.defaults = JobDefaults()
        self.release = threading.Event()
        self.lock = threading.Lock()

    @property
    def busy(self):
        return self.lock.locked()

    def parse(self, video, audio, output, values):
        from lipsync_jax.pipeline.job import parse_request

        return parse_request(video, audio, output, values, self.defaults)

    def run(self, request, progress=False):
        with self.lock:
            self.release.wait(60)
            raise ValueError(f"video {request.job.video}: fake service")

    def stats(self):
        return {}


def test_full_queue_answers_busy_at_once(tmp_path):
    """One job runs, --max_queue=1 waits, the next request is refused at once (no model needed)."""
    from gradio_client import Client, handle_file

    from lipsync_jax.serving import webapp

    fake = SlowFakeService()
    demo = webapp.build_blocks(webapp.LipsyncApp(fake, work_dir=str(tmp_path)), max_queue=1)
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        small_video, small_audio = tmp_path.parent / "v.mp4", tmp_path.parent / "a.wav"  # never read
        small_video.write_bytes(b"v" * 100)
        small_audio.write_bytes(b"a" * 100)
        args = (handle_file(str(small_video)), handle_file(str(small_audio)), 1.5, 1, 1, "", 0)
        running = client.submit(*args, api_name="/lipsync")
        deadline = time.time() + 60
        while not fake.busy and time.time() < deadline:
            time.sleep(0.2)
        waiting = client.submit(*args, api_name="/lipsync")
        time.sleep(2.0)
        with pytest.raises(Exception, match="[Qq]ueue is full"):
            client.predict(*args, api_name="/lipsync")
        fake.release.set()
        for job in (running, waiting):
            with pytest.raises(Exception, match="fake service"):
                job.result(timeout=60)
    finally:
        fake.release.set()
        demo.close()
    assert os.listdir(tmp_path) == []  # every request's temp folder removed
