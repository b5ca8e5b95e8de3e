"""Fixture loading and comparison metrics shared by every golden check.

A fixture (``*.npz``) holds ``meta`` (JSON: ``kind``, ``config``, notes), ``w/<key>`` weights
under their original PyTorch names, ``in/<name>`` inputs and ``out/<name>`` expected outputs.
A manifest (``manifest_*.json``) lists every key/shape of a full-size official checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np


@dataclasses.dataclass
class Comparison:
    """One compared output: ``kind name value tolerance PASS|FAIL|MISSING``."""

    kind: str
    name: str
    value: float | None  # the metric (relative L2 error unless the check says otherwise)
    tolerance: float | None
    passed: bool
    status: str | None = None  # overrides PASS/FAIL, e.g. "MISSING" or "ERROR"
    detail: str = ""

    def line(self) -> str:
        value = "-" if self.value is None else f"{self.value:.3e}"
        tol = "-" if self.tolerance is None else f"{self.tolerance:.0e}"
        status = self.status or ("PASS" if self.passed else "FAIL")
        text = f"{self.kind} {self.name} {value} {tol} {status}"
        return f"{text}  # {self.detail}" if self.detail else text


@dataclasses.dataclass
class Fixture:
    path: str
    kind: str
    meta: dict[str, Any]
    weights: dict[str, np.ndarray]  # original PyTorch key -> array (float16 params, float32 buffers)
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    def weights_f32(self) -> dict[str, np.ndarray]:
        """Weights as float32 (the fixtures were run in float32; fp16 storage is exact)."""
        return {k: np.asarray(v, np.float32) if np.issubdtype(v.dtype, np.floating) else v
                for k, v in self.weights.items()}


def load_fixture(path: str) -> Fixture:
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    if "meta" not in arrays:
        raise ValueError(f"{path}: not a golden fixture (no 'meta' entry)")
    meta = json.loads(str(arrays.pop("meta")))

    def group(prefix: str) -> dict[str, np.ndarray]:
        return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}

    return Fixture(path=path, kind=meta.get("kind", "?"), meta=meta, weights=group("w/"),
                   inputs=group("in/"), outputs=group("out/"))


def load_manifest(path: str) -> dict[str, Any]:
    """A manifest dict with ``state_dict`` (key -> shape list) and ``total_params``; ``name``
    is the file stem without ``manifest_`` (e.g. ``unet_stage2``)."""
    with open(path) as f:
        manifest = json.load(f)
    stem = os.path.splitext(os.path.basename(path))[0]
    manifest["name"] = stem[len("manifest_"):] if stem.startswith("manifest_") else stem
    return manifest


def rel_l2(ours: Any, ref: Any) -> float:
    """``||ours - ref|| / ||ref||`` in float64; NaN anywhere in ``ours`` gives ``inf``."""
    ours = np.asarray(ours, np.float64)
    ref = np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
        raise ValueError(f"shape mismatch: ours {ours.shape} vs reference {ref.shape}")
    if not np.all(np.isfinite(ours)):
        return float("inf")
    denom = np.linalg.norm(ref)
    num = np.linalg.norm(ours - ref)
    return float(num / denom) if denom > 0 else float(num)


def compare_rel(kind: str, name: str, ours: Any, ref: Any, tol: float) -> Comparison:
    try:
        err = rel_l2(ours, ref)
    except ValueError as e:
        return Comparison(kind, name, None, tol, False, detail=str(e))
    return Comparison(kind, name, err, tol, err <= tol)


def compare_exact(kind: str, name: str, ours: Any, ref: Any) -> Comparison:
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
        return Comparison(kind, name, None, 0.0, False, detail=f"shape {ours.shape} vs {ref.shape}")
    mismatches = int(np.sum(ours != ref))
    return Comparison(kind, name, float(mismatches), 0.0, mismatches == 0, detail="mismatching entries")


def compare_param_tree(kind: str, name: str, report: Any, expected_total: int, ours_total: int) -> list[Comparison]:
    """Standard manifest result: conversion completeness plus the exact parameter count.

    ``report`` is a ``lipsync_jax.convert.ConversionReport`` (missing/unexpected/mismatched).
    """
    problems = report.problem_count()
    complete = Comparison(kind, f"{name}/converted_tree", float(problems), 0.0, problems == 0,
                          detail=report.summary())
    count = Comparison(kind, f"{name}/param_count", float(abs(ours_total - expected_total)), 0.0,
                       ours_total == expected_total,
                       detail=f"ours {ours_total:,} vs manifest {expected_total:,}")
    return [complete, count]
