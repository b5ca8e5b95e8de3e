"""FVD: I3D against the golden fixture, the float64 Frechet distance, clip preparation and the
eval/fvd.py command line end to end on short demo clips (random, narrowed I3D)."""

import importlib.util
import json
import os
import subprocess

import numpy as np
import pytest

from lipsync_jax.eval.fvd import FVD_NUM_FRAMES, FVD_SIZE, FVDError, frechet_distance, load_i3d, read_fvd_clip
from lipsync_jax.golden.check_eval_models import check_fixture, check_manifest
from lipsync_jax.golden.core import load_fixture, load_manifest
from tests.helpers.paths import ASSETS_DIR, ROOT, golden_path


def _load_script():
    spec = importlib.util.spec_from_file_location("eval_fvd_script", os.path.join(ROOT, "eval", "fvd.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration
def test_i3d_matches_golden_fixture_and_manifest():
    results = check_fixture(load_fixture(golden_path("i3d_tiny.npz")))
    results += check_manifest(load_manifest(golden_path("manifest_i3d_kinetics400.json")))
    assert {r.name for r in results} >= {"logits", "features", "fvd", "i3d_kinetics400/param_count"}
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


def test_frechet_distance_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(0)
    n, d = 4000, 5
    scale_a, scale_b = rng.uniform(0.5, 2.0, d), rng.uniform(0.5, 2.0, d)
    a = rng.standard_normal((n, d)) * scale_a + 1.0
    b = rng.standard_normal((n, d)) * scale_b
    # with (nearly) diagonal covariances: ||mu_a - mu_b||^2 + sum (sqrt(var_a) - sqrt(var_b))^2
    var_a, var_b = a.var(axis=0, ddof=1), b.var(axis=0, ddof=1)
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=2e-2)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    assert abs(frechet_distance(a, a)) < 1e-8


def test_frechet_distance_rejects_unusable_sets():
    with pytest.raises(FVDError, match="at least 2"):
        frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))
    with pytest.raises(FVDError, match="sizes differ"):
        frechet_distance(np.ones((3, 4)) * np.arange(3)[:, None], np.ones((3, 5)) * np.arange(3)[:, None])


@pytest.fixture(scope="module")
def demo_clip_dirs(tmp_path_factory):
    """gen/ and ref/ with two 40-frame 240x426 cuts of demo1 each; gen/ also has a 30-frame cut
    (too short: FVD reads frames 20..35)."""
    from lipsync_jax.media import ffmpeg_exe

    root = tmp_path_factory.mktemp("fvd")
    cuts = {"gen/a.mp4": (0.0, 40), "gen/b.mp4": (2.0, 40), "gen/short.mp4": (4.0, 30),
            "ref/c.mp4": (5.0, 40), "ref/d.mp4": (7.0, 40)}
    for name, (start, frames) in cuts.items():
        os.makedirs(root / os.path.dirname(name), exist_ok=True)
        subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-ss", str(start), "-i",
                        os.path.join(ASSETS_DIR, "demo1_video.mp4"), "-frames:v", str(frames), "-vf", "scale=240:426",
                        "-an", "-c:v", "libx264", "-preset", "ultrafast", str(root / name)], check=True)
    return root


@pytest.mark.integration
def test_read_fvd_clip_shape_and_errors(demo_clip_dirs):
    clip = read_fvd_clip(str(demo_clip_dirs / "gen" / "a.mp4"))
    assert clip.shape == (FVD_NUM_FRAMES, FVD_SIZE, FVD_SIZE, 3) and clip.dtype == np.uint8
    assert clip.std() > 10  # real face pixels, not padding
    with pytest.raises(FVDError, match="too short"):
        read_fvd_clip(str(demo_clip_dirs / "gen" / "short.mp4"))


@pytest.mark.integration
def test_i3d_features_batched_with_static_shapes():
    i3d = load_i3d(random_init=True, config={"narrow_by": 8}, batch_size=2)
    clips = np.random.default_rng(1).integers(0, 256, (3, 16, 224, 224, 3), dtype=np.uint8)
    logits = i3d.logits(clips)  # batches of 2: the last one padded
    assert logits.shape == (3, 400) and logits.dtype == np.float64 and np.all(np.isfinite(logits))
    assert np.abs(logits[0] - logits[2]).max() > 0  # random weights still see the input
    # clip 2 alone in a padded batch == clip 2 beside clip 1 in a full one
    np.testing.assert_allclose(logits[2], i3d.logits(clips[1:])[1], rtol=1e-5, atol=1e-6)
    assert i3d._forward._cache_size() == 1  # one compilation for full and padded batches


@pytest.mark.integration
def test_fvd_script_end_to_end(demo_clip_dirs, tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "fvd.json"
    code = script.main(["--generated", str(demo_clip_dirs / "gen"), "--reference", str(demo_clip_dirs / "ref"),
                        "--random_init", "--narrow_by", "8", "--batch_size", "2", "--json", str(out), "--noprogress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "MEANINGLESS" in captured.err and "FVD:" in captured.out
    result = json.loads(out.read_text())
    assert result["random_init"] is True and result["features"] == "i3d_logits"
    assert result["num_generated"] == 2 and result["num_reference"] == 2
    assert np.isfinite(result["fvd"]) and result["fvd"] > -1e-6
    (short,) = result["errors"]
    assert short.endswith("short.mp4") and "too short" in result["errors"][short]


def test_fvd_script_bad_input_is_one_line(tmp_path, capsys):
    script = _load_script()
    code = script.main(["--generated", str(tmp_path / "missing"), "--reference", str(tmp_path),
                        "--random_init", "--narrow_by", "8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and "missing" in err[-1]


@pytest.mark.integration
def test_convert_cli_then_load_i3d_matches_fixture(tmp_path):
    """weights file -> `python -m lipsync_jax.convert i3d` -> load_i3d(folder) -> the fixture's logits."""
    from lipsync_jax.convert.__main__ import main as convert_main
    from lipsync_jax.convert.safetensors_io import save_safetensors
    from lipsync_jax.golden.core import rel_l2

    fixture = load_fixture(golden_path("i3d_tiny.npz"))
    save_safetensors(fixture.weights_f32(), tmp_path / "i3d.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({k: fixture.meta[k] for k in ("narrow_by", "num_classes")}))
    assert convert_main(["i3d", "--src", str(tmp_path / "i3d.safetensors"), "--config", str(tmp_path / "config.json"),
                         "--dst", str(tmp_path / "converted")]) == 0
    i3d = load_i3d(str(tmp_path / "converted"), batch_size=2)
    logits = i3d.logits(fixture.inputs["clips"])
    assert rel_l2(logits, fixture.outputs["logits"][:, :, 0]) < 1e-4
