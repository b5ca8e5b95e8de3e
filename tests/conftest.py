"""Shared test fixtures: paths to the bundled golden fixtures and media (copied from
../shared so a plain clone can run the tests)."""

import atexit
import os
import shutil
import tempfile

import pytest

# One persistent XLA compilation cache for the whole test session, set before JAX is imported:
# the pytest process and the infer.py / train.py subprocesses it starts (they inherit the
# environment) compile each tiny program once per session instead of once per test module.
# Tests of the cache itself pass their own folders (or --nocompile_cache). Removed at exit.
if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="lipsync_jax_tests_xla_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _SESSION_XLA_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, _SESSION_XLA_CACHE, True)

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
GOLDEN_DIR = os.path.join(DATA_DIR, "golden")
ASSETS_DIR = os.path.join(DATA_DIR, "assets")


def golden_path(name: str) -> str:
    return os.path.join(GOLDEN_DIR, name)


def asset_path(name: str) -> str:
    return os.path.join(ASSETS_DIR, name)


@pytest.fixture
def golden():
    return golden_path


@pytest.fixture
def asset():
    return asset_path


# ---------------------------------------------------------------- multi-person clips (face tracks)
TWO_PEOPLE_SECONDS = 2
TWO_PEOPLE_HALF_WIDTH, TWO_PEOPLE_HEIGHT = 240, 426  # each demo scaled from 1080x1920


def _encode_clip(args, path):
    import subprocess

    from lipsync_jax.media import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args, "-an", "-c:v", "libx264", "-preset",
                    "ultrafast", "-crf", "18", "-pix_fmt", "yuv420p", str(path)], check=True)


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory):
    """Two 2 s clips: demo1 alone (240x426) and demo1 | demo2 side by side (480x426)."""
    folder = tmp_path_factory.mktemp("face_tracks")
    one, two = folder / "one_person.mp4", folder / "two_people.mp4"
    demo1, demo2 = asset_path("demo1_video.mp4"), asset_path("demo2_video.mp4")
    scale = f"scale={TWO_PEOPLE_HALF_WIDTH}:{TWO_PEOPLE_HEIGHT}"
    seconds = str(TWO_PEOPLE_SECONDS)
    _encode_clip(["-t", seconds, "-i", demo1, "-vf", scale], one)
    _encode_clip(["-t", seconds, "-i", demo1, "-t", seconds, "-i", demo2, "-filter_complex",
                  f"[0:v]{scale}[l];[1:v]{scale}[r];[l][r]hstack=inputs=2[v]", "-map", "[v]"], two)
    return {"one": str(one), "two": str(two), "folder": folder}
