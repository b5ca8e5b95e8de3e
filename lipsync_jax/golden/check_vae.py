"""Golden checks for the VAE: the tiny fixture (float32) and the sd-vae-ft-mse manifest."""

from __future__ import annotations

import jax
import numpy as np

from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.convert.vae import convert_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_param_tree, compare_rel
from lipsync_jax.models.vae import AutoencoderKL, abstract_params
from lipsync_jax.tree_utils import count_params

TOL = 1e-4


def run_fixture(fixture: Fixture) -> dict[str, np.ndarray]:
    """Our outputs for the fixture's input, NCHW like the reference."""
    params, report = convert_state_dict(fixture.weights_f32(), fixture.config)
    report.raise_if_problems(f"{fixture.path} weights")
    model = AutoencoderKL.from_config(fixture.config)
    images = np.asarray(fixture.inputs["image"], np.float32).transpose(0, 2, 3, 1)  # (b, h, w, c)

    @jax.jit
    def forward(p, x):
        variables = {"params": p}
        mean, logvar = model.apply(variables, x, method=AutoencoderKL.encode)
        return mean, logvar, model.apply(variables, mean, method=AutoencoderKL.decode)

    mean, logvar, decoded = forward(params, images)
    to_nchw = lambda a: np.asarray(a).transpose(0, 3, 1, 2)  # noqa: E731
    return {"latent_mean": to_nchw(mean), "latent_logvar": to_nchw(logvar), "decoded": to_nchw(decoded)}


def check_fixture(fixture: Fixture) -> list[Comparison]:
    ours = run_fixture(fixture)
    return [compare_rel("vae", name, ours[name], fixture.outputs[name], TOL)
            for name in ("latent_mean", "latent_logvar", "decoded")]


def check_manifest(manifest: dict) -> list[Comparison]:
    model = AutoencoderKL.from_config(manifest["config"])
    _, report = convert_state_dict(manifest_state_dict(manifest), manifest["config"])
    ours_total = count_params(abstract_params(model))
    return compare_param_tree("vae", manifest["name"], report, int(manifest["total_params"]), ours_total)
