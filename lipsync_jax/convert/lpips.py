"""LPIPS(vgg) weights: torchvision's VGG16 ImageNet state dict + lpips' ``weights/v0.1/vgg.pth``.

Accepted sources:
  * two files, ``vgg16.pth`` (``features.N.weight/bias``, ``classifier.*`` is skipped) and the lpips
    lin file (``linK.model.1.weight``), via ``convert_files`` or ``convert_file("a.pth,b.pth")``;
  * one combined lpips ``state_dict()`` (``net.sliceK.N.*``, ``linK.*``, ``lins.K.*`` duplicates,
    ``scaling_layer.*`` buffers), via ``convert_file``.
The scaling-layer buffers come from the file when present, else lpips' constants.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lipsync_jax.convert.rules import ConversionError, ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.losses.lpips import LPIPS, SCALING_SCALE, SCALING_SHIFT, abstract_params
from lipsync_jax.tree_utils import param_shapes

RULES: tuple[Rule, ...] = (
    Rule(r"(?:net\.slice\d\.|features\.)(\d+)\.weight", r"net/conv_\1/kernel", "conv2d"),
    Rule(r"(?:net\.slice\d\.|features\.)(\d+)\.bias", r"net/conv_\1/bias"),
    Rule(r"lin(\d)\.model\.1\.weight", r"lin\1/kernel", "conv1x1_to_linear"),
    Rule(r"lins\.\d\.model\.1\.weight", None),  # lpips' ModuleList view of linK: same tensors
    Rule(r"scaling_layer\.(shift|scale)", r"scaling_layer/\1"),
    Rule(r"classifier\..*", None),  # torchvision's VGG16 classifier head: not used by LPIPS
)


def _canonical(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten the scaling buffers to (3,), add lpips' constants where the file has none, and
    keep ``lins.K`` only where ``linK`` is absent (renamed then)."""
    canonical = dict(state_dict)
    for name, default in (("shift", SCALING_SHIFT), ("scale", SCALING_SCALE)):
        key = f"scaling_layer.{name}"
        value = canonical.get(key)
        canonical[key] = np.asarray(default, np.float32) if value is None else np.reshape(np.asarray(value), (-1,))
    for key in [k for k in canonical if k.startswith("lins.")]:
        primary = "lin" + key[len("lins."):]
        if primary not in canonical:
            canonical[primary] = canonical.pop(key)
    return canonical


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                       dtype: Any = None) -> tuple[dict, ConversionReport]:
    """An lpips-style (or torchvision + lin merged) state dict -> (bare params, report)."""
    template = param_shapes(abstract_params(LPIPS.from_config(config or {})))
    return apply_rules(_canonical(state_dict), RULES, template=template, dtype=dtype)


def _read(path: str) -> dict[str, Any]:
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    state_dict, _extras = read_state_dict(path)
    return dict(state_dict)


def convert_files(vgg_path: str, lin_path: str, config: Mapping[str, Any] | None = None,
                  dtype: Any = np.float32) -> tuple[dict, ConversionReport]:
    """torchvision ``vgg16`` ImageNet weights + lpips ``vgg.pth`` lin weights -> (params, report)."""
    vgg, lins = _read(vgg_path), _read(lin_path)
    clash = sorted(set(vgg) & set(lins))
    if clash:
        raise ConversionError(f"{vgg_path} and {lin_path} both hold {clash[:5]}: pass the torchvision "
                              "VGG16 file and the lpips lin file (weights/v0.1/vgg.pth)")
    params, report = convert_state_dict({**vgg, **lins}, config, dtype)
    report.raise_if_problems(f"LPIPS weights {vgg_path} + {lin_path}")
    return params, report


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict, ConversionReport]:
    """``src``: one combined lpips state dict, or ``"vgg16.pth,vgg.pth"`` (the two files).
    ``dtype=None`` stores float32."""
    dtype = np.float32 if dtype is None else dtype
    paths = [p for p in src.split(",") if p]
    if len(paths) == 2:
        return convert_files(paths[0], paths[1], config, dtype)
    if len(paths) != 1:
        raise ConversionError(f"LPIPS source {src!r}: give one combined file or 'vgg16.pth,vgg.pth'")
    state_dict = _read(paths[0])
    if not any(k.startswith(("net.slice", "features.")) for k in state_dict):
        raise ConversionError(f"{paths[0]} holds no VGG16 conv weights (only {sorted(state_dict)[:3]}...): "
                              "pass torchvision's VGG16 file too, as --src 'vgg16.pth,vgg.pth'")
    params, report = convert_state_dict(state_dict, config, dtype)
    report.raise_if_problems(f"LPIPS weights {paths[0]}")
    return params, report
