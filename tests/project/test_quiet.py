"""The terminal (lipsync_jax/quiet.py): third-party start-up chatter is dropped, our warnings and
errors stay, ``verbose`` brings everything back. The fd-level parts run in subprocesses (they
touch the process's real stderr)."""

import logging
import os
import subprocess
import sys

import pytest

from lipsync_jax import quiet
from lipsync_jax.serving.service import RANDOM_WEIGHTS_WARNING
from tests.helpers.paths import ROOT

ASSETS = os.path.join(ROOT, "tests", "data", "assets")

# Parts of the lines a new user saw in the first README command and that must not show.
NOISE_LINES = (
    "Unable to initialize backend 'tpu'",
    "Created TensorFlow Lite XNNPACK delegate for CPU",
    "All log messages before absl::InitializeLog()",
    "inference_feedback_manager",
    "landmark_projection_calculator",
)
NATIVE_SAMPLE = (
    b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
    b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    b"W0000 00:00:1796403002.987609   23571 inference_feedback_manager.cc:114] Feedback manager requires a "
    b"model with a single signature inference. Disabling support for feedback tensors.\n")


def _run(code: str, timeout: float = 300.0) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, timeout=timeout)


@pytest.fixture
def restore_logging():
    levels = {name: logging.getLogger(name).level for name in quiet.QUIET_LOGGERS}
    state = dict(quiet._state)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    quiet._state.update(state)


def test_quiet_sets_library_levels_and_keeps_the_users_environment(restore_logging):
    environ = {}
    assert quiet.configure_terminal(environ=environ) == {"TF_CPP_MIN_LOG_LEVEL": "1"}
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "1"}
    assert all(logging.getLogger(n).getEffectiveLevel() == logging.WARNING for n in quiet.QUIET_LOGGERS)
    user = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    assert quiet.configure_terminal(environ=user) == {} and user == {"TF_CPP_MIN_LOG_LEVEL": "0"}

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    backend = logging.getLogger("jax._src.xla_bridge")
    backend.addHandler(handler)
    try:
        backend.info("Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so")
        backend.warning("a GPU is present but no CUDA jaxlib")  # JAX's warnings still show
    finally:
        backend.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["a GPU is present but no CUDA jaxlib"]


def test_verbose_changes_nothing_and_turns_the_native_filter_off(restore_logging):
    quiet.configure_terminal()
    environ = {}
    assert quiet.configure_terminal(verbose=True, environ=environ) == {} and environ == {}
    assert all(logging.getLogger(n).level == logging.NOTSET for n in quiet.QUIET_LOGGERS)
    assert quiet._state["native_filter"] is False


@pytest.mark.integration
def test_native_filter_drops_exactly_the_library_lines():
    code = f"""
import os, sys, threading
from lipsync_jax.quiet import native_log_filter
noise = {NATIVE_SAMPLE!r}
with native_log_filter():
    os.write(2, noise)
    os.write(2, b"\\rFinding faces: 0frame [00:00, ?frame/s]")  # a progress bar's partial line
    os.write(2, b"W0000 00:00:1796403005.072028   23571 landmark_projection_calculator.cc:186] Using NORM_RECT\\n")
    print("WARNING: --random_init: RANDOM weights", file=sys.stderr)  # ours
    t = threading.Thread(target=os.write, args=(2, b"E0000 00:00:1.0   7 real_error.cc:1] disk full\\n"))
    t.start(); t.join()
    os.write(2, noise[:30])
    os.write(2, noise[30:])  # a noise line written in two pieces
os.write(2, b"after\\n")
"""
    result = _run(code, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stderr == (b"\rFinding faces: 0frame [00:00, ?frame/s]WARNING: --random_init: RANDOM weights\n"
                             b"E0000 00:00:1.0   7 real_error.cc:1] disk full\nafter\n")


@pytest.mark.integration
def test_native_filter_is_off_when_verbose():
    code = f"""
import os
from lipsync_jax.quiet import configure_terminal, native_log_filter
configure_terminal(verbose=True)
with native_log_filter():
    os.write(2, {NATIVE_SAMPLE!r})
"""
    result = _run(code, timeout=60)
    assert result.returncode == 0 and result.stderr == NATIVE_SAMPLE


MEDIAPIPE_RUN = """
import sys, warnings
from lipsync_jax.quiet import configure_terminal
configure_terminal(verbose={verbose})
from lipsync_jax.face.landmarks import MediaPipeLandmarker
from lipsync_jax.media.video import read_frames
landmarker = MediaPipeLandmarker()
for _, frame in zip(range(2), read_frames("tests/data/assets/demo1_video.mp4", 25.0)):
    assert landmarker(frame) is not None
warnings.warn("our own warning")
print("error: ours too", file=sys.stderr)
"""


@pytest.mark.integration
def test_mediapipe_start_up_is_quiet_and_verbose_brings_it_back():
    quiet_run = _run(MEDIAPIPE_RUN.format(verbose=False))
    assert quiet_run.returncode == 0, quiet_run.stderr.decode()
    stderr = quiet_run.stderr.decode()
    assert not [line for line in NOISE_LINES if line in stderr], stderr
    assert "UserWarning: our own warning" in stderr and "error: ours too" in stderr
    verbose_run = _run(MEDIAPIPE_RUN.format(verbose=True))  # the lines exist: the check above can fail
    assert verbose_run.returncode == 0
    assert "inference_feedback_manager" in verbose_run.stderr.decode()


@pytest.mark.slow
def test_first_readme_command_prints_none_of_the_library_lines(tmp_path):
    """The README's first command (tiny config, random weights, 1 s): none of the lines a new user
    saw, and our own random-weights warning is still there."""
    output = tmp_path / "out.mp4"
    argv = [sys.executable, "infer.py", "--config=configs/unet/tiny.py", "--random_init",
            "--video", os.path.join(ASSETS, "demo1_video.mp4"), "--audio", os.path.join(ASSETS, "demo1_audio.wav"),
            "--output", str(output), "--max_seconds", "1", "--noprogress"]
    result = subprocess.run(argv, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True,
                            timeout=1500)
    stderr = result.stderr.decode()
    assert result.returncode == 0 and output.is_file(), stderr[-3000:]
    assert not [line for line in NOISE_LINES if line in stderr], stderr
    assert RANDOM_WEIGHTS_WARNING in stderr
