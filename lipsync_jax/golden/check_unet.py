"""Golden checks for the UNet: the tiny stage1/stage2 fixtures (float32, NCFHW -> channels-last)
and the full-size stage1/stage2 manifests (complete conversion, exact parameter count)."""

from __future__ import annotations

import os

import jax
import numpy as np

from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.convert.unet import convert_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_param_tree, compare_rel
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.tree_utils import count_params

TOL = 1e-4


def fixture_inputs(fixture: Fixture) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sample (b, f, h, w, c), timesteps (b,), audio_embeds (b, f, 50, 384)) in our layout."""
    sample = np.asarray(fixture.inputs["sample"], np.float32).transpose(0, 2, 3, 4, 1)  # b c f h w -> b f h w c
    return sample, np.asarray(fixture.inputs["timesteps"]), np.asarray(fixture.inputs["encoder_hidden_states"],
                                                                       np.float32)


def run_fixture(fixture: Fixture, dtype=np.float32) -> np.ndarray:
    """Our output for the fixture's inputs, (b, c, f, h, w) like the reference."""
    config = UNet3DConfig.from_dict(fixture.config)
    params, _ = convert_state_dict(fixture.weights_f32(), config, dtype=np.float32,
                                            what=f"{fixture.path} weights")
    model = UNet3DConditionModel(config, dtype=dtype)
    out = jax.jit(model.apply)({"params": params}, *fixture_inputs(fixture))
    return np.asarray(out).transpose(0, 4, 1, 2, 3)


def check_fixture(fixture: Fixture) -> list[Comparison]:
    name = os.path.splitext(os.path.basename(fixture.path))[0]
    return [compare_rel("unet", f"{name}/sample", run_fixture(fixture), fixture.outputs["sample"], TOL)]


def check_manifest(manifest: dict) -> list[Comparison]:
    config = UNet3DConfig.from_dict(manifest["config"])
    _, report = convert_state_dict(manifest_state_dict(manifest), config, strict=False)
    ours_total = count_params(abstract_params(UNet3DConditionModel(config)))
    return compare_param_tree("unet", manifest["name"], report, int(manifest["total_params"]), ours_total)
