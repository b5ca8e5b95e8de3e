"""Converters from official PyTorch checkpoints to our Flax parameter trees.

A converter is data: a table of ``Rule``s (regex on the PyTorch key -> Flax path, plus a
layout transform) applied by ``rules.convert_state_dict``, which reports every key it could not
place and every parameter it could not fill. Every ``convert/<model>.py`` exposes the same two
entry points, both returning ``(bare params, ConversionReport)``:

    convert_state_dict(state_dict, config, dtype=None)   # in-memory {torch key: array}
    convert_file(src, config=None, dtype=None)           # a checkpoint file or folder

and raises ``ConversionError`` (the checkpoint does not fit the config) or
``CheckpointFormatError`` (``convert.errors``: the file cannot be read as a checkpoint).
"""

from lipsync_jax.checkpoints import CheckpointFormatError
from lipsync_jax.convert.rules import (
    TRANSFORMS,
    ConversionError,
    ConversionReport,
    Rule,
    manifest_state_dict,
)

__all__ = ["CheckpointFormatError", "ConversionError", "ConversionReport", "Rule", "TRANSFORMS",
           "manifest_state_dict"]
