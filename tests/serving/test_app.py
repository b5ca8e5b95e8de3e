"""The web app as a user meets it: ``python app.py`` on a free loopback port with the tiny random
config, called through its API with gradio_client on the demo media, and (slow) the page loaded
in headless Chromium.

One server per module (its first request compiles the device program; the second must compile
nothing, checked with the server's XLA compile counter, not with wall-clock time). The server
tests are marked slow (the server's start and first compile; CI runs them); the queue test needs
no model and runs in the integration tier.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from lipsync_jax.audio import load_audio
from lipsync_jax.media import ffmpeg_exe, probe_video
from tests.helpers.net import free_port
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

pytestmark = pytest.mark.integration

MAX_SECONDS = 0.64  # the server's per-request limit: 16 frames, one chunk
STEPS = 1
MAX_UPLOAD_MB = 8  # the demo media are 5-7 MB
RESULT_TTL = 15  # seconds a request's uploads and result stay
START_TIMEOUT = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    work = tmp_path_factory.mktemp("app")
    port = free_port()
    (work / "tmp").mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(work / "tmp"),
               GRADIO_TEMP_DIR=str(work / "gradio"), PYTHONUNBUFFERED="1")
    log = open(work / "server.log", "w")
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "app.py"), f"--config={TINY_CONFIG}", "--random_init",
                             "--host=127.0.0.1", f"--port={port}", f"--max_seconds={MAX_SECONDS}",
                             f"--work_dir={work / 'requests'}", f"--compile_cache={work / 'xla'}",
                             f"--max_upload_mb={MAX_UPLOAD_MB}", f"--result_ttl={RESULT_TTL}",
                             f"--config.run.inference_steps={STEPS}"],  # the page's default: the API's program
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
    yield {"url": url, "work": work, "proc": proc, "started": time.time()}
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


@pytest.mark.slow  # the server's start and first compile
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
    assert "random weights" in (server["work"] / "server.log").read_text()  # and in the server's log
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


@pytest.mark.slow  # the server's start and first compile
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


@pytest.mark.slow
def test_page_in_headless_chromium(server, tmp_path):
    """What a person sees (1280x900 window): the examples show their first frame, a portrait upload
    keeps the button in the window, a video is accepted as the audio, the progress bar moves."""
    import cv2

    from tests.helpers.browser import Browser, require_chromium

    require_chromium()
    with Browser(server["url"], width=1280, height=900) as page:
        page.wait_for("document.querySelector('#run_button') !== null", 120)
        for needle in ("Guidance scale", "Lip sync", "RANDOM".lower()):
            assert needle.lower() in page.eval("document.body.innerText.toLowerCase()"), needle
        page.wait_for("Array.from(document.querySelectorAll('video')).filter(v => v.readyState >= 2 && "
                      "v.videoWidth > 0).length >= 2", 120)  # the examples' thumbnails decoded
        box = page.eval("(() => { const v = Array.from(document.querySelectorAll('video')).find(v => v.readyState "
                        ">= 2); v.scrollIntoView({block: 'center'}); const r = v.getBoundingClientRect(); "
                        "return [r.left, r.top, r.width, r.height]; })()")
        time.sleep(0.5)
        shot = tmp_path / "examples.png"
        shot.write_bytes(page.screenshot())
        x, y, w, h = (int(round(v)) for v in box)
        crop = cv2.imread(str(shot))[y + 2:y + h - 2, x + 2:x + w - 2]
        assert crop.size and crop.std() > 10, (box, float(crop.std()) if crop.size else None)  # a picture, not blank

        page.eval("window.scrollTo(0, 0)")
        page.upload("#input_video input[type=file]", asset_path("demo1_video.mp4"))  # 1080x1920: portrait
        page.wait_for("document.querySelector('#input_video video') !== null", 60)
        page.upload("#input_audio input[type=file]", asset_path("demo2_video.mp4"))  # a video as the audio
        page.wait_for("document.querySelector('#input_audio').innerText.includes('demo2_video.mp4')", 60)
        time.sleep(1.0)
        assert "error" not in page.eval("document.body.innerText.toLowerCase()")
        page.eval("window.scrollTo(0, 0)")
        bottom = page.eval("document.querySelector('#run_button').getBoundingClientRect().bottom")
        assert bottom <= 900, bottom  # the button stays inside the window
        if os.environ.get("LIPSYNC_APP_SCREENSHOT"):  # refresh docs/app.png: LIPSYNC_APP_SCREENSHOT=docs/app.png
            Path(os.environ["LIPSYNC_APP_SCREENSHOT"]).write_bytes(page.screenshot())

        page.eval("document.querySelector('#run_button').click()")
        shown, deadline = [], time.time() + 600
        while time.time() < deadline:
            texts = page.eval("Array.from(document.querySelectorAll('.progress-level-inner')).map(e => e.innerText)")
            shown += [float(m) for t in texts for m in re.findall(r"([0-9.]+)%", t)]
            if page.eval("document.querySelector('#status textarea')?.value || ''"):
                break
            time.sleep(0.1)
        status = page.eval("document.querySelector('#status textarea').value")
    assert "16 frames" in status, status  # the job ran with demo2's sound track as the audio
    rising = sorted({v for v in shown if v > 0})
    assert len(rising) >= 3, shown  # the bar moved through at least three values above 0%


BAD_VALUES = [({"guidance": float("nan")}, "guidance nan: must be a finite number"),
              ({"guidance": 1.55}, "guidance 1.55: use at most 1 decimals"),
              ({"steps": 500}, "steps 500: must be a whole number in 1..50"),
              ({"seed": float("nan")}, "seed nan: must be a whole number in 0..4294967295"),
              ({"seed": 7.6}, "seed 7.6: must be a whole number in 0..4294967295"),  # refused, not rounded
              ({"seed": 2 ** 70}, "seed 1180591620717411303424: must be a whole number in 0..4294967295"),
              ({"max_seconds": -1}, "max_seconds -1: must be a finite number >= 0.04"),
              ({"max_seconds": float("nan")}, "max_seconds nan: must be a finite number >= 0.04")]


def raw_call(url: str, files: list[str], values: list) -> tuple[str, str]:
    """The API called over raw HTTP as any client can (NaN included): upload the files, post the
    call, read its event stream; returns (event, data) of the last event."""
    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        uploaded = http.post("gradio_api/upload", files=[("files", open(f, "rb")) for f in files]).json()
        data = [{"path": p, "meta": {"_type": "gradio.FileData"}} for p in uploaded] + values
        body = json.dumps({"data": data})  # json.dumps writes NaN as NaN, as a careless client would
        event_id = http.post("gradio_api/call/lipsync", content=body,
                             headers={"Content-Type": "application/json"}).json()["event_id"]
        text = http.get(f"gradio_api/call/lipsync/{event_id}").text
    events = re.findall(r"event: (\w+)\ndata: (.*)", text)
    return events[-1] if events else ("", text)


@pytest.mark.slow
@pytest.mark.parametrize("values, message", BAD_VALUES)
def test_bad_values_are_refused_with_one_line_before_any_work(client, server, values, message):
    before = stats(client)
    args = {"guidance": 1.5, "steps": STEPS, "seed": 7, "face": "", "max_seconds": 0, **values}
    event, data = raw_call(server["url"], [asset_path("demo1_video.mp4"), asset_path("demo1_audio.wav")],
                           [args["guidance"], args["steps"], args["seed"], args["face"], args["max_seconds"],
                            "ddim", 0, 0])
    assert event == "error" and message in data and "internal error" not in data, (event, data)
    assert "Traceback" not in (server["work"] / "server.log").read_text()
    after = stats(client)
    assert after["compiles"] == before["compiles"] and after["jobs_done"] == before["jobs_done"]


@pytest.mark.slow
def test_uploads_over_the_limit_are_refused_and_requests_leave_nothing_after_their_time(client, server, tmp_path):
    from gradio_client import handle_file

    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom((MAX_UPLOAD_MB + 1) * 2 ** 20))
    with pytest.raises(Exception, match="(?i)size"):
        client.predict(handle_file(str(big)), handle_file(asset_path("demo1_audio.wav")), 1.5, STEPS, 1, "", 0,
                       api_name="/lipsync")
    speech = tmp_path / "speech.wav"  # not one of the page's examples (their copies stay while it serves)
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path("demo1_audio.wav"), "-t", "1.0",
                    str(speech)], check=True)
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(open(asset_path("demo1_video.mp4"), "rb").read())
    client.predict(handle_file(str(clip)), handle_file(str(speech)), 1.5, STEPS, 3, "", 0, api_name="/lipsync")

    def request_files():
        return [os.path.join(d, f) for d, _, files in os.walk(server["work"] / "gradio") for f in files
                if f in ("clip.mp4", "speech.wav", "lipsync.mp4") or f.startswith("tmp")]

    uploads = request_files()
    assert any(p.endswith("clip.mp4") for p in uploads)  # kept for the client for a while ...
    deadline = time.time() + 4 * RESULT_TTL
    while time.time() < deadline and uploads:
        time.sleep(1.0)
        uploads = request_files()
    assert uploads == []  # ... then the uploads and the result are gone
    assert os.listdir(server["work"] / "requests") == []


@pytest.mark.slow  # the module's last server test: it stops the server
def test_sigterm_mid_job_exits_within_seconds_and_leaves_nothing(client, server):
    from gradio_client import handle_file

    job = client.submit(handle_file(asset_path("demo2_video.mp4")), handle_file(asset_path("demo2_audio.wav")), 1.5,
                        STEPS, 5, "", 0, api_name="/lipsync")
    deadline = time.time() + 120
    while not stats(client)["busy"] and time.time() < deadline:
        time.sleep(0.1)
    assert stats(client)["busy"]
    begin = time.time()
    server["proc"].send_signal(signal.SIGTERM)
    code = server["proc"].wait(30)
    assert time.time() - begin < 5.0 and code == 143, (time.time() - begin, code)
    log = (server["work"] / "server.log").read_text()
    assert "interrupted (SIGTERM)" in log and "Traceback" not in log, log[-3000:]
    leftovers = [os.path.join(d, f) for folder in ("gradio", "tmp", "requests")
                 for d, _, files in os.walk(server["work"] / folder) for f in files]
    assert leftovers == [] and os.listdir(server["work"] / "tmp") == [], leftovers
    del job


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

    def run(self, request, progress=False, on_progress=None):
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
