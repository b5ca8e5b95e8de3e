"""On-disk cache of audio features, keyed by what they are computed from.

The key is a SHA-256 of the audio samples (dtype, shape and bytes) plus an ``identity`` string
naming the model and its parameters (see ``params_fingerprint``), so a renamed file hits the cache
and edited audio or other weights miss it. Entries are ``<cache_dir>/<key>.npy``, written
atomically (temporary file + rename) so concurrent data-loader workers never read half a file;
an unreadable entry is deleted and recomputed (as LatentSync does with its .pt cache).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from lipsync_jax.tree_utils import flatten_tree


def audio_hash(audio: np.ndarray) -> str:
    audio = np.ascontiguousarray(audio)
    digest = hashlib.sha256()
    digest.update(f"{audio.dtype.str}{audio.shape}".encode())
    digest.update(audio.tobytes())
    return digest.hexdigest()


def params_fingerprint(params: Mapping[str, Any], extra: str = "") -> str:
    """A short SHA-256 over every parameter's path, dtype, shape and bytes (plus ``extra``,
    e.g. the dims and compute dtype)."""
    digest = hashlib.sha256(extra.encode())
    for path, value in sorted(flatten_tree(params).items()):
        array = np.ascontiguousarray(np.asarray(value))
        digest.update(f"{'/'.join(path)}|{array.dtype.str}|{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    def __init__(self, cache_dir: str | os.PathLike):
        self.cache_dir = os.fspath(cache_dir)

    def path_for(self, audio: np.ndarray, identity: str) -> str:
        key = hashlib.sha256(f"{identity}|{audio_hash(audio)}".encode()).hexdigest()
        return os.path.join(self.cache_dir, f"{key}.npy")

    def get_or_compute(self, audio: np.ndarray, identity: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The cached array for (audio, identity), else ``compute()`` stored for next time."""
        path = self.path_for(audio, identity)
        if os.path.isfile(path):
            try:
                return np.load(path, allow_pickle=False)
            except (ValueError, OSError, EOFError):
                _remove(path)  # truncated or corrupt entry: recompute it
        value = np.asarray(compute())
        self._store(path, value)
        return value

    def _store(self, path: str, value: np.ndarray) -> None:
        os.makedirs(self.cache_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, prefix=".tmp_", suffix=".npy")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, value, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            _remove(tmp)
            raise


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
