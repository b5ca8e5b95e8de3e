"""Read legacy (pre-1.6, non-zip) ``torch.save`` files without torch: ``syncnet_v2.model`` and
``sfd_face.pth`` date from that era.

Layout: five pickles back to back, then the raw storages:
  1. the magic number 0x1950a86a20f9469cfc6c, 2. the protocol version (1001), 3. a sys-info dict
     (endianness, type sizes), 4. the object itself, whose storages are persistent ids
     ``("storage", torch.<Type>Storage, key, location, numel, view_metadata)`` (view_metadata
     None, or ``(view_key, offset, numel)`` for a view into the storage ``key``),
  5. the list of storage keys in the order their data follows;
then for each key an int64 element count and that many little-endian elements.
The object pickle is read twice with the same restricted unpickler as the zip reader
(``torch_pickle``: only containers, tensors, storages and dtypes; anything else raises
``UnsafeCheckpointError``): first with zero placeholders to learn each storage's dtype, then with
the real bytes (a read-only memory map of the file).
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from lipsync_jax.checkpoints import CheckpointFormatError, CheckpointNotFoundError, UnsafeCheckpointError
from lipsync_jax.convert.torch_pickle import _LEGACY_MAGIC, _RestrictedUnpickler, _Storage, _StorageType

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C


class _PlainUnpickler(pickle.Unpickler):
    """For the header pickles and the key list: no globals at all."""

    def __init__(self, file, path: str):
        super().__init__(file)
        self._path = path

    def find_class(self, module, name):
        raise UnsafeCheckpointError(f"refusing to load {module}.{name} from {self._path}: unexpected global "
                                    "in a legacy torch header")


class _LegacyUnpickler(_RestrictedUnpickler):
    def __init__(self, file, path: str, data: Mapping[str, np.ndarray] | None):
        super().__init__(file, path, self._bytes)
        self._data = data  # None: first pass (placeholders)
        self.dtypes: dict[str, np.dtype] = {}
        self.numels: dict[str, int] = {}

    def _bytes(self, key: str, nbytes: int) -> np.ndarray:
        if self._data is None:
            return np.zeros(nbytes, np.uint8)
        raw = self._data.get(key)
        if raw is None or raw.size < nbytes:
            raise CheckpointFormatError(f"{self._path}: storage {key} is missing or truncated")
        return raw[:nbytes]

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r} in a legacy checkpoint")
        _, storage_type, key, _location, numel, view = pid
        key, itemsize = str(key), storage_type.dtype.itemsize
        self.dtypes[key], self.numels[key] = storage_type.dtype, int(numel)
        if key not in self._storages:
            self._storages[key] = _Storage(self._read_storage(key, int(numel) * itemsize), storage_type.dtype)
        root = self._storages[key]
        if view is None:
            return root
        _view_key, offset, size = view
        return _Storage(root.raw[int(offset) * itemsize:(int(offset) + int(size)) * itemsize], storage_type.dtype)


def is_legacy_checkpoint(path: str) -> bool:
    if not os.path.isfile(path) or zipfile.is_zipfile(path):
        return False
    with open(path, "rb") as f:
        return f.read(len(_LEGACY_MAGIC)) == _LEGACY_MAGIC


def load_legacy_torch_checkpoint(path: str | os.PathLike) -> Any:
    """A legacy ``torch.save`` file -> plain containers of numpy arrays (read-only views)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
    mapped = np.memmap(path, np.uint8, mode="r")
    stream = io.BytesIO(memoryview(mapped))
    try:
        magic = _PlainUnpickler(stream, path).load()
        if magic != MAGIC_NUMBER:
            raise CheckpointFormatError(f"{path}: not a legacy torch checkpoint (bad magic number)")
        _PlainUnpickler(stream, path).load()  # protocol version
        sys_info = _PlainUnpickler(stream, path).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise CheckpointFormatError(f"{path}: big-endian checkpoints are not supported")
        object_start = stream.tell()
        first = _LegacyUnpickler(stream, path, None)
        first.load()
        keys = _PlainUnpickler(stream, path).load()
        offset = stream.tell()
        data: dict[str, np.ndarray] = {}
        for key in keys:
            key = str(key)
            if key not in first.dtypes:
                raise CheckpointFormatError(f"{path}: storage {key} listed but never used")
            count = int(np.frombuffer(mapped[offset:offset + 8].tobytes(), "<i8")[0])
            end = offset + 8 + count * first.dtypes[key].itemsize
            if count < 0 or end > mapped.size:
                raise CheckpointFormatError(f"{path}: storage {key} runs past the end of the file (truncated)")
            data[key] = mapped[offset + 8:end]
            offset = end
        stream.seek(object_start)
        return _LegacyUnpickler(stream, path, data).load()
    except (CheckpointFormatError, UnsafeCheckpointError):
        raise
    except Exception as error:
        raise CheckpointFormatError(f"{path}: corrupt legacy checkpoint ({type(error).__name__}: {error})") from error


def read_any_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The state dict of any checkpoint ``read_state_dict`` reads, or of a legacy torch file
    (a plain state dict, or one under ``state_dict`` / ``model``; a DDP ``module.`` prefix is removed)."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    path = os.fspath(path)
    if not is_legacy_checkpoint(path):
        return dict(read_state_dict(path)[0])
    obj = load_legacy_torch_checkpoint(path)
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path}: top level is a {type(obj).__name__}, expected a state dict")
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    state_dict = {str(k): v for k, v in obj.items() if hasattr(v, "shape")}
    if not state_dict:
        raise CheckpointFormatError(f"{path}: holds no tensors")
    if all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict
