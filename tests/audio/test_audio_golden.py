"""Audio front end against the golden fixtures (whisper_audio, syncnet_mel) and the tiny.pt manifest."""

import numpy as np
import pytest

from lipsync_jax.golden import check_audio
from lipsync_jax.golden.core import load_fixture, load_manifest
from tests.helpers.paths import golden_path


def _assert_all_pass(comparisons):
    assert comparisons, "no comparisons made"
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, "\n".join(failed)


@pytest.mark.parametrize("name", ["whisper_audio.npz", "syncnet_mel.npz"])
def test_fixture_matches(name):
    comparisons = check_audio.check_fixture(load_fixture(golden_path(name)))
    _assert_all_pass(comparisons)
    for c in comparisons:  # the README tolerances, asserted here too
        assert c.value is not None and (c.value == 0.0 if c.tolerance == 0.0 else c.value <= 1e-4), c.line()


def test_whisper_manifest_converts_completely():
    manifest = load_manifest(golden_path("manifest_whisper_tiny.json"))
    comparisons = check_audio.check_manifest(manifest)
    _assert_all_pass(comparisons)
    names = {c.name.split("/")[-1] for c in comparisons}
    assert {"converted_tree", "param_count", "manifest_total"} <= names


def test_fixture_chunk_count_follows_latentsync_loop():
    fixture = load_fixture(golden_path("whisper_audio.npz"))
    rows = fixture.outputs["layer_embeddings"].shape[0]
    # frames i = 0 .. floor(rows / 2) have centre 2i <= rows, plus the first one past the end
    assert fixture.outputs["chunk_indices"].shape[0] == rows // 2 + 2
    assert np.all(fixture.outputs["chunk_indices"] <= rows - 1)
