"""Fixtures shared across test folders, and the session's XLA compilation cache."""

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


@pytest.fixture(scope="session")
def demo_clips(tmp_path_factory):
    """Two 2 s clips: demo1 alone (240x426) and demo1 | demo2 side by side (480x426)."""
    from tests.helpers.clips import two_people_clips

    return two_people_clips(tmp_path_factory.mktemp("face_tracks"))


@pytest.fixture(scope="module")
def tiny_models():
    """configs/unet/tiny.py's models with random weights (seed 0), built once per test module."""
    from tests.helpers.engine import build_tiny_models

    return build_tiny_models()
