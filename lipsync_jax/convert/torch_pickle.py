"""Read PyTorch checkpoints (the ``torch.save`` zip format) without torch (the writer the tests
use to make such files is ``tests/helpers/torch_writer.py``).

Layout of a ``torch.save`` file (default since torch 1.6): a zip archive, entries stored
uncompressed and 64-byte aligned, all under one top-level folder ``<prefix>/``:

  <prefix>/data.pkl     pickle (protocol 2) of the saved object; every tensor is
                        ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``
                        and every storage a persistent id
                        ``("storage", torch.<Type>Storage, key, location, numel)``
  <prefix>/data/<key>   the raw little-endian bytes of that storage
  <prefix>/byteorder    "little" (absent in older files)
  <prefix>/version      "3"

Reading uses a restricted unpickler: ``find_class`` resolves only an explicit allow-list of
containers, tensor rebuild functions, storage types and dtypes, so a file that references any
other global (``os.system``, ``builtins.eval``, a model class, ...) is refused with
``UnsafeCheckpointError`` before anything runs. Tensors come back as numpy arrays; contiguous
ones are read-only views of one memory map of the file, so a 5 GB checkpoint costs no RAM
until its weights are used.
"""

from __future__ import annotations

import collections
import os
import pickle
import struct
import types
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

from lipsync_jax.checkpoints import CheckpointFormatError, CheckpointNotFoundError, UnsafeCheckpointError

__all__ = ["load_torch_checkpoint", "CheckpointFormatError", "UnsafeCheckpointError"]

# torch.<Name>Storage -> element dtype of the storage.
STORAGE_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype) for name, dtype in {
        "HalfStorage": np.float16, "BFloat16Storage": ml_dtypes.bfloat16, "FloatStorage": np.float32,
        "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32,
        "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
        "BoolStorage": np.bool_, "ComplexFloatStorage": np.complex64,
        "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
    }.items()
}

# torch.<dtype> globals (pickled dtype objects) -> numpy dtype.
TORCH_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(dtype) for name, dtype in {
        "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16,
        "float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
        "int64": np.int64, "long": np.int64, "int32": np.int32, "int": np.int32,
        "int16": np.int16, "short": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
        "complex64": np.complex64, "complex128": np.complex128,
    }.items()
}

_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_UNSUPPORTED_TENSOR_KINDS = {
    "_rebuild_qtensor": "quantized", "_rebuild_sparse_tensor": "sparse",
    "_rebuild_nested_tensor": "nested", "_rebuild_meta_tensor_no_storage": "meta (no data)",
    "_rebuild_wrapper_subclass": "tensor-subclass", "_rebuild_device_tensor_from_numpy": "numpy-backed",
}


class _StorageType:
    """Stands in for ``torch.<Name>Storage`` inside the pickle."""

    def __init__(self, name: str):
        self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
    """One storage: its raw bytes (uint8, usually a view of the file's memory map) and dtype."""

    def __init__(self, raw: np.ndarray, dtype: np.dtype):
        self.raw, self.dtype = raw, dtype


class _TensorType:
    """Stands in for ``torch.Tensor`` / ``torch.nn.Parameter`` (only used as a marker)."""


# --------------------------------------------------------------------------------------------
# Reading


class _RestrictedUnpickler(pickle._Unpickler):
    """The pure-Python unpickler (data.pkl is small, so speed does not matter) because it lets
    BUILD be restricted too: only containers may receive state, never the allow-listed
    functions, dtypes or storage markers."""

    dispatch = dict(pickle._Unpickler.dispatch)
    _BUILDABLE = (collections.OrderedDict, types.SimpleNamespace, np.ndarray)

    def load_build(self):
        inst, state = self.stack[-2], self.stack[-1]
        if isinstance(inst, np.dtype):  # numpy scalars pickle their dtype's own state: a no-op
            if not _is_own_dtype_state(inst, state):
                raise CheckpointFormatError(f"{self._path}: unexpected numpy dtype state {state!r} in data.pkl")
            self.stack.pop()
            return
        if type(inst) not in self._BUILDABLE:
            raise UnsafeCheckpointError(
                f"refusing to load {self._path}: data.pkl sets state on a "
                f"{type(self.stack[-2]).__name__}, which only code-carrying pickles do")
        super().load_build()

    dispatch[pickle.BUILD[0]] = load_build

    def __init__(self, file, path: str, read_storage):
        super().__init__(file)
        self._path = path
        self._read_storage = read_storage  # (key, nbytes) -> uint8 array
        self._storages: dict[str, _Storage] = {}
        self._allowed = self._allow_list()

    # -- globals ------------------------------------------------------------------------------
    def _allow_list(self) -> dict[tuple[str, str], Any]:
        allowed: dict[tuple[str, str], Any] = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
            ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
            ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
            ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
            ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
            ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
            ("torch", "Tensor"): _TensorType,
            ("torch.nn.parameter", "Parameter"): _TensorType,
            ("torch", "Size"): _torch_size,
            ("torch", "device"): _torch_device,
            ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
            ("builtins", "complex"): complex, ("builtins", "slice"): slice,
            ("builtins", "bytearray"): bytearray, ("builtins", "range"): range,
            ("_codecs", "encode"): _latin1_encode,  # how protocol 2 pickles ``bytes``
            ("argparse", "Namespace"): types.SimpleNamespace,
            ("numpy", "dtype"): _numpy_dtype,
        }
        for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            allowed[(module, "scalar")] = _numpy_scalar
            allowed[(module, "_reconstruct")] = _numpy_reconstruct
        allowed[("numpy", "ndarray")] = np.ndarray
        for name in STORAGE_DTYPES:
            allowed[("torch", name)] = _StorageType(name)
        allowed[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")
        for name, dtype in TORCH_DTYPES.items():
            allowed[("torch", name)] = dtype
        return allowed

    def find_class(self, module: str, name: str) -> Any:
        if module == "__builtin__":  # protocol 2 writes Python 2's name for builtins
            module = "builtins"
        found = self._allowed.get((module, name))
        if found is not None:
            return found
        if module == "torch._utils" and name in _UNSUPPORTED_TENSOR_KINDS:
            raise CheckpointFormatError(
                f"{self._path}: contains {_UNSUPPORTED_TENSOR_KINDS[name]} tensors, which this reader "
                "does not support; save plain dense tensors (e.g. tensor.to_dense().cpu())")
        raise UnsafeCheckpointError(
            f"refusing to load {module}.{name} from {self._path}: the checkpoint contains code, not "
            "just tensors (only containers, tensors, storages and dtypes are allowed). Re-save it "
            "as a plain state_dict, e.g. torch.save({'state_dict': model.state_dict()}, path).")

    # -- storages and tensors -----------------------------------------------------------------
    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
            raise CheckpointFormatError(f"{self._path}: unexpected persistent id {pid!r} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if key not in self._storages:
            nbytes = int(numel) * storage_type.dtype.itemsize
            self._storages[key] = _Storage(self._read_storage(key, nbytes), storage_type.dtype)
        return self._storages[key]

    def _rebuild_tensor(self, storage, offset, size, stride):
        return self._strided(storage, storage.dtype if isinstance(storage, _Storage) else None,
                             offset, size, stride)

    def _rebuild_tensor_v2(self, storage, offset, size, stride, requires_grad=False,
                           backward_hooks=None, metadata=None):
        dtype = storage.dtype if isinstance(storage, _Storage) else None
        return _apply_metadata(self._strided(storage, dtype, offset, size, stride), metadata)

    def _rebuild_tensor_v3(self, storage, offset, size, stride, requires_grad, backward_hooks,
                           dtype, metadata=None):
        return _apply_metadata(self._strided(storage, dtype, offset, size, stride), metadata)

    def _strided(self, storage, dtype, offset, size, stride) -> np.ndarray:
        if not isinstance(storage, _Storage) or not isinstance(dtype, np.dtype):
            raise CheckpointFormatError(f"{self._path}: malformed tensor record in data.pkl")
        size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
        if len(size) != len(stride) or min((offset, *size, *stride), default=0) < 0:
            raise CheckpointFormatError(f"{self._path}: invalid tensor size {size} / stride {stride}")
        if storage.raw.size % dtype.itemsize:
            raise CheckpointFormatError(f"{self._path}: storage of {storage.raw.size} bytes is not a "
                                        f"whole number of {dtype} elements")
        data = storage.raw.view(dtype)
        if 0 in size:
            return np.zeros(size, dtype)
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if last >= data.size:
            raise CheckpointFormatError(
                f"{self._path}: tensor of size {size} at offset {offset} reaches element {last} of a "
                f"storage with only {data.size} elements (truncated or corrupt file)")
        view = np.lib.stride_tricks.as_strided(
            data[offset:], shape=size, strides=tuple(s * dtype.itemsize for s in stride), writeable=False)
        return view if view.flags.c_contiguous else np.array(view)


def _apply_metadata(array: np.ndarray, metadata: Any) -> np.ndarray:
    """Tensors saved lazily negated / conjugated carry {"neg": True} / {"conj": True}."""
    if metadata:
        if metadata.get("neg"):
            array = -array
        if metadata.get("conj"):
            array = np.conj(array)
    return array


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None):
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    if new_type is not _TensorType:
        raise CheckpointFormatError(f"unexpected tensor type {new_type!r} in data.pkl")
    return func(*args)


def _torch_size(dims=()):
    return tuple(int(d) for d in dims)


def _torch_device(kind, index=None):
    return str(kind) if index is None else f"{kind}:{int(index)}"


def _latin1_encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise CheckpointFormatError(f"unexpected bytes encoding {encoding!r} in data.pkl")
    return text.encode("latin1")


def _numpy_dtype(spec, align=False, copy=False):
    dtype = np.dtype(spec)
    if dtype.hasobject:
        raise UnsafeCheckpointError("refusing to load a numpy object array (it may contain code)")
    return dtype


def _is_own_dtype_state(dtype: np.dtype, state: Any) -> bool:
    own = dtype.__reduce__()[2]
    native = {"<": "=", "|": "="} if np.little_endian else {">": "=", "|": "="}
    return (isinstance(state, tuple) and len(state) == len(own) and state[0] == own[0] and state[2:] == own[2:]
            and native.get(state[1], state[1]) == native.get(own[1], own[1]))


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, bytes):
        raise CheckpointFormatError(f"unexpected numpy scalar record ({dtype!r}) in data.pkl")
    return np.frombuffer(data, dtype, count=1)[0]


def _numpy_reconstruct(cls, shape, typecode):
    if cls is not np.ndarray:
        raise UnsafeCheckpointError(f"refusing to rebuild numpy array subclass {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, typecode)


class _ZipArchive:
    """The zip archive of a torch.save file, with storages memory-mapped where possible."""

    def __init__(self, path: str):
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.prefix = self._find_prefix()
        self.file_size = os.path.getsize(path)
        self._map: np.ndarray | None = None
        self._entries = {info.filename: info for info in self.zip.infolist()}

    def _find_prefix(self) -> str:
        names = self.zip.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) == 1:
            return pickles[0][: -len("data.pkl")]
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            raise CheckpointFormatError(
                f"{self.path}: is a TorchScript archive (torch.jit.save), not a torch.save checkpoint; "
                "save the model's state_dict with torch.save instead")
        raise CheckpointFormatError(
            f"{self.path}: zip archive without a single <prefix>/data.pkl record "
            f"({len(pickles)} found): not a torch.save checkpoint")

    def read(self, name: str) -> bytes | None:
        full = self.prefix + name
        return self.zip.read(full) if full in self._entries else None

    def storage(self, key: str, nbytes: int) -> np.ndarray:
        name = f"{self.prefix}data/{key}"
        info = self._entries.get(name)
        if info is None:
            raise CheckpointFormatError(f"{self.path}: storage record {name} is missing")
        if info.file_size != nbytes:
            raise CheckpointFormatError(
                f"{self.path}: storage record {name} has {info.file_size} bytes, expected {nbytes}")
        if nbytes == 0:
            return np.zeros(0, np.uint8)
        if info.compress_type != zipfile.ZIP_STORED:
            return np.frombuffer(self.zip.read(name), np.uint8)
        start = self._data_offset(info)
        if start + nbytes > self.file_size:
            raise CheckpointFormatError(
                f"{self.path}: storage record {name} ends at byte {start + nbytes}, beyond the end of "
                f"the {self.file_size}-byte file (truncated)")
        if self._map is None:
            self._map = np.asarray(np.memmap(self.path, dtype=np.uint8, mode="r"))
        return self._map[start:start + nbytes]

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        self.zip.fp.seek(info.header_offset)
        header = self.zip.fp.read(30)
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointFormatError(f"{self.path}: corrupt zip entry {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


def load_torch_checkpoint(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip format) into plain Python containers of numpy arrays.

    Raises ``UnsafeCheckpointError`` if the pickle references anything beyond containers,
    tensors, storages and dtypes, and ``CheckpointFormatError`` (naming the file) if it is
    missing, not a torch zip checkpoint, truncated or corrupt.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointFormatError(f"{path}: is a folder, expected a .pt/.pth file")
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        head = f.read(len(_LEGACY_MAGIC))
    if not zipfile.is_zipfile(path):
        if head.startswith(_LEGACY_MAGIC) or head[:1] == b"\x80":
            raise CheckpointFormatError(
                f"{path}: legacy (pre-1.6) torch format not supported, re-save with torch>=1.6 "
                "(torch.save(torch.load(path), path))")
        what = "truncated or corrupt zip archive (no central directory)" if head.startswith(b"PK") \
            else "not a PyTorch zip checkpoint"
        raise CheckpointFormatError(f"{path}: {what}")
    try:
        archive = _ZipArchive(path)
        byteorder = archive.read("byteorder")
        if byteorder not in (None, b"little"):
            raise CheckpointFormatError(f"{path}: byteorder {byteorder!r} not supported (only little-endian)")
        with archive.zip.open(archive.prefix + "data.pkl") as pkl:
            return _RestrictedUnpickler(pkl, path, archive.storage).load()
    except (CheckpointFormatError, UnsafeCheckpointError):
        raise
    except Exception as error:  # corrupt pickle or zip data: name the file, keep the cause
        raise CheckpointFormatError(f"{path}: corrupt checkpoint ({type(error).__name__}: {error})") from error
