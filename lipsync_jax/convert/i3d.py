"""pytorch-i3d ``rgb_imagenet.pt`` (a plain ``state_dict``: Kinetics-400 I3D, the network FVD
uses) -> bare Flax params of ``lipsync_jax.models.i3d.I3D``.

``Mixed_4c.b1b.conv3d.weight`` -> ``Mixed_4c/b1b/conv3d/kernel`` (Conv3d transposed to
channels-last), ``*.bn.{weight,bias,running_mean,running_var}`` -> ``*/bn/{scale,bias,mean,var}``,
``logits.conv3d.{weight,bias}`` -> ``logits/{kernel,bias}``; ``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.tree_utils import param_shapes

# a Unit3D is a stem layer ("Conv3d_2c_3x3") or an inception branch ("Mixed_4c.b1b" -> Mixed_4c/b1b)
_UNITS = ((r"(Conv3d_\w+)", r"\1"), (r"(Mixed_\w+)\.(b\d[ab]?)", r"\1/\2"))
_UNIT_PARTS = (("conv3d.weight", "conv3d/kernel", "conv3d"), ("bn.weight", "bn/scale", "none"),
               ("bn.bias", "bn/bias", "none"), ("bn.running_mean", "bn/mean", "none"),
               ("bn.running_var", "bn/var", "none"))

RULES: tuple[Rule, ...] = (
    Rule(r"logits\.conv3d\.weight", "logits/kernel", "conv3d"),
    Rule(r"logits\.conv3d\.bias", "logits/bias"),
    *(Rule(unit + r"\." + re.escape(part), f"{target}/{leaf}", transform)
      for unit, target in _UNITS for part, leaf, transform in _UNIT_PARTS),
    Rule(r".*\.num_batches_tracked", None),  # BatchNorm's update counter: unused at inference
)


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """An in-memory I3D state dict -> (bare params, report). ``config``: ``num_classes``
    (default 400) and ``narrow_by`` (test fixtures)."""
    from lipsync_jax.models.i3d import abstract_params

    template = param_shapes(abstract_params(config))
    return apply_rules(state_dict, RULES, template=template, dtype=dtype)


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: pytorch-i3d's ``rgb_imagenet.pt`` (read without executing pickled code).
    Raises ``ConversionError`` when it does not fit the I3D config."""
    from lipsync_jax.convert.torch_legacy import read_any_state_dict

    state_dict = read_any_state_dict(src)  # zip or legacy (pre-1.6) torch.save, no code execution
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"I3D checkpoint {src}")
    return params, report
