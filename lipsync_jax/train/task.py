"""What the generic training loop needs from a model family (UNet, SyncNet)."""

from __future__ import annotations

import dataclasses
import importlib
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import numpy as np

from lipsync_jax import checkpoints, config_utils
from lipsync_jax.tree_utils import shape_mismatches

log = logging.getLogger(__name__)


class TrainConfigError(ValueError):
    """The training config cannot be used as given."""


@dataclasses.dataclass
class TrainTask:
    name: str                                   # "unet", "distill" or "syncnet"
    param_shapes: Any                           # tree of ShapeDtypeStruct (trained params)
    logical_specs: Any                          # tree of logical PartitionSpecs, or None (replicate)
    init_params: Callable[[jax.Array], Any]     # jittable: key -> params
    pretrained: Callable[[], Any]               # () -> numpy params or None (random init)
    trainable: Any                              # bool tree or None (all)
    init_frozen: Callable[[jax.Array], Mapping[str, Any]]  # jittable: key -> random frozen params
    pretrained_frozen: Callable[[], Mapping[str, Any]]     # () -> {name: numpy params} to override
    train_step: Callable                        # (state, frozen, batch) -> (state, metrics)
    eval_step: Callable                         # (params, frozen, batch, rng) -> metrics
    make_data: Callable[[int, int], Iterator[Mapping[str, np.ndarray]]]  # (process, count) -> iterator
    make_val_data: Callable[[int, int], Iterator[Mapping[str, np.ndarray]]] | None = None
    validation_every: int = 0
    ema_decay: float | None = None              # keep TrainState.ema_params with this decay (None: none)


def load_converted(path: str, what: str, shapes: Any = None, kind: str | None = None,
                   model_config: Any = None) -> Any:
    """Bare params written by ``python -m lipsync_jax.convert`` (float32 numpy); ``shapes`` (a
    bare tree) is checked leaf by leaf. With ``kind`` (a
    ``lipsync_jax.convert`` module name), an original checkpoint (e.g. ``latentsync_unet.pt``, the
    LatentSync configs' default) is converted on the fly with ``model_config``."""
    resolved = config_utils.resolve_path(path)
    try:
        if kind is not None and os.path.exists(resolved) and not checkpoints.is_converted(resolved):
            log.warning("%s = %r is an original checkpoint: converting it now (run `python -m "
                        "lipsync_jax.convert %s` once to skip this)", what, path, kind)
            converter = importlib.import_module(f"lipsync_jax.convert.{kind}")
            params, _report = converter.convert_file(resolved, model_config)
            params = checkpoints.cast_floating(params, np.float32)
        else:
            params, _config = checkpoints.restore_params(resolved, dtype=np.float32)
    except Exception as e:  # noqa: BLE001 - name the config field and file
        raise TrainConfigError(f"{what} = {path!r}: cannot read converted weights ({e}); convert the "
                               "official file with `python -m lipsync_jax.convert ...` first") from e
    if shapes is not None:
        missing, extra, wrong = (names[:5] for names in shape_mismatches(params, shapes))
        if missing or extra or wrong:
            raise TrainConfigError(f"{what} = {path!r}: parameters do not match the configured model "
                                   f"(missing {missing}, unexpected {extra}, wrong shape {wrong})")
    return params
