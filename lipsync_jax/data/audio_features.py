"""Per-clip audio features for the loaders: Whisper embeddings and the SyncNet mel, cached.

``WhisperFeatures`` is a picklable recipe that grain worker processes turn into an
``AudioFeatureExtractor`` on first use (each worker builds its own; JAX runs on the CPU in
workers so they never claim an accelerator). ``whisper_params`` is one of

- a folder written by ``python -m lipsync_jax.convert whisper`` (params + config.json),
- an official checkpoint file or folder (OpenAI ``tiny.pt``, Hugging Face safetensors/bin),
  converted in memory by ``lipsync_jax.convert.whisper`` in each worker,
- ``"random"`` / ``"random:SEED"``: random weights with the given ``dims`` (e.g. a config's
  ``whisper.dims``; LatentSync's ``ckpt_path: ""``), for smoke runs,
- ``"tiny_random"`` / ``"tiny_random:SEED"``: a narrow random encoder with Whisper's real
  windowing (80 mels, 1500 positions, width 32, 2 heads, 2 layers: 3 embedding layers, so
  per-frame windows are (10 * 3, 32) instead of tiny's (50, 384); ``TINY_RANDOM_DIMS``) for
  tests without official weights.
Random encoders' features carry no meaning.

Embeddings are cached per clip by audio content (``lipsync_jax.audio.FeatureCache``) under
``cache_dir`` when given, as LatentSync caches ``audio2feat`` results; so is the SyncNet mel.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any, Protocol

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


def random_params(dims: Mapping[str, Any], seed: int = 0) -> tuple[Any, dict[str, int]]:
    """(params, dims) of a randomly initialised Whisper encoder with ``dims``."""
    import jax

    from lipsync_jax.audio.whisper_encoder import WhisperEncoderConfig, init_params

    config = WhisperEncoderConfig.from_config(dims)
    params = init_params(jax.random.key(seed), config)
    return jax.tree_util.tree_map(np.asarray, params), dataclasses.asdict(config)


def tiny_random_params(seed: int = 0) -> tuple[Any, dict[str, int]]:
    """(params, dims) of the tiny random Whisper encoder."""
    return random_params(TINY_RANDOM_DIMS, seed)


def load_whisper_params(source: str, dims: Mapping[str, Any] | None = None) -> tuple[Any, Any]:
    """(params, dims) for a ``whisper_params`` source (see the module docstring)."""
    kind, _, seed = source.partition(":")
    if kind == "tiny_random":
        return tiny_random_params(int(seed or 0))
    if kind == "random":
        if dims is None:
            raise ValueError("whisper_params 'random' needs the encoder dims (e.g. the config's whisper.dims)")
        return random_params(dims, int(seed or 0))
    if not os.path.exists(source):
        raise FileNotFoundError(f"whisper_params {source}: no such file or folder")
    if os.path.isdir(source) and os.path.isfile(os.path.join(source, "metadata.json")):
        from lipsync_jax.checkpoints import restore_params

        params, config = restore_params(source)
        if config is None:
            raise ValueError(f"{source}: converted Whisper params have no config.json with the encoder dims")
        return params, config
    from lipsync_jax.convert.whisper import convert_file_with_config

    params, _, config = convert_file_with_config(source, dims)
    return params, dataclasses.asdict(config)


class WhisperFeatures:
    """Picklable, lazily built Whisper embedder (see the module docstring)."""

    def __init__(self, whisper_params: str, cache_dir: str | None = None, max_batch: int = 4,
                 dims: Mapping[str, Any] | None = None):
        self.whisper_params = whisper_params
        self.dims = dict(dims) if dims is not None else None
        self.cache_dir = cache_dir
        self.max_batch = max_batch
        self._extractor = None

    def _build(self):
        if self._extractor is None:
            _cpu_jax()
            from lipsync_jax.audio.features import AudioFeatureExtractor

            params, dims = load_whisper_params(self.whisper_params, self.dims)
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
