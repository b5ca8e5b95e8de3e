"""Golden checks for the evaluation networks: I3D (FVD) and HyperIQA (visual quality filter)."""

from __future__ import annotations

import jax
import numpy as np

from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_param_tree, compare_rel

TOL = 1e-4
FVD_TOL = 1e-6  # float64 arithmetic on given features (eigen/sqrtm roundoff only)


def _i3d_outputs(fixture: Fixture) -> dict[str, np.ndarray]:
    from lipsync_jax.convert.i3d import convert_state_dict
    from lipsync_jax.eval.fvd import frechet_distance
    from lipsync_jax.models.i3d import build

    params, report = convert_state_dict(fixture.weights_f32(), fixture.meta)
    report.raise_if_problems(f"{fixture.path} weights")
    model = build(fixture.meta)
    clips = np.asarray(fixture.inputs["clips"], np.float32) / 127.5 - 1.0  # (b, t, h, w, 3)
    logits, features = jax.jit(lambda p, x: model.apply({"params": p}, x))(params, clips)
    return {"logits": np.asarray(logits).transpose(0, 2, 1),  # (b, classes, t) as pytorch-i3d
            "features": np.asarray(features).transpose(0, 4, 1, 2, 3),  # NCTHW
            "fvd": np.float64(frechet_distance(fixture.inputs["feats_a"], fixture.inputs["feats_b"]))}


def _hyperiqa_outputs(fixture: Fixture) -> dict[str, np.ndarray]:
    from lipsync_jax.convert.hyperiqa import convert_state_dict
    from lipsync_jax.eval.quality import preprocess_frames
    from lipsync_jax.models.hyperiqa import build, target_net

    params, report = convert_state_dict(fixture.weights_f32(), fixture.meta)
    report.raise_if_problems(f"{fixture.path} weights")
    model = build(fixture.meta)

    @jax.jit
    def forward(p, images):
        weights = model.apply({"params": p}, images)
        return weights, target_net(weights)

    weights, scores = forward(params, preprocess_frames(fixture.inputs["frames"]))
    weights = {k: np.asarray(v) for k, v in weights.items()}
    return {"target_in_vec": weights["target_in_vec"][:, :, None, None],
            "target_fc1w": weights["target_fc1w"][:, :, :, None, None],
            "target_fc5b": weights["target_fc5b"],
            "scores": np.asarray(scores), "score": np.asarray(scores).mean()}


def check_fixture(fixture: Fixture) -> list[Comparison]:
    if fixture.kind == "i3d":
        ours = _i3d_outputs(fixture)
        tolerances = {"logits": TOL, "features": TOL, "fvd": FVD_TOL}
    elif fixture.kind == "hyperiqa":
        ours = _hyperiqa_outputs(fixture)
        tolerances = {name: TOL for name in ("target_in_vec", "target_fc1w", "target_fc5b", "scores", "score")}
    else:
        raise ValueError(f"check_eval_models: unknown kind {fixture.kind!r}")
    return [compare_rel(fixture.kind, name, ours[name], fixture.outputs[name], tol)
            for name, tol in tolerances.items() if name in fixture.outputs]


def check_manifest(manifest: dict) -> list[Comparison]:
    kind = manifest.get("kind", "")
    if kind == "i3d":
        from lipsync_jax.convert.i3d import convert_state_dict
        from lipsync_jax.models.i3d import abstract_params
    elif kind == "hyperiqa":
        from lipsync_jax.convert.hyperiqa import convert_state_dict
        from lipsync_jax.models.hyperiqa import abstract_params
    else:
        raise ValueError(f"check_eval_models: unknown manifest kind {kind!r}")
    from lipsync_jax.models.frozen_norm import count_weights

    _, report = convert_state_dict(manifest_state_dict(manifest), manifest.get("config"))
    ours_total = count_weights(abstract_params(manifest.get("config")))
    return compare_param_tree(kind, manifest["name"], report, int(manifest["total_params"]), ours_total)
