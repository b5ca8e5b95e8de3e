"""HyperIQA ``koniq_pretrained.pkl`` (the pickled ``HyperNet(16, 112, 224, 112, 56, 28, 14, 7)``
state dict LatentSync's visual quality filter loads) -> bare Flax params of
``lipsync_jax.models.hyperiqa.HyperIQA``.

``res.layer3.2.conv2.weight`` -> ``res/layer3_2/conv2/kernel``, ``...downsample.{0,1}`` ->
``downsample_{0,1}``, BatchNorm ``weight/bias/running_mean/running_var`` -> ``scale/bias/mean/var``,
``conv1.{0,2,4}`` -> ``conv1_{0,2,4}``; Conv2d and Linear weights transposed to channels-last;
``num_batches_tracked`` is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.tree_utils import param_shapes

_BN = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
# (key prefix pattern, target prefix) of every BatchNorm
_NORMS = ((r"res\.bn1", "res/bn1"),
          (r"res\.layer(\d)\.(\d+)\.(bn\d)", r"res/layer\1_\2/\3"),
          (r"res\.layer(\d)\.(\d+)\.downsample\.1", r"res/layer\1_\2/downsample_1"))

RULES: tuple[Rule, ...] = (
    Rule(r"res\.conv1\.weight", "res/conv1/kernel", "conv2d"),
    Rule(r"res\.layer(\d)\.(\d+)\.(conv\d)\.weight", r"res/layer\1_\2/\3/kernel", "conv2d"),
    Rule(r"res\.layer(\d)\.(\d+)\.downsample\.0\.weight", r"res/layer\1_\2/downsample_0/kernel", "conv2d"),
    *(Rule(rf"{prefix}\.{name}", rf"{target}/{leaf}") for prefix, target in _NORMS for name, leaf in _BN),
    Rule(r"res\.lda(\d)_pool\.0\.weight", r"res/lda\1_pool_0/kernel", "conv2d"),
    Rule(r"res\.lda(\d)_fc\.weight", r"res/lda\1_fc/kernel", "linear"),
    Rule(r"res\.lda(\d)_fc\.bias", r"res/lda\1_fc/bias"),
    Rule(r"conv1\.(\d)\.weight", r"conv1_\1/kernel", "conv2d"),
    Rule(r"conv1\.(\d)\.bias", r"conv1_\1/bias"),
    Rule(r"(fc\dw_conv)\.weight", r"\1/kernel", "conv2d"),
    Rule(r"(fc\dw_conv)\.bias", r"\1/bias"),
    Rule(r"(fc\d[wb]_fc)\.weight", r"\1/kernel", "linear"),
    Rule(r"(fc\d[wb]_fc)\.bias", r"\1/bias"),
    Rule(r".*\.num_batches_tracked", None),  # BatchNorm's update counter: unused at inference
)


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """An in-memory HyperNet state dict -> (bare params, report). ``config``: HyperIQAConfig
    fields or a fixture meta (``args``, ``narrow_by``); default LatentSync's HyperNet."""
    from lipsync_jax.models.hyperiqa import abstract_params

    template = param_shapes(abstract_params(config))
    return apply_rules(state_dict, RULES, template=template, dtype=dtype)


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: ``koniq_pretrained.pkl`` (read without executing pickled code). Raises
    ``ConversionError`` when it does not fit the HyperNet config."""
    from lipsync_jax.convert.torch_legacy import read_any_state_dict

    state_dict = read_any_state_dict(src)  # zip or legacy (pre-1.6) torch.save, no code execution
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"HyperIQA checkpoint {src}")
    return params, report
