"""Batch sources for training: the grain loaders of ``lipsync_jax.data`` (``--data=grain``) or
the deterministic synthetic sources (``synthetic``); ``*_fixed`` repeats the first batch (overfitting
runs; validation uses a fixed batch too).
Every source is an iterator of per-process numpy batches with ``get_state``/``set_state``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lipsync_jax.train.syncnet_step import SYNCNET_BATCH_FIELDS as SYNCNET_FIELDS
from lipsync_jax.train.synthetic import SyntheticSyncNetSource, SyntheticUNetSource
from lipsync_jax.train.task import TrainConfigError
from lipsync_jax.train.unet_step import UNET_BATCH_FIELDS as UNET_FIELDS

VALIDATION_OFFSET = 10 ** 9  # synthetic validation samples: ids far from the training stream
SOURCES = ("synthetic", "synthetic_fixed", "grain", "grain_fixed")


class FieldSelect:
    """Keeps the fields the step uses (grain batches also carry indices); forwards the state."""

    def __init__(self, iterator: Any, fields: Sequence[str]):
        self.iterator, self.fields = iterator, tuple(fields)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        batch = next(self.iterator)
        missing = [k for k in self.fields if k not in batch]
        if missing:
            raise TrainConfigError(f"data batches lack the fields {missing} (have {sorted(batch)})")
        return {k: batch[k] for k in self.fields}

    def get_state(self):
        return self.iterator.get_state()

    def set_state(self, state) -> None:
        self.iterator.set_state(state)


class RepeatFirst:
    """The first batch of ``iterator``, forever (overfitting runs on real data)."""

    def __init__(self, iterator: Any):
        self.first = next(iterator)
        self.next_step = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, Any]:
        self.next_step += 1
        return self.first

    def get_state(self):
        return {"next_step": self.next_step}

    def set_state(self, state) -> None:
        self.next_step = int(state["next_step"])


def resolve_source(cfg: Mapping[str, Any], kind: str) -> str:
    """``auto`` (train.py's default): the real dataset (``grain``) when ``config.data.train_data_dir``
    is set, else synthetic batches with a loud warning (smoke runs of the tiny configs)."""
    if kind != "auto":
        _check(kind)
        return kind
    if cfg["data"]["train_data_dir"]:
        return "grain"
    import warnings

    warnings.warn("config.data.train_data_dir is empty: training on SYNTHETIC batches (a smoke run, not real "
                  "training). Point --config.data.train_data_dir at a data_prep dataset, or pass --data=synthetic "
                  "to ask for synthetic batches explicitly.", stacklevel=2)
    return "synthetic"


def _check(kind: str) -> None:
    if kind not in SOURCES:
        raise TrainConfigError(f"unknown data source {kind!r}; choose from {SOURCES}")


def unet_data_source(cfg: Mapping[str, Any], kind: str, process_index: int, process_count: int,
                     validation: bool = False) -> Iterator:
    _check(kind)
    if not kind.startswith("grain"):
        return SyntheticUNetSource(cfg, process_index, process_count, fixed=validation or kind == "synthetic_fixed",
                                   offset=VALIDATION_OFFSET if validation else 0)
    from lipsync_jax.data.loader import unet_loader_from_config

    data = cfg["data"]
    if not data["train_data_dir"]:
        raise TrainConfigError("--data=grain needs config.data.train_data_dir (a dataset written by data_prep)")
    seed = int(cfg["run"]["seed"]) + (1 if validation else 0)
    loader = unet_loader_from_config(cfg, whisper_params=cfg["whisper"]["ckpt_path"] or None, seed=seed,
                                     shard_index=process_index, shard_count=process_count)
    batches = FieldSelect(iter(loader), UNET_FIELDS)
    return RepeatFirst(batches) if kind == "grain_fixed" else batches


def syncnet_data_source(cfg: Mapping[str, Any], kind: str, process_index: int, process_count: int,
                        validation: bool = False) -> Iterator:
    _check(kind)
    if not kind.startswith("grain"):
        return SyntheticSyncNetSource(cfg, process_index, process_count,
                                      fixed=validation or kind == "synthetic_fixed",
                                      offset=VALIDATION_OFFSET if validation else 0)
    from lipsync_jax.data.loader import syncnet_loader_from_config

    data = cfg["data"]
    data_dir = (data["val_data_dir"] or data["train_data_dir"]) if validation else data["train_data_dir"]
    if not data_dir:
        raise TrainConfigError("--data=grain needs config.data.train_data_dir (a dataset written by data_prep)")
    seed = int(cfg["run"]["seed"]) + (1 if validation else 0)
    loader = syncnet_loader_from_config(cfg, data_dir, seed=seed, shard_index=process_index,
                                        shard_count=process_count)
    batches = FieldSelect(iter(loader), SYNCNET_FIELDS)
    return RepeatFirst(batches) if kind == "grain_fixed" or validation else batches
