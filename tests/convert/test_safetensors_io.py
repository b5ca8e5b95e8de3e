"""Our safetensors reader/writer: the reference library's output, round trips, broken files."""

import json
import os
import struct

import ml_dtypes
import numpy as np
import pytest

from lipsync_jax.checkpoints import CheckpointFormatError
from lipsync_jax.convert.safetensors_io import load_safetensors, safetensors_metadata, save_safetensors
from tests.helpers.paths import DATA_DIR

OFFICIAL = os.path.join(DATA_DIR, "safetensors", "official.safetensors")


def test_reads_reference_library_output():
    loaded = load_safetensors(OFFICIAL)
    with np.load(os.path.join(DATA_DIR, "safetensors", "official_expected.npz")) as npz:
        expected = {key: npz[key] for key in npz.files}
    assert sorted(loaded) == sorted(expected)
    for key, want in expected.items():
        assert loaded[key].shape == want.shape, key
        np.testing.assert_array_equal(loaded[key].astype(want.dtype), want, err_msg=key)
    assert loaded["norm.weight"].dtype == ml_dtypes.bfloat16
    assert loaded["conv_in.bias"].dtype == np.float16 and loaded["steps"].dtype == np.int64
    assert safetensors_metadata(OFFICIAL) == {"format": "pt", "note": "tiny"}


def test_round_trip_dtypes_metadata_and_order(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((3, 4)).astype(np.float32)
    tensors = {
        "z.f32_transposed": base.T,
        "a.bf16": base.astype(ml_dtypes.bfloat16),
        "f16": base.astype(np.float16)[:, 1:],
        "f64": base.astype(np.float64),
        "i64": np.arange(-2, 3, dtype=np.int64),
        "i32": np.arange(3, dtype=np.int32),
        "i8": np.array([-128, 5], np.int8),
        "u8": np.array([7], np.uint8),
        "bool": np.array([[True, False]]),
        "scalar": np.array(2.0, np.float32),
        "empty": np.zeros((2, 0), np.float32),
        "big_endian": np.arange(4, dtype=">i4"),
    }
    path = tmp_path / "t.safetensors"
    save_safetensors(tensors, path, metadata={"source": "test"})
    loaded = load_safetensors(path)
    assert list(loaded) == list(tensors)  # header keeps the caller's order
    for key, want in tensors.items():
        assert loaded[key].dtype == want.dtype.newbyteorder("=") and loaded[key].shape == want.shape, key
        np.testing.assert_array_equal(loaded[key], want, err_msg=key)
        assert loaded[key].flags.aligned, key
    assert safetensors_metadata(path) == {"source": "test"}
    header_len = struct.unpack("<Q", path.read_bytes()[:8])[0]
    assert header_len % 8 == 0


def test_writer_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="complex64"):
        save_safetensors({"c": np.zeros(2, np.complex64)}, tmp_path / "c.safetensors")
    with pytest.raises(TypeError, match="metadata"):
        save_safetensors({"x": np.zeros(1)}, tmp_path / "m.safetensors", metadata={"step": 3})


def _write_raw(path, header: dict, data: bytes, header_len: int | None = None) -> str:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)
    return str(path)


def test_truncated_file_names_file_and_problem(tmp_path):
    raw = open(OFFICIAL, "rb").read()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:-10])  # data buffer cut short
    with pytest.raises(CheckpointFormatError, match="cut.safetensors.*beyond the .*data buffer \\(truncated"):
        load_safetensors(cut)
    header_cut = tmp_path / "header_cut.safetensors"
    header_cut.write_bytes(raw[:40])  # header itself cut
    with pytest.raises(CheckpointFormatError, match="header_cut.safetensors: header length .* beyond the end"):
        load_safetensors(header_cut)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(CheckpointFormatError, match="tiny.safetensors: only 3 bytes"):
        load_safetensors(tiny)


@pytest.mark.parametrize("header, data, message", [
    ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, bytes(8), "spans 4 bytes .* needs 8"),
    ({"w": {"dtype": "Q7", "shape": [1], "data_offsets": [0, 1]}}, bytes(1), "unsupported dtype 'Q7'"),
    ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, bytes(4), "invalid shape"),
    ({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, bytes(4), "invalid data_offsets"),
    ({"w": {"dtype": "F32", "shape": [1]}}, bytes(4), "lacks dtype/shape/data_offsets"),
    ([1, 2], b"", "not a JSON object"),
])
def test_corrupt_headers(tmp_path, header, data, message):
    path = _write_raw(tmp_path / "bad.safetensors", header, data)
    with pytest.raises(CheckpointFormatError, match=f"bad.safetensors.*{message}"):
        load_safetensors(path)


def test_invalid_json_and_missing_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(struct.pack("<Q", 4) + b"{{{{")
    with pytest.raises(CheckpointFormatError, match="junk.safetensors: header is not valid JSON"):
        load_safetensors(path)
    with pytest.raises(FileNotFoundError, match="absent.safetensors"):
        load_safetensors(tmp_path / "absent.safetensors")
