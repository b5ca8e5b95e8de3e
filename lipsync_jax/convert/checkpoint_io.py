"""One entry point for every converter: a checkpoint path -> (flat state_dict, extras).

Accepts ``.pt/.pth/.bin/.ckpt`` (torch.save zip, read without torch), ``.safetensors`` and
diffusers/transformers-style folders (``config.json`` + weights, optionally sharded).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lipsync_jax.checkpoints import CheckpointFormatError, CheckpointNotFoundError, UnsafeCheckpointError
from lipsync_jax.convert.safetensors_io import load_safetensors, safetensors_metadata
from lipsync_jax.convert.torch_pickle import load_torch_checkpoint

__all__ = ["read_state_dict", "CheckpointFormatError", "CheckpointNotFoundError", "UnsafeCheckpointError"]

STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "module")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
# Weight files looked for in a folder, in order of preference (each may also be sharded as
# "<name>.index.json" + shards).
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                  "diffusion_pytorch_model.bin", "pytorch_model.bin")


def read_state_dict(path: str | os.PathLike, keys: Sequence[str] = STATE_DICT_KEYS
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read a checkpoint file or folder and return ``(state_dict, extras)``.

    The state dict is the first entry among ``keys`` that is a mapping (else the top level
    itself, if it holds tensors), with a DDP ``module.`` prefix removed when every key has
    it. ``extras`` holds everything else: the other top-level entries (``global_step``,
    ``dims``, ...), ``config`` (a folder's config.json), ``metadata`` (safetensors) and
    ``state_dict_non_tensors`` (non-array values found inside the state dict).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return _read_folder(path, keys)
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file or folder")
    suffix = os.path.splitext(path)[1].lower()
    if suffix == ".safetensors":
        metadata = safetensors_metadata(path)
        return _unwrap(load_safetensors(path), keys, path, {"metadata": metadata} if metadata else {})
    if suffix in TORCH_SUFFIXES or zipfile.is_zipfile(path):
        return _unwrap(load_torch_checkpoint(path), keys, path, {})
    raise CheckpointFormatError(
        f"{path}: unknown checkpoint type {suffix or '(no suffix)'!r}; expected "
        f"{'/'.join(TORCH_SUFFIXES)}, .safetensors or a diffusers-style folder")


def _unwrap(obj: Any, keys: Sequence[str], path: str, extras: dict[str, Any]
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: top level is a {type(obj).__name__}, expected a dict")
    wrapper = next((key for key in keys if isinstance(obj.get(key), Mapping)), None)
    if wrapper is not None:
        state = obj[wrapper]
        extras.update((k, v) for k, v in obj.items() if k != wrapper)
    elif any(isinstance(v, np.ndarray) for v in obj.values()):
        state = obj
    else:
        raise CheckpointFormatError(
            f"{path}: no state dict found: top-level keys are {sorted(map(str, obj))[:20]}, expected "
            f"one of {list(keys)} or a flat dict of tensors")
    tensors = {str(k): v for k, v in state.items() if isinstance(v, np.ndarray)}
    others = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    if others:
        if wrapper is None:  # top-level dict: non-tensors are ordinary extras (global_step, ...)
            extras.update(others)
        else:
            extras["state_dict_non_tensors"] = others
    if not tensors:
        under = f" under {wrapper!r}" if wrapper else ""
        raise CheckpointFormatError(f"{path}: the state dict{under} holds no tensors")
    if all(key.startswith("module.") for key in tensors):  # saved from a DDP-wrapped model
        tensors = {key[len("module."):]: value for key, value in tensors.items()}
    return tensors, extras


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(f"{path}: cannot read JSON ({error})") from None


def _load_weights_file(path: str) -> dict[str, np.ndarray]:
    return read_state_dict(path)[0]


def _read_folder(folder: str, keys: Sequence[str]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    extras: dict[str, Any] = {}
    config_path = os.path.join(folder, "config.json")
    if os.path.isfile(config_path):
        extras["config"] = _read_json(config_path)
    for name in FOLDER_WEIGHTS:
        single, index = os.path.join(folder, name), os.path.join(folder, name + ".index.json")
        if os.path.isfile(single):
            state, file_extras = read_state_dict(single, keys)
            return state, {**file_extras, **extras}
        if os.path.isfile(index):
            return _read_shards(folder, index), extras
    raise CheckpointFormatError(
        f"{folder}: folder has no weights file (looked for {', '.join(FOLDER_WEIGHTS)} and their "
        ".index.json shards)")


def _read_shards(folder: str, index_path: str) -> dict[str, np.ndarray]:
    weight_map = _read_json(index_path).get("weight_map")
    if not isinstance(weight_map, dict):
        raise CheckpointFormatError(f"{index_path}: no 'weight_map' in the shard index")
    state: dict[str, np.ndarray] = {}
    for shard in dict.fromkeys(weight_map.values()):
        state.update(_load_weights_file(os.path.join(folder, shard)))
    missing = [key for key in weight_map if key not in state]
    if missing:
        raise CheckpointFormatError(
            f"{index_path}: {len(missing)} indexed tensors not in the shards, e.g. {missing[:3]}")
    return state
