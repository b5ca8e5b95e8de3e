"""HyperIQA: golden fixture and manifest, LatentSync's pre-processing, and the clip quality score."""

import os
import subprocess

import numpy as np
import pytest

from lipsync_jax.eval.quality import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    QualityError,
    clip_quality,
    load_hyperiqa,
    passes_quality,
    preprocess_frames,
    quality_frame_indices,
    read_quality_frames,
    video_quality,
)
from lipsync_jax.golden.check_eval_models import check_fixture, check_manifest
from lipsync_jax.golden.core import load_fixture, load_manifest
from tests.helpers.paths import ASSETS_DIR, golden_path


@pytest.mark.integration
def test_hyperiqa_matches_golden_fixture_and_manifest():
    results = check_fixture(load_fixture(golden_path("hyperiqa_tiny.npz")))
    results += check_manifest(load_manifest(golden_path("manifest_hyperiqa_koniq.json")))
    assert {r.name for r in results} >= {"target_in_vec", "target_fc1w", "scores", "score",
                                         "hyperiqa_koniq/param_count"}
    assert all(r.passed for r in results), "\n".join(r.line() for r in results)


def test_quality_frame_indices_first_middle_last():
    assert quality_frame_indices(10) == (0, 5, 9)
    assert quality_frame_indices(1) == (0, 0, 0)
    with pytest.raises(QualityError):
        quality_frame_indices(0)


def test_preprocess_centre_crop_and_normalisation():
    frames = np.zeros((1, 256, 260, 3), np.uint8)
    frames[0, 16, 18] = 255  # the crop's top-left pixel: offsets round((256-224)/2)=16, round(36/2)=18
    x = preprocess_frames(frames)
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0, 0], (1.0 - IMAGENET_MEAN) / IMAGENET_STD, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1, 1], -IMAGENET_MEAN / IMAGENET_STD, rtol=1e-6)
    with pytest.raises(QualityError, match="smaller"):
        preprocess_frames(np.zeros((1, 200, 256, 3), np.uint8))


def test_passes_quality_threshold():
    assert passes_quality(40.0) and passes_quality(73.2)
    assert not passes_quality(39.99) and not passes_quality(float("nan"))
    assert passes_quality(30.0, min_quality=25.0)


@pytest.fixture(scope="module")
def scorer():
    return load_hyperiqa(random_init=True, config={"narrow_by": 4}, batch_size=3)


@pytest.mark.integration
def test_scores_shape_finite_deterministic_and_batch_independent(scorer):
    frames = np.random.default_rng(0).integers(0, 256, (4, 256, 256, 3), dtype=np.uint8)
    scores = scorer.frame_scores(frames)  # a full batch of 3 and a padded one
    assert scores.shape == (4,) and np.all(np.isfinite(scores))
    np.testing.assert_array_equal(scores, scorer.frame_scores(frames))
    np.testing.assert_allclose(scores[3:], scorer.frame_scores(frames[3:]), rtol=1e-5)
    assert scorer._forward._cache_size() == 1
    assert clip_quality(scorer, frames) == pytest.approx(float(scores[[0, 2, 3]].mean()), rel=1e-5)


def test_video_quality_reads_first_middle_last(scorer, tmp_path):
    from lipsync_jax.media import ffmpeg_exe

    video = tmp_path / "clip.mp4"
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", os.path.join(ASSETS_DIR, "demo1_video.mp4"),
                    "-frames:v", "9", "-vf", "scale=256:256", "-an", "-c:v", "libx264", "-preset", "ultrafast",
                    "-qp", "0", str(video)], check=True)
    frames = read_quality_frames(str(video))
    assert frames.shape == (3, 256, 256, 3)
    assert not np.array_equal(frames[0], frames[2])
    score = video_quality(scorer, str(video))
    assert np.isfinite(score) and score == pytest.approx(float(scorer.frame_scores(frames).mean()), rel=1e-6)
    with pytest.raises(QualityError, match="no such video"):
        video_quality(scorer, str(tmp_path / "missing.mp4"))


def test_load_hyperiqa_from_weights_file_matches_fixture(tmp_path):
    """An original-style weights file is converted on the fly by load_hyperiqa."""
    from lipsync_jax.convert.safetensors_io import save_safetensors

    fixture = load_fixture(golden_path("hyperiqa_tiny.npz"))
    save_safetensors(fixture.weights_f32(), tmp_path / "koniq.safetensors")
    scorer = load_hyperiqa(str(tmp_path / "koniq.safetensors"), config={"narrow_by": fixture.meta["narrow_by"]})
    frames = fixture.inputs["frames"]
    np.testing.assert_allclose(scorer.frame_scores(frames), fixture.outputs["scores"], rtol=1e-4, atol=1e-4)
    assert clip_quality(scorer, frames) == pytest.approx(float(fixture.outputs["score"]), rel=1e-4)
    assert passes_quality(clip_quality(scorer, frames), fixture.meta["threshold"]) == (
        float(fixture.outputs["score"]) >= fixture.meta["threshold"])
