"""Golden checks for the stage-2 losses: ``lpips`` and ``trepa`` fixtures, and the
``lpips_vgg`` / ``videomaev2_giant`` manifests."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.convert import lpips as lpips_converter
from lipsync_jax.convert import videomae as videomae_converter
from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_param_tree, compare_rel
from lipsync_jax.losses import lpips as lpips_loss
from lipsync_jax.losses.lpips import LPIPS, learnable_param_count
from lipsync_jax.losses.trepa import TREPALoss
from lipsync_jax.models import videomae
from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2
from lipsync_jax.tree_utils import count_params

FORWARD_TOL = 1e-4
TREPA_LOSS_TOL = 1e-3


def _frames(u8: np.ndarray, channel_axis: int = 1) -> jnp.ndarray:
    """uint8 channels-first -> float32 channels-last in [-1, 1]."""
    x = np.moveaxis(u8, channel_axis, -1).astype(np.float32) / 127.5 - 1.0
    return jnp.asarray(x)


def _check_lpips(fixture: Fixture) -> list[Comparison]:
    params, report = lpips_converter.convert_state_dict(fixture.weights, fixture.config, dtype=np.float32)
    report.raise_if_problems(f"{fixture.path} weights")
    pred, target = _frames(fixture.inputs["pred_uint8"]), _frames(fixture.inputs["gt_uint8"])
    h = pred.shape[1]
    model = LPIPS.from_config(fixture.config)
    per_sample = jax.jit(model.apply)({"params": params}, pred[:, h // 2:], target[:, h // 2:])
    ref = fixture.outputs["lpips_per_sample"]
    return [compare_rel("lpips", "lpips_per_sample", np.reshape(per_sample, ref.shape), ref, FORWARD_TOL),
            compare_rel("lpips", "lpips_mean", jnp.mean(per_sample), fixture.outputs["lpips_mean"], FORWARD_TOL)]


def _check_trepa(fixture: Fixture) -> list[Comparison]:
    config = VideoMAEConfig.from_config(fixture.config)
    params, report = videomae_converter.convert_state_dict(fixture.weights, config, dtype=np.float32)
    report.raise_if_problems(f"{fixture.path} weights")
    loss = TREPALoss(VideoMAEv2(config))
    fake = _frames(fixture.inputs["fake_uint8"])  # (b, f, h, w, 3)
    real = _frames(fixture.inputs["real_uint8"])
    features = jax.jit(loss.features)
    out = fixture.outputs
    return [compare_rel("trepa", "feats_fake", features(params, fake), out["feats_fake"], FORWARD_TOL),
            compare_rel("trepa", "feats_real", features(params, real), out["feats_real"], FORWARD_TOL),
            compare_rel("trepa", "loss", jax.jit(loss)(params, fake, real), out["loss"], TREPA_LOSS_TOL)]


def check_fixture(fixture: Fixture) -> list[Comparison]:
    if fixture.kind == "lpips":
        return _check_lpips(fixture)
    if fixture.kind == "trepa":
        return _check_trepa(fixture)
    raise ValueError(f"{fixture.path}: check_losses handles lpips/trepa fixtures, not {fixture.kind!r}")


def _skipped_numel(manifest: dict[str, Any], keys: list[str]) -> int:
    return sum(math.prod(manifest["state_dict"][k]) for k in keys)


def check_manifest(manifest: dict[str, Any]) -> list[Comparison]:
    name, state_dict = manifest["name"], manifest_state_dict(manifest)
    expected = int(manifest["total_params"])
    if name.startswith("lpips_"):
        model = LPIPS.from_config(manifest.get("config", {}))
        _, report = lpips_converter.convert_state_dict(state_dict, manifest.get("config", {}))
        shapes = lpips_loss.abstract_params(model)
        comparisons = compare_param_tree("lpips", name, report, expected, learnable_param_count(shapes))
        comparisons[1].detail += " (scaling-layer buffers not counted, lins.K duplicates skipped)"
        return comparisons
    if name.startswith("videomaev2_"):
        config = VideoMAEConfig.from_config(manifest["config"])
        _, report = videomae_converter.convert_state_dict(state_dict, config)
        ours = count_params(videomae.abstract_params(VideoMAEv2(config)))
        head = _skipped_numel(manifest, [k for k in report.skipped if k.startswith("head.")])
        comparisons = compare_param_tree("trepa", name, report, expected, ours + head)
        comparisons[1].detail = (f"ours {ours:,} + skipped classifier head {head:,} = {ours + head:,} "
                                 f"vs manifest {expected:,}")
        return comparisons
    raise ValueError(f"check_losses has no manifest check for {name!r}")

