"""grain loaders of UNet and SyncNet training batches from a clip dataset (``python -m data_prep``).

    loader = unet_loader(data_dir, batch_size=4, seed=1247, whisper_params="converted/whisper",
                         worker_count=8)                       # sharded by JAX process
    it = iter(loader)
    batch = next(it)                 # dict of (b, ...) numpy arrays, see transforms.py
    state = it.get_state()           # bytes; save it with the train checkpoint
    it = iter(loader); it.set_state(state)   # resumes on the very next batch

Sampling: grain's ``IndexSampler`` shuffles record indices (a new permutation per epoch,
``num_epochs=None`` = endless) and gives each sample an RNG derived from (seed, position), so
the stream depends only on the seed, the shard and ``worker_count`` (with N workers, worker w
turns every N-th sampled record into samples and forms whole batches from them, as grain
does; a saved state can only be restored with the same ``worker_count``). Sharding: the
records are split into ``shard_count`` disjoint contiguous ranges (``ShardByJaxProcess`` by
default: shard = ``jax.process_index()``), each process reads its own.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import grain.python as grain

from lipsync_jax.audio.features import DEFAULT_FEAT_LENGTH
from lipsync_jax.config_utils import resolve_path
from lipsync_jax.data.audio_features import SyncNetMel, WhisperFeatures
from lipsync_jax.data.records import ClipDataSource
from lipsync_jax.data.transforms import DropSkipped, SyncNetSample, UNetSample


def shard_options(shard_index: int | None = None, shard_count: int | None = None) -> grain.ShardOptions:
    """Explicit (index, count), or one shard per JAX process when both are None."""
    if shard_index is None and shard_count is None:
        return grain.ShardByJaxProcess(drop_remainder=True)
    if shard_index is None or shard_count is None or not 0 <= shard_index < shard_count:
        raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
    return grain.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)


def make_loader(source: ClipDataSource | str, transform: grain.RandomMapTransform, batch_size: int, *,
                seed: int = 0, shard_index: int | None = None, shard_count: int | None = None,
                worker_count: int = 0, num_epochs: int | None = None, shuffle: bool = True,
                worker_buffer_size: int = 2, read_threads: int = 4,
                read_prefetch: int | None = None) -> grain.DataLoader:
    """A DataLoader of ``batch_size``-sample batches (per process; the last partial batch of an
    epoch is dropped) from the clip dataset at ``source``. Records are read by
    ``read_threads`` threads per process, ``read_prefetch`` (default 2 batches) ahead: a record
    holds a whole clip (~5 MB), so grain's default of 500 records ahead would be gigabytes."""
    if not isinstance(source, ClipDataSource):
        source = ClipDataSource(os.fspath(source))
    options = shard_options(shard_index, shard_count)
    sampler = grain.IndexSampler(num_records=len(source), shard_options=options, shuffle=shuffle,
                                 num_epochs=num_epochs, seed=seed)
    return grain.DataLoader(data_source=source, sampler=sampler,
                            operations=[transform, DropSkipped(), grain.Batch(batch_size, drop_remainder=True)],
                            worker_count=worker_count, worker_buffer_size=worker_buffer_size,
                            read_options=grain.ReadOptions(num_threads=read_threads,
                                                           prefetch_buffer_size=read_prefetch or 2 * batch_size))


def unet_loader(source: ClipDataSource | str, *, batch_size: int, num_frames: int = 16, resolution: int = 256,
                whisper_params: str | None = None, whisper_dims: Mapping[str, Any] | None = None,
                mask_image_path: str | None = None, fps: float = 25.0,
                audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH, audio_embeds_cache_dir: str | None = None,
                audio_mel_cache_dir: str | None = None, **loader_kwargs: Any) -> grain.DataLoader:
    """UNet batches. ``whisper_params``: see ``lipsync_jax.data.audio_features`` (``whisper_dims``
    for "random"); None leaves out ``audio_embeds``."""
    embedder = (WhisperFeatures(whisper_params, audio_embeds_cache_dir, dims=whisper_dims)
                if whisper_params else None)
    transform = UNetSample(num_frames, resolution, mask_image_path, embedder, SyncNetMel(audio_mel_cache_dir),
                           fps, audio_feat_length)
    return make_loader(source, transform, batch_size, **loader_kwargs)


def syncnet_loader(source: ClipDataSource | str, *, batch_size: int, num_frames: int = 16, resolution: int = 256,
                   fps: float = 25.0, audio_mel_cache_dir: str | None = None,
                   **loader_kwargs: Any) -> grain.DataLoader:
    """SyncNet batches: half in sync (label 1), half with the frames shifted (label 0)."""
    transform = SyncNetSample(num_frames, resolution, SyncNetMel(audio_mel_cache_dir), fps)
    return make_loader(source, transform, batch_size, **loader_kwargs)


def unet_loader_from_config(config: Mapping[str, Any], data_dir: str | None = None,
                            whisper_params: str | None = None, **loader_kwargs: Any) -> grain.DataLoader:
    """``unet_loader`` with a UNet config's ``data``, ``whisper`` and ``run.seed`` (LatentSync's
    names): ``data_dir`` defaults to ``data.train_data_dir``, workers to ``data.num_workers``,
    ``whisper_params`` to ``whisper.ckpt_path`` ("" there: random weights with
    ``whisper.dims``, seeded by ``run.seed``)."""
    data = config["data"]
    whisper = config.get("whisper") or {}
    if whisper_params is None:
        whisper_params = resolve_path(whisper.get("ckpt_path") or "") or f"random:{int(config['run']['seed'])}"
    loader_kwargs.setdefault("seed", int(config["run"]["seed"]))
    loader_kwargs.setdefault("worker_count", int(data["num_workers"]))
    return unet_loader(data_dir or data["train_data_dir"], batch_size=int(data["batch_size"]),
                       num_frames=int(data["num_frames"]), resolution=int(data["resolution"]),
                       whisper_params=whisper_params, whisper_dims=whisper.get("dims"),
                       mask_image_path=resolve_path(data.get("mask_image_path") or "") or None,
                       fps=float(data["video_fps"]), audio_feat_length=tuple(data["audio_feat_length"]),
                       audio_embeds_cache_dir=data.get("audio_embeds_cache_dir") or None,
                       audio_mel_cache_dir=data.get("audio_mel_cache_dir") or None, **loader_kwargs)


def syncnet_loader_from_config(config: Mapping[str, Any], data_dir: str | None = None,
                               **loader_kwargs: Any) -> grain.DataLoader:
    """``syncnet_loader`` with a SyncNet config's ``data`` and ``run.seed``."""
    data = config["data"]
    loader_kwargs.setdefault("seed", int(config["run"]["seed"]))
    loader_kwargs.setdefault("worker_count", int(data["num_workers"]))
    return syncnet_loader(data_dir or data["train_data_dir"], batch_size=int(data["batch_size"]),
                          num_frames=int(data["num_frames"]), resolution=int(data["resolution"]),
                          fps=float(data["video_fps"]), audio_mel_cache_dir=data.get("audio_mel_cache_dir") or None,
                          **loader_kwargs)
