"""Converters from official PyTorch checkpoints to our Flax parameter trees.

A converter is data: a table of ``Rule``s (regex on the PyTorch key -> Flax path, plus a
layout transform) applied by ``convert_state_dict``, which reports every key it could not
place and every parameter it could not fill.
"""

from lipsync_jax.convert.rules import (
    ConversionError,
    ConversionReport,
    Rule,
    TRANSFORMS,
    convert_state_dict,
    count_params,
    flatten_tree,
    manifest_state_dict,
    param_shapes,
    unflatten_tree,
)

__all__ = [
    "ConversionError", "ConversionReport", "Rule", "TRANSFORMS", "convert_state_dict",
    "count_params", "flatten_tree", "manifest_state_dict", "param_shapes", "unflatten_tree",
]
