"""Per-clip audio features for the loaders: Whisper embeddings and the SyncNet mel, cached.

``WhisperFeatures`` is a picklable recipe that grain worker processes turn into an
``AudioFeatureExtractor`` on first use (each worker builds its own; JAX runs on the CPU in
workers so they never claim an accelerator). ``whisper_params`` is either

- a folder written by ``python -m lipsync_jax.convert whisper`` (params + config.json), or
- ``"tiny_random"`` / ``"tiny_random:SEED"``: a narrow random encoder with Whisper's real
  windowing (80 mels, 1500 positions, width 32, 2 heads, 2 layers: 3 embedding layers, so
  per-frame windows are (10 * 3, 32) instead of tiny's (50, 384); ``TINY_RANDOM_DIMS``) for
  tests and smoke runs without official weights. Its features carry no meaning.

Embeddings are cached per clip by audio content (``lipsync_jax.audio.FeatureCache``) under
``cache_dir`` when given, as LatentSync caches ``audio2feat`` results; so is the SyncNet mel.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Protocol

import numpy as np

from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.audio.syncnet_mel import syncnet_mel

TINY_RANDOM_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2)
MEL_IDENTITY = "syncnet_mel-v1"


class ClipEmbedder(Protocol):
    """16 kHz float audio (n,) -> (T, layers, d) embeddings, 50 rows per second."""

    def __call__(self, audio: np.ndarray) -> np.ndarray: ...


def _cpu_jax() -> None:
    """Keep JAX in data workers on the CPU (a no-op once a backend is initialised)."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def tiny_random_params(seed: int = 0) -> tuple[Any, dict[str, int]]:
    """(params, dims) of the tiny random Whisper encoder."""
    import jax
    import jax.numpy as jnp

    from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig

    config = WhisperEncoderConfig(**TINY_RANDOM_DIMS)
    mel = jnp.zeros((1, config.n_frames, config.n_mels), jnp.float32)
    params = jax.jit(WhisperEncoder(config).init)(jax.random.PRNGKey(seed), mel)["params"]
    return jax.tree_util.tree_map(np.asarray, params), dict(TINY_RANDOM_DIMS)


def load_whisper_params(source: str) -> tuple[Any, Any]:
    """(params, dims) from a converted folder or ``tiny_random[:seed]``."""
    if source.startswith("tiny_random"):
        _, _, seed = source.partition(":")
        return tiny_random_params(int(seed or 0))
    from lipsync_jax.checkpoints import restore_params

    params, config = restore_params(source)
    if config is None:
        raise ValueError(f"{source}: converted Whisper params have no config.json with the encoder dims")
    return params, config


class WhisperFeatures:
    """Picklable, lazily built Whisper embedder (see the module docstring)."""

    def __init__(self, whisper_params: str, cache_dir: str | None = None, max_batch: int = 4):
        self.whisper_params = whisper_params
        self.cache_dir = cache_dir
        self.max_batch = max_batch
        self._extractor = None

    def _build(self):
        if self._extractor is None:
            _cpu_jax()
            from lipsync_jax.audio.features import AudioFeatureExtractor

            params, dims = load_whisper_params(self.whisper_params)
            cache = FeatureCache(self.cache_dir) if self.cache_dir else None
            self._extractor = AudioFeatureExtractor(params, dims, max_batch=self.max_batch, cache=cache)
        return self._extractor

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        return self._build().clip_embeddings(audio)

    def __getstate__(self):
        return {**self.__dict__, "_extractor": None}


class SyncNetMel:
    """Picklable SyncNet-mel computer with the same content-hash cache."""

    def __init__(self, cache_dir: str | None = None, compute: Callable[[np.ndarray], np.ndarray] = syncnet_mel):
        self.cache = FeatureCache(cache_dir) if cache_dir else None
        self.compute = compute

    def __call__(self, audio: np.ndarray) -> np.ndarray:
        if self.cache is None:
            return self.compute(audio)
        return self.cache.get_or_compute(audio, MEL_IDENTITY, lambda: self.compute(audio))
