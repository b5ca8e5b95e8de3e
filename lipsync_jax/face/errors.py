"""Exceptions raised by the face pipeline (each message names the input and the problem)."""

from __future__ import annotations


class FaceError(Exception):
    """Base class of every face-pipeline error."""


class FaceInputError(FaceError, ValueError):
    """A frame or face array has the wrong shape or dtype."""


class FaceBackendError(FaceError, RuntimeError):
    """A landmark backend cannot be used (package or model files missing)."""


class NoFaceError(FaceError):
    """No face was found in any frame of a video."""
