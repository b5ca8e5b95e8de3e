"""Test helper: write ``torch.save``-compatible checkpoints without torch, so the tests can make
official-looking ``.pt`` files from golden fixture weights (the package only reads them:
``lipsync_jax.convert.torch_pickle``). The zip layout is described there."""

from __future__ import annotations

import collections
import os
import pickle
import struct
import zipfile
from typing import Any

import numpy as np

from lipsync_jax.convert.torch_pickle import STORAGE_DTYPES

_STORAGE_FOR_DTYPE = {dtype: name for name, dtype in STORAGE_DTYPES.items() if name != "UntypedStorage"}


# --------------------------------------------------------------------------------------------
# Writing (a small protocol-2 pickle emitter: Python's pickler would import torch to check
# the globals, so the opcodes are written directly)


class _Emitter:
    def __init__(self):
        self.chunks: list[bytes] = [b"\x80\x02"]  # PROTO 2
        self.storages: list[np.ndarray] = []

    def op(self, data: bytes) -> None:
        self.chunks.append(data)

    def global_(self, module: str, name: str) -> None:
        self.op(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def emit(self, obj: Any) -> None:
        if obj is None:
            self.op(b"N")
        elif isinstance(obj, (bool, np.bool_)):
            self.op(b"\x88" if obj else b"\x89")
        elif isinstance(obj, (int, np.integer)):
            self.int_(int(obj))
        elif isinstance(obj, (float, np.floating)):
            self.op(b"G" + struct.pack(">d", float(obj)))
        elif isinstance(obj, str):
            data = obj.encode("utf-8")
            self.op(b"X" + struct.pack("<I", len(data)) + data)
        elif isinstance(obj, np.ndarray):
            self.tensor(obj)
        elif isinstance(obj, collections.OrderedDict):
            self.global_("collections", "OrderedDict")
            self.op(b")R")  # OrderedDict()
            self.items(obj)
        elif isinstance(obj, dict):
            self.op(b"}")
            self.items(obj)
        elif isinstance(obj, list):
            self.op(b"]")
            if obj:
                self.op(b"(")
                for item in obj:
                    self.emit(item)
                self.op(b"e")  # APPENDS
        elif isinstance(obj, tuple):
            self.tuple_(obj)
        elif hasattr(obj, "__array__") and hasattr(obj, "dtype"):  # jax arrays
            self.tensor(np.asarray(obj))
        else:
            raise TypeError(f"save_torch_checkpoint cannot store {type(obj).__name__} values")

    def int_(self, value: int) -> None:
        if 0 <= value < 256:
            self.op(b"K" + bytes([value]))
        elif 0 <= value < 65536:
            self.op(b"M" + struct.pack("<H", value))
        elif -2**31 <= value < 2**31:
            self.op(b"J" + struct.pack("<i", value))
        else:
            data = pickle.encode_long(value)
            self.op(b"\x8a" + bytes([len(data)]) + data)  # LONG1

    def tuple_(self, items: tuple) -> None:
        if len(items) == 0:
            self.op(b")")
            return
        if len(items) > 3:
            self.op(b"(")
        for item in items:
            self.emit(item)
        self.op({1: b"\x85", 2: b"\x86", 3: b"\x87"}.get(len(items), b"t"))

    def items(self, mapping: dict) -> None:
        if mapping:
            self.op(b"(")
            for key, value in mapping.items():
                self.emit(key)
                self.emit(value)
            self.op(b"u")  # SETITEMS

    def tensor(self, array: np.ndarray) -> None:
        dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
        storage_name = _STORAGE_FOR_DTYPE.get(np.dtype(dtype))
        if storage_name is None:
            raise TypeError(f"save_torch_checkpoint cannot store {array.dtype} arrays")
        array = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")  # keeps 0-d shapes
        key = str(len(self.storages))
        self.storages.append(array)
        self.global_("torch._utils", "_rebuild_tensor_v2")
        self.op(b"((")  # MARK for the args, MARK for the persistent id
        self.emit("storage")
        self.global_("torch", storage_name)
        self.emit(key)
        self.emit("cpu")
        self.int_(array.size)
        self.op(b"tQ")  # TUPLE, BINPERSID
        self.int_(0)  # storage offset
        self.tuple_(tuple(array.shape))
        self.tuple_(tuple(int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)))  # C strides
        self.op(b"\x89")  # requires_grad=False
        self.global_("collections", "OrderedDict")
        self.op(b")R")  # backward_hooks=OrderedDict()
        self.op(b"tR")  # TUPLE, REDUCE

    def pickle_bytes(self) -> bytes:
        return b"".join(self.chunks) + b"."


def _write_aligned(archive: zipfile.ZipFile, name: str, data, nbytes: int, alignment: int = 64) -> None:
    """Write one stored entry whose data starts on an ``alignment``-byte boundary (torch pads
    the local header's extra field the same way, so ``torch.load(mmap=True)`` works)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    info.file_size = nbytes
    zip64 = nbytes * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then appends a 20-byte zip64 extra
    header_end = archive.fp.tell() + 30 + len(name.encode("utf-8")) + 4 + (20 if zip64 else 0)
    pad = -header_end % alignment
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad  # extra-field id "FB", as torch
    with archive.open(info, "w", force_zip64=zip64) as out:
        if isinstance(data, np.ndarray):
            flat = data.reshape(-1).view(np.uint8)
            for start in range(0, flat.size, 1 << 26):
                out.write(flat[start:start + (1 << 26)])
        else:
            out.write(data)


def save_torch_checkpoint(obj: Any, path: str | os.PathLike) -> None:
    """Write ``obj`` (nested dict/OrderedDict/list/tuple of numpy arrays, str, int, float,
    bool, None) as a ``torch.save``-compatible zip file, without torch. Arrays become tensors
    (each with its own storage); ``torch.load(path, weights_only=True)`` reads the result."""
    emitter = _Emitter()
    emitter.emit(obj)
    prefix = "archive/"
    with zipfile.ZipFile(os.fspath(path), "w", compression=zipfile.ZIP_STORED) as archive:
        pickled = emitter.pickle_bytes()
        _write_aligned(archive, prefix + "data.pkl", pickled, len(pickled))
        for name, text in ((".format_version", b"1"), (".storage_alignment", b"64"), ("byteorder", b"little")):
            _write_aligned(archive, prefix + name, text, len(text))
        for key, array in enumerate(emitter.storages):
            _write_aligned(archive, f"{prefix}data/{key}", array, array.nbytes)
        _write_aligned(archive, prefix + "version", b"3\n", 2)
