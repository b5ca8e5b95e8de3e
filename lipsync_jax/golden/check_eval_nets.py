"""Golden checks for the LSE evaluation networks: the classic SyncNet (``lse_syncnet``: MFCC,
window embeddings, offset search) and the S3FD face detector (``s3fd``: head outputs, priors,
Detect, final boxes), plus their full-size manifests (exact parameter counts)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from lipsync_jax.convert import lse_syncnet as convert_lse
from lipsync_jax.convert import s3fd as convert_s3fd
from lipsync_jax.convert.rules import manifest_state_dict
from lipsync_jax.golden.core import Comparison, Fixture, compare_exact, compare_param_tree, compare_rel
from lipsync_jax.models import s3fd
from lipsync_jax.models.lse_syncnet import LSESyncNet, LSESyncNetConfig, abstract_params, learnable_param_count
from lipsync_jax.tree_utils import count_params

ARRAY_TOL = 1e-4
SCALAR_TOL = 1e-3
BOX_TOL = 1e-3  # absolute (normalised coordinates / pixels / scores)


def _compare_abs(kind: str, name: str, ours: Any, ref: Any, tol: float) -> Comparison:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Comparison(kind, name, None, tol, False, detail=f"shape {ours.shape} vs {ref.shape}")
    err = float(np.max(np.abs(ours - ref))) if ours.size else 0.0
    if not np.all(np.isfinite(ours)):
        err = float("inf")
    return Comparison(kind, name, err, tol, err <= tol, detail="max absolute difference")


def _lse_config(fixture: Fixture) -> LSESyncNetConfig:
    return LSESyncNetConfig.from_config({**fixture.config, "narrow_by": fixture.meta.get("narrow_by", 1)})


def _check_lse_syncnet(fixture: Fixture) -> list[Comparison]:
    from lipsync_jax.eval.lse_score import check_lengths, embed_windows, mfcc_columns, sync_distances

    config = _lse_config(fixture)
    params, report = convert_lse.convert_state_dict(fixture.weights_f32(), config)
    report.raise_if_problems(f"{fixture.path} weights")
    frames, audio = fixture.inputs["frames"], fixture.inputs["audio"]
    columns = mfcc_columns(audio)
    count = check_lengths(frames.shape[0], audio.shape[0], fixture.path)
    lip, aud, feats = embed_windows(LSESyncNet(config), params, frames, columns, count, batch_size=16)
    score = sync_distances(lip, aud, int(fixture.meta.get("vshift", 15)))
    out, kind = fixture.outputs, "lse_syncnet"
    return [compare_rel(kind, "mfcc", columns, out["mfcc"], ARRAY_TOL),
            compare_rel(kind, "lip_embeds", lip, out["lip_embeds"], ARRAY_TOL),
            compare_rel(kind, "audio_embeds", aud, out["audio_embeds"], ARRAY_TOL),
            compare_rel(kind, "lip_cnn_features", feats, out["lip_cnn_features"], ARRAY_TOL),
            compare_rel(kind, "mean_dists", score.mean_dists, out["mean_dists"], ARRAY_TOL),
            compare_exact(kind, "av_offset", score.av_offset, out["av_offset"]),
            compare_rel(kind, "min_dist", score.min_dist, out["min_dist"], SCALAR_TOL),
            compare_rel(kind, "conf", score.conf, out["conf"], SCALAR_TOL)]


def _check_s3fd(fixture: Fixture) -> list[Comparison]:
    config = s3fd.S3FDConfig(int(fixture.meta.get("narrow_by", 1)))
    params, report = convert_s3fd.convert_state_dict(fixture.weights_f32(), config)
    report.raise_if_problems(f"{fixture.path} weights")
    image = fixture.inputs["image"]
    x = s3fd.preprocess(image, float(fixture.meta["scale"]))
    loc, conf = jax.jit(s3fd.S3FDNet(config).apply)({"params": params}, x[None])
    loc, conf = np.asarray(loc[0]), np.asarray(conf[0])
    priors = s3fd.prior_boxes(*x.shape[:2])
    settings = fixture.meta.get("detect", {})
    detections = s3fd.detect(loc, conf, priors, top_k=int(settings.get("top_k", 750)),
                             nms_thresh=float(settings.get("nms_thresh", 0.3)),
                             conf_thresh=float(settings.get("conf_thresh", 0.05)),
                             nms_top_k=int(settings.get("nms_top_k", 5000)))
    height, width = image.shape[:2]
    boxes = s3fd.faces_from_scores(s3fd.decode_boxes(loc, priors), conf[:, 1], (width, height),
                                   float(fixture.meta["conf_th"]))
    out, kind = fixture.outputs, "s3fd"
    return [compare_rel(kind, "loc", loc, out["loc"], ARRAY_TOL),
            compare_rel(kind, "conf", conf, out["conf"], ARRAY_TOL),
            compare_rel(kind, "priors", priors, out["priors"], ARRAY_TOL),
            _compare_abs(kind, "detections", detections[None], out["detections"], BOX_TOL),
            _compare_abs(kind, "bboxes", boxes, out["bboxes"], BOX_TOL)]


def check_fixture(fixture: Fixture) -> list[Comparison]:
    if fixture.kind == "lse_syncnet":
        return _check_lse_syncnet(fixture)
    if fixture.kind == "s3fd":
        return _check_s3fd(fixture)
    raise ValueError(f"{fixture.path}: check_eval_nets handles lse_syncnet/s3fd fixtures, not {fixture.kind!r}")


def check_manifest(manifest: dict[str, Any]) -> list[Comparison]:
    state_dict, expected = manifest_state_dict(manifest), int(manifest["total_params"])
    if manifest.get("kind") == "s3fd" or manifest["name"].startswith("s3fd"):
        _, report = convert_s3fd.convert_state_dict(state_dict)
        return compare_param_tree("s3fd", manifest["name"], report, expected, count_params(s3fd.abstract_params()))
    _, report = convert_lse.convert_state_dict(state_dict)
    comparisons = compare_param_tree("lse_syncnet", manifest["name"], report, expected,
                                     learnable_param_count(abstract_params()))
    comparisons[1].detail += " (BatchNorm running statistics not counted, as in PyTorch)"
    return comparisons
