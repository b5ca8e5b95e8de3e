"""UNet validation by inference (lipsync_jax.train.validation): the hook called directly with the
tiny config, random UNet params drawn from shapes, 2 DDIM steps, a ~1 s downscaled demo clip
and the tiny random SyncNet; a faceless clip must give a ``val/error`` entry, not an exception."""

from __future__ import annotations

import math
import os

import jax.numpy as jnp
import pytest

from lipsync_jax.config_utils import load_config
from lipsync_jax.eval.sync_eval import load_syncnet
from lipsync_jax.models.unet3d import UNet3DConditionModel
from lipsync_jax.models.unet3d import abstract_params as unet_abstract_params
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.train.metrics import MetricsLogger, read_metrics
from lipsync_jax.train.validation import (
    METRIC_PREFIX,
    UNetValidator,
    ValidationSettings,
    error_metrics,
    make_validator,
    validation_video_path,
)
from lipsync_jax.tree_utils import random_params
from tests.helpers.clips import make_clip
from tests.helpers.paths import ROOT, TINY_CONFIG, asset_path

SYNC_FIELDS = ("sync_similarity_at_zero", "sync_best_offset", "sync_best_similarity", "sync_confidence")


def tiny_config(video):
    config = load_config(TINY_CONFIG)
    config.data.val_video_path = video
    config.data.val_audio_path = asset_path("demo1_audio.wav")
    config.run.val_max_seconds = 1.0
    return config


@pytest.fixture(scope="module")
def unet_params():
    config = load_config(TINY_CONFIG)
    model = UNet3DConditionModel(UNet3DConfig.from_dict(config.model.to_dict()), dtype=jnp.float32)
    return random_params(unet_abstract_params(model), seed=0)


def test_settings_from_tiny_config():
    settings = ValidationSettings.from_config(load_config(TINY_CONFIG), num_steps=2)
    assert settings.enabled is False  # tiny configs keep training tests fast
    assert settings.max_seconds == 2.0 and settings.num_steps == 2
    assert settings.video_path.endswith("demo1_video.mp4") and os.path.isfile(settings.video_path)
    full = ValidationSettings.from_config(load_config(os.path.join(ROOT, "configs", "unet", "stage2.py")))
    assert full.enabled is True and full.max_seconds == 10.0


@pytest.mark.integration
def test_validation_writes_video_and_sync_scores(tmp_path, unet_params):
    config = tiny_config(make_clip(tmp_path / "val.mp4", seconds=1, size="270:480"))
    syncnet = load_syncnet(config=os.path.join(ROOT, "configs", "syncnet", "tiny.py"), random_init=True)
    workdir = str(tmp_path / "run")
    metrics = UNetValidator(config, workdir, syncnet=syncnet, num_steps=2)(7, unet_params)
    assert "error" not in metrics, metrics
    video = validation_video_path(workdir, 7)
    assert video == os.path.join(workdir, "val", "step_7.mp4")
    assert os.path.isfile(video) and os.path.getsize(video) > 0
    for name in SYNC_FIELDS:
        assert math.isfinite(metrics[name]), (name, metrics)
    assert metrics["frames"] == 25
    # the loop logs these to metrics.jsonl
    logger = MetricsLogger(workdir, 10, progress=False)
    logger.log(7, metrics, prefix=METRIC_PREFIX)
    logger.close()
    record = read_metrics(workdir)[-1]
    assert record["step"] == 7 and all(math.isfinite(record["val/" + name]) for name in SYNC_FIELDS)


@pytest.mark.integration
def test_faceless_video_gives_val_error(tmp_path, unet_params):
    config = tiny_config(make_clip(tmp_path / "black.mp4", seconds=1, size="270:480", black=True))
    workdir = str(tmp_path / "run")
    metrics = UNetValidator(config, workdir, num_steps=2)(3, unet_params)  # must not raise
    assert set(metrics) == {"error"}
    assert "NoFaceError" in metrics["error"]
    assert not os.path.exists(validation_video_path(workdir, 3))
    logger = MetricsLogger(workdir, 10, progress=False)
    logger.log(3, metrics, prefix=METRIC_PREFIX)
    logger.close()
    assert read_metrics(workdir)[-1]["val/error"] == metrics["error"]


def test_error_metrics_names_the_exception():
    entry = error_metrics(FileNotFoundError("val.mp4: no such file\nmore detail"))
    assert entry == {"error": "FileNotFoundError: val.mp4: no such file"}


def test_make_validator_only_for_enabled_unet_runs(tmp_path):
    config = load_config(TINY_CONFIG)
    assert make_validator("unet", config, str(tmp_path), {}) is None  # val_inference False
    config.run.val_inference = True
    frozen = {"vae": {"w": jnp.ones((2,))}, "lpips": {"w": jnp.ones((2,))}}
    validator = make_validator("unet", config, str(tmp_path), frozen)
    assert isinstance(validator, UNetValidator) and set(validator.frozen) == {"vae"}
    assert make_validator("syncnet", config, str(tmp_path), frozen) is None
