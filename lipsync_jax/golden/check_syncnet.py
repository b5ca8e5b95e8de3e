"""Golden checks for StableSyncNet: the tiny fixture (float32) and the full-size manifests."""

from __future__ import annotations

import jax
import numpy as np

from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.convert.syncnet import convert_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_param_tree, compare_rel
from lipsync_jax.losses.sync import sync_loss
from lipsync_jax.models.syncnet import StableSyncNet, abstract_params
from lipsync_jax.tree_utils import count_params

TOL = 1e-4


def run_fixture(fixture: Fixture) -> dict[str, np.ndarray]:
    params, report = convert_state_dict(fixture.weights_f32(), fixture.config)
    report.raise_if_problems(f"{fixture.path} weights")
    model = StableSyncNet.from_config(fixture.config)
    # fixture inputs are float16 (exact); the reference ran in float32
    images = np.asarray(fixture.inputs["image_sequences"], np.float32).transpose(0, 2, 3, 1)  # (b, h, w, 48)
    audio = np.asarray(fixture.inputs["audio_sequences"], np.float32).transpose(0, 2, 3, 1)  # (b, 80, 52, 1)

    @jax.jit
    def forward(p, x, a):
        vision_embeds, audio_embeds = model.apply({"params": p}, x, a)
        return vision_embeds, audio_embeds, sync_loss(vision_embeds, audio_embeds)

    vision_embeds, audio_embeds, loss = forward(params, images, audio)
    return {"vision_embeds": np.asarray(vision_embeds), "audio_embeds": np.asarray(audio_embeds),
            "cosine_loss": np.asarray(loss).reshape(fixture.outputs["cosine_loss"].shape),
            "cosine_loss_mean": np.asarray(loss).mean()}


def check_fixture(fixture: Fixture) -> list[Comparison]:
    ours = run_fixture(fixture)
    return [compare_rel("syncnet", name, ours[name], fixture.outputs[name], TOL)
            for name in ("vision_embeds", "audio_embeds", "cosine_loss", "cosine_loss_mean")
            if name in fixture.outputs]


def check_manifest(manifest: dict) -> list[Comparison]:
    model = StableSyncNet.from_config(manifest["config"])
    _, report = convert_state_dict(manifest_state_dict(manifest), manifest["config"])
    ours_total = count_params(abstract_params(model))
    return compare_param_tree("syncnet", manifest["name"], report, int(manifest["total_params"]), ours_total)
