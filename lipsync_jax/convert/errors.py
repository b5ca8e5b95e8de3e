"""Errors raised while reading checkpoint files (every message names the file)."""

from __future__ import annotations


class CheckpointFormatError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or in a format we do not read."""


class CheckpointNotFoundError(CheckpointFormatError, FileNotFoundError):
    """The checkpoint path does not exist (also a ``FileNotFoundError``)."""


class UnsafeCheckpointError(ValueError):
    """A pickled checkpoint references code (a global outside the tensor allow-list)."""
