"""Read and write ``.safetensors`` files (our own implementation; no safetensors package).

Layout: an 8-byte little-endian header length ``N``, then ``N`` bytes of JSON
``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}}``
(space-padded), then the data buffer: every tensor's little-endian C-order bytes at
``[begin, end)`` relative to the start of the buffer, with no holes. Loading memory-maps the
buffer, so tensors are read-only views and a multi-GB file costs no RAM until used.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from typing import Any

import ml_dtypes
import numpy as np

from lipsync_jax.checkpoints import CheckpointFormatError, CheckpointNotFoundError

__all__ = ["load_safetensors", "save_safetensors", "safetensors_metadata", "CheckpointFormatError"]

DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype) for name, dtype in {
        "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F32": np.float32, "F64": np.float64,
        "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
        "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_,
        "F8_E4M3": ml_dtypes.float8_e4m3fn, "F8_E5M2": ml_dtypes.float8_e5m2,
    }.items()
}
_NAMES = {dtype: name for name, dtype in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024  # the reference implementation's limit too


def _read_header(path: str) -> tuple[dict[str, Any], int, int]:
    """Returns (header dict, byte offset of the data buffer, data buffer length), validated."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such safetensors file")
    file_size = os.path.getsize(path)
    if file_size < 8:
        raise CheckpointFormatError(f"{path}: only {file_size} bytes, too short for a safetensors header")
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > min(file_size - 8, _MAX_HEADER):
            raise CheckpointFormatError(
                f"{path}: header length {header_len} goes beyond the end of the {file_size}-byte file "
                "(truncated, or not a safetensors file)")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointFormatError(f"{path}: header is not valid JSON ({error})") from None
    if not isinstance(header, dict):
        raise CheckpointFormatError(f"{path}: header is not a JSON object")
    return header, 8 + header_len, file_size - 8 - header_len


def _check_entry(path: str, name: str, entry: Any, data_len: int) -> tuple[np.dtype, tuple[int, ...], int, int]:
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CheckpointFormatError(f"{path}: header entry {name!r} lacks dtype/shape/data_offsets")
    dtype = DTYPES.get(entry["dtype"])
    if dtype is None:
        raise CheckpointFormatError(f"{path}: tensor {name!r} has unsupported dtype {entry['dtype']!r}")
    shape, offsets = entry["shape"], entry["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointFormatError(f"{path}: tensor {name!r} has invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise CheckpointFormatError(f"{path}: tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if end - begin != nbytes:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} spans {end - begin} bytes but {entry['dtype']}{shape} needs {nbytes}")
    if end > data_len:
        raise CheckpointFormatError(
            f"{path}: tensor {name!r} data_offsets [{begin}, {end}] go beyond the {data_len}-byte data "
            "buffer (truncated file)")
    return dtype, tuple(shape), begin, end


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as read-only numpy arrays (memory-mapped), in
    header order. Raises ``CheckpointFormatError`` naming the file for truncated/corrupt files."""
    path = os.fspath(path)
    header, data_start, data_len = _read_header(path)
    entries = {name: _check_entry(path, name, entry, data_len)
               for name, entry in header.items() if name != "__metadata__"}
    buffer = (np.asarray(np.memmap(path, dtype=np.uint8, mode="r", offset=data_start, shape=(data_len,)))
              if data_len else np.zeros(0, np.uint8))
    return {name: buffer[begin:end].view(dtype).reshape(shape)
            for name, (dtype, shape, begin, end) in entries.items()}


def safetensors_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The free-form ``__metadata__`` string map of a ``.safetensors`` file ({} if none)."""
    path = os.fspath(path)
    metadata = _read_header(path)[0].get("__metadata__") or {}
    if not isinstance(metadata, dict):
        raise CheckpointFormatError(f"{path}: __metadata__ is not a JSON object")
    return metadata


def save_safetensors(tensors: Mapping[str, Any], path: str | os.PathLike,
                     metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (name -> numpy/jax array) and an optional ``metadata`` string map.
    The data is laid out by decreasing item size so every tensor is aligned in the file."""
    arrays: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        array = np.asarray(value)
        dtype = array.dtype.newbyteorder("=") if array.dtype.byteorder == ">" else array.dtype
        if np.dtype(dtype) not in _NAMES:
            raise TypeError(f"save_safetensors cannot store {name!r} of dtype {array.dtype}")
        arrays[str(name)] = np.asarray(array, dtype=dtype.newbyteorder("<"), order="C")
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map str to str")
        header["__metadata__"] = dict(metadata)
    layout = sorted(arrays, key=lambda name: (-arrays[name].dtype.itemsize, name))
    offsets, position = {}, 0
    for name in layout:
        offsets[name] = [position, position + arrays[name].nbytes]
        position += arrays[name].nbytes
    for name, array in arrays.items():  # header in the caller's order
        header[name] = {"dtype": _NAMES[np.dtype(array.dtype.newbyteorder("="))],
                        "shape": list(array.shape), "data_offsets": offsets[name]}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(os.fspath(path), "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in layout:
            f.write(arrays[name].reshape(-1).view(np.uint8))
