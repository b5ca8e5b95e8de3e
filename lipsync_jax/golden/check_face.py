"""Golden check for kind ``align_restore``: alignment, aligned crops, restore and mask.

The fixture's landmarks are the three anchors already, so no detector runs here.
"""

from __future__ import annotations

import numpy as np

from lipsync_jax.face.align import AlignTemplate, FaceAligner
from lipsync_jax.face.mask import load_fixed_mask
from lipsync_jax.face.restore import restore_face
from lipsync_jax.golden.core import Comparison, Fixture, compare_rel

KIND = "align_restore"
AFFINE_TOL = 1e-3  # absolute
MEAN_ABS_TOL = 1.0  # uint8 levels
FAR_PIXELS_TOL = 0.01  # fraction of pixels more than 3 levels off
MASK_TOL = 1e-4  # relative L2


def _max_abs(name: str, ours, ref, tol: float, detail: str = "max abs error") -> Comparison:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        return Comparison(KIND, name, None, tol, False, detail=f"shape {ours.shape} vs {ref.shape}")
    err = float(np.max(np.abs(ours - ref))) if ref.size else 0.0
    return Comparison(KIND, name, err, tol, err <= tol, detail=detail)


def _uint8_metrics(name: str, ours, ref) -> list[Comparison]:
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        return [Comparison(KIND, name, None, MEAN_ABS_TOL, False, detail=f"shape {ours.shape} vs {ref.shape}")]
    diff = np.abs(ours.astype(np.int16) - ref.astype(np.int16))
    mean = float(diff.mean())
    far = float(np.mean(diff > 3))
    return [Comparison(KIND, f"{name}/mean_abs", mean, MEAN_ABS_TOL, mean <= MEAN_ABS_TOL, detail="uint8 levels"),
            Comparison(KIND, f"{name}/beyond_3", far, FAR_PIXELS_TOL, far <= FAR_PIXELS_TOL,
                       detail="fraction of values more than 3 levels off")]


def check_fixture(fixture: Fixture) -> list[Comparison]:
    config, inputs, outputs = fixture.config, fixture.inputs, fixture.outputs
    template = AlignTemplate.for_resolution(int(config["resolution"]))
    results = [_max_abs("face_template", template.face_template, config["face_template"], AFFINE_TOL),
               _max_abs("face_size", template.face_size, config["face_size"], 0.0)]

    unsmoothed = FaceAligner(template.resolution, smooth=False)
    results.append(_max_abs("affine_no_smooth", unsmoothed.affine(inputs["landmarks3_frame0"]),
                            outputs["affine_no_smooth"], AFFINE_TOL))

    aligner = FaceAligner(template.resolution, smooth=True)  # frame0 then frame1: smoothing state carries
    affines = {}
    for frame_name in ("frame0", "frame1"):
        crop, affine = aligner.crop(inputs[frame_name], inputs[f"landmarks3_{frame_name}"])
        affines[frame_name] = affine
        results.append(_max_abs(f"affine_smooth_{frame_name}", affine, outputs[f"affine_smooth_{frame_name}"],
                                AFFINE_TOL))
        results += _uint8_metrics(f"aligned_face_{frame_name}", crop, outputs[f"aligned_face_{frame_name}"])

    pasted_face = np.transpose(inputs["pasted_face"], (1, 2, 0))  # (c, h, w) -> (h, w, c), in [-1, 1]
    restored = restore_face(inputs["frame0"], pasted_face, affines["frame0"])
    results += _uint8_metrics("restored_frame0", restored, outputs["restored_frame0"])

    for key, ref in outputs.items():
        if key.startswith("fixed_mask_"):
            resolution = int(key.rsplit("_", 1)[1])
            mask = np.transpose(load_fixed_mask(resolution), (2, 0, 1))  # (h, w, c) -> (c, h, w)
            results.append(compare_rel(KIND, key, mask, ref, MASK_TOL))
    return results
