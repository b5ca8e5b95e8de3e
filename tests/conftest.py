"""Fixtures shared across test folders, the session's XLA compilation cache and the tiers: a test
without an integration, slow, heavy, gpu or tpu mark is a unit test (the default run); gpu and tpu
tests are skipped, with the reason, where jax has no such device."""

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


NOT_UNIT = ("integration", "slow", "heavy", "gpu", "tpu")
DEVICE_MARKS = ("gpu", "tpu")


@pytest.hookimpl(tryfirst=True)  # before -m selects by mark
def pytest_collection_modifyitems(config, items):
    for item in items:
        if not any(item.get_closest_marker(name) for name in NOT_UNIT):
            item.add_marker(pytest.mark.unit)
    wanted = {name for name in DEVICE_MARKS if any(item.get_closest_marker(name) for item in items)}
    if not wanted:
        return
    import jax

    platforms = {device.platform for device in jax.devices()}
    for item in items:
        for name in wanted:
            if item.get_closest_marker(name) and name not in platforms:
                found = ", ".join(sorted(platforms))
                item.add_marker(pytest.mark.skip(reason=f"needs a {name.upper()}; jax sees only {found}"))


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
