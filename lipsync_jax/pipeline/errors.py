"""Exceptions of the inference pipeline (each message names the input and the problem)."""

from __future__ import annotations


class InferenceError(Exception):
    """Base class of the pipeline's own errors."""


class InputError(InferenceError, ValueError):
    """A video or audio input (or the output path) cannot be used; the message names the file."""


class CheckpointMismatchError(InferenceError, ValueError):
    """Loaded weights do not fit the model the config describes."""
