"""What the jitted eval networks (I3D for FVD, HyperIQA for quality) share: where their params
come from, and fixed-size batches so one compilation serves every call."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np


def padded_batches(items: np.ndarray, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """``items`` (n, ...) in batches of exactly ``batch_size`` (the last one zero-padded), each
    with how many of its rows are real."""
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        valid = len(batch)
        if valid < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - valid,) + batch.shape[1:], batch.dtype)])
        yield batch, valid


def load_net_params(checkpoint: str | None, config: dict | None, *, random_init: bool, seed: int,
                    init_params: Callable[..., Any], convert: str) -> tuple[Any, dict | None, str] | None:
    """(params, config, source) from random init (``init_params(key, config)``), a converted
    folder (its saved config unless ``config`` is given) or an original checkpoint file
    (``lipsync_jax.convert.<convert>.convert_file``); None when ``checkpoint`` is neither a
    converted folder nor a file (the caller names the problem)."""
    if random_init:
        import jax

        return init_params(jax.random.key(seed), config), config, f"random init (seed {seed})"
    from lipsync_jax.checkpoints import is_converted, restore_params

    if is_converted(checkpoint):
        params, saved = restore_params(checkpoint)
        return params, config or saved, os.path.abspath(checkpoint)
    if os.path.isfile(checkpoint):
        params, _ = importlib.import_module(f"lipsync_jax.convert.{convert}").convert_file(checkpoint, config)
        return params, config, os.path.abspath(checkpoint)
    return None
