"""The golden checker CLI reports every file and fails while anything fails or is missing."""

import glob
import os
import subprocess
import sys

import pytest

from lipsync_jax.golden.__main__ import main
from lipsync_jax.golden.core import compare_rel, rel_l2
from lipsync_jax.golden.registry import CHECK_MODULES, manifest_kind
from tests.helpers.paths import GOLDEN_DIR


def test_rel_l2_and_nan():
    assert rel_l2([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert abs(rel_l2([1.0, 0.0], [2.0, 0.0]) - 0.5) < 1e-12
    assert rel_l2([float("nan")], [1.0]) == float("inf")
    assert not compare_rel("k", "n", [1.0, 2.0], [1.0], 1e-4).passed  # shape mismatch fails


def test_every_golden_file_has_a_kind():
    for path in glob.glob(os.path.join(GOLDEN_DIR, "manifest_*.json")):
        name = os.path.basename(path)[len("manifest_"):-len(".json")]
        assert manifest_kind(name) in CHECK_MODULES, name


def test_unknown_file_is_an_error(tmp_path):
    assert main([str(tmp_path / "nope.npz")]) == 1


@pytest.mark.integration
def test_cli_reports_each_file_and_exit_code(tmp_path):
    # A cheap real fixture, a manifest and a non-fixture file (README is ignored).
    files = [os.path.join(GOLDEN_DIR, n) for n in ("ddim.npz", "manifest_whisper_tiny.json", "README.md")]
    proc = subprocess.run([sys.executable, "-m", "lipsync_jax.golden", *files], capture_output=True, text=True)
    lines = [line.split("#")[0].split() for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) >= 2, proc.stdout + proc.stderr
    assert {line[0] for line in lines} >= {"ddim", "whisper_audio"}
    assert all(line[4] in ("PASS", "FAIL", "MISSING", "ERROR") for line in lines)
    assert (proc.returncode == 0) == all(line[4] == "PASS" for line in lines)
