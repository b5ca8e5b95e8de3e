"""The torch-free .pt reader/writer: genuine torch files, round trips, malicious and broken files."""

import collections
import os
import pickle
import struct
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lipsync_jax.checkpoints import CheckpointNotFoundError
from lipsync_jax.convert.torch_pickle import CheckpointFormatError, UnsafeCheckpointError, load_torch_checkpoint
from tests.helpers.paths import DATA_DIR
from tests.helpers.torch_writer import save_torch_checkpoint

TORCH_PT = os.path.join(DATA_DIR, "torch_pt")


def _expected(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(TORCH_PT, f"{name}_expected.npz")) as npz:
        return {key: npz[key] for key in npz.files}


def _flat(obj, prefix=""):
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flat(value, f"{prefix}{key}/"))
        return out
    return {prefix[:-1]: obj} if isinstance(obj, np.ndarray) else {}


def _zip_with_pickle(path, pickled: bytes, storages: dict[str, bytes] | None = None) -> str:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickled)
        archive.writestr("archive/byteorder", "little")
        for key, data in (storages or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return str(path)


# -- genuine torch.save output ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["views", "module", "extras"])
def test_reads_genuine_torch_files(name):
    loaded = _flat(load_torch_checkpoint(os.path.join(TORCH_PT, f"{name}.pt")))
    expected = _expected(name)
    assert sorted(loaded) == sorted(expected)
    for key, want in expected.items():
        got = loaded[key]
        assert got.shape == want.shape, key
        np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=key)
        if got.dtype != ml_dtypes.bfloat16:
            assert got.dtype == want.dtype, key


def test_genuine_views_keep_dtypes_and_sharing_semantics():
    checkpoint = load_torch_checkpoint(os.path.join(TORCH_PT, "views.pt"))
    assert checkpoint["global_step"] == 1234
    state = checkpoint["state_dict"]
    assert isinstance(state, collections.OrderedDict)
    assert state["bfloat16"].dtype == ml_dtypes.bfloat16
    assert state["half"].dtype == np.float16
    np.testing.assert_array_equal(state["transposed"], state["base"].T)
    np.testing.assert_array_equal(state["offset_slice"], state["base"][2:, 3:])
    np.testing.assert_array_equal(state["strided"], state["base"][::2, ::3])
    np.testing.assert_array_equal(state["bfloat16_t"], state["bfloat16"].T)
    assert state["scalar"].shape == () and state["empty"].shape == (0, 3)


def test_genuine_module_state_dict_and_python_extras():
    state = load_torch_checkpoint(os.path.join(TORCH_PT, "module.pt"))
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert state._metadata[""] == {"version": 1}  # OrderedDict attribute restored via BUILD
    extras = load_torch_checkpoint(os.path.join(TORCH_PT, "extras.pt"))
    assert extras["args"].lr == 1e-4 and extras["args"].name == "stage2"
    assert extras["best_loss"] == 0.25 and extras["epoch"] == 3
    assert extras["dtype"] == np.float16 and extras["device"] == "cpu"
    assert extras["size"] == (2, 3) and extras["raw"] == b"abc" and extras["tags"] == {"a", "b"}


# -- our writer ------------------------------------------------------------------------------

def test_round_trip_all_dtypes_and_containers(tmp_path):
    rng = np.random.default_rng(0)
    base = rng.standard_normal((4, 6)).astype(np.float32)
    state = collections.OrderedDict([
        ("f32_transposed", base.T),  # non-contiguous input
        ("f16", base.astype(np.float16)),
        ("bf16", base.astype(ml_dtypes.bfloat16)[:, ::2]),
        ("f64", base.astype(np.float64)),
        ("i64", np.arange(-5, 5, dtype=np.int64)),
        ("i32", np.arange(3, dtype=np.int32)),
        ("i8", np.array([-128, 127], np.int8)),
        ("u8", np.array([0, 255], np.uint8)),
        ("bool", np.array([[True], [False]])),
        ("scalar", np.array(1.5, np.float32)),
        ("empty", np.zeros((0, 2), np.float16)),
        ("big_endian", np.arange(3, dtype=">f4")),
    ])
    obj = {"global_step": 2**40, "neg": -70000, "ratio": 0.5, "name": "ünï", "none": None, "flag": True,
           "list": [1, (2, 3), (1, 2, 3, 4), []], "np_int": np.int64(7), "state_dict": state}
    path = tmp_path / "round.pt"
    save_torch_checkpoint(obj, path)
    loaded = load_torch_checkpoint(path)
    assert isinstance(loaded["state_dict"], collections.OrderedDict)
    assert list(loaded["state_dict"]) == list(state)
    for key, want in state.items():
        got = loaded["state_dict"][key]
        assert got.dtype == want.dtype.newbyteorder("=") and got.shape == want.shape, key
        np.testing.assert_array_equal(got, want, err_msg=key)
    for key in ("global_step", "neg", "ratio", "name", "none", "flag", "list", "np_int"):
        assert loaded[key] == obj[key], key


def test_written_storages_are_64_byte_aligned_like_torch(tmp_path):
    path = tmp_path / "aligned.pt"
    save_torch_checkpoint({"a": np.ones(3, np.float32), "bb": np.ones(5, np.float16)}, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
            assert info.compress_type == zipfile.ZIP_STORED


def test_writer_rejects_unsupported_values(tmp_path):
    with pytest.raises(TypeError, match="set"):
        save_torch_checkpoint({"x": {1, 2}}, tmp_path / "bad.pt")


# -- malicious files -------------------------------------------------------------------------

class _RunsShellCommand:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _EvaluatesCode:
    def __init__(self, code):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


@pytest.mark.parametrize("protocol", [2, 4])
def test_refuses_os_system_pickle_without_running_it(tmp_path, protocol):
    marker = tmp_path / "pwned"
    # allowed globals (a numpy array) come first; the shell command must still never run
    payload = {"state_dict": {"w": np.zeros(1)}, "x": _RunsShellCommand(f"touch {marker}")}
    path = _zip_with_pickle(tmp_path / "evil.pt", pickle.dumps(payload, protocol=protocol))
    with pytest.raises(UnsafeCheckpointError) as error:
        load_torch_checkpoint(path)
    assert "system" in str(error.value) and "evil.pt" in str(error.value)
    assert "contains code" in str(error.value)
    assert not marker.exists()


def test_refuses_builtins_eval_via_reduce(tmp_path):
    marker = tmp_path / "pwned"
    pickled = pickle.dumps(_EvaluatesCode(f"open({str(marker)!r}, 'w')"), protocol=2)
    path = _zip_with_pickle(tmp_path / "eval.pt", pickled)
    with pytest.raises(UnsafeCheckpointError, match="builtins.eval"):
        load_torch_checkpoint(path)
    assert not marker.exists()
    assert issubclass(UnsafeCheckpointError, ValueError)


def test_refuses_model_classes(tmp_path):
    pickled = pickle.dumps(collections.Counter(a=1), protocol=2)  # any non-allow-listed class
    with pytest.raises(UnsafeCheckpointError, match="collections.Counter"):
        load_torch_checkpoint(_zip_with_pickle(tmp_path / "cls.pt", pickled))


def test_out_of_bounds_tensor_is_refused(tmp_path):
    # A tensor of 100 floats claimed on a 4-float storage: must not read past the buffer.
    pickled = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
               b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
               b"K\x00Kd\x85K\x01\x85\x89}tR.")
    path = _zip_with_pickle(tmp_path / "oob.pt", pickled, {"0": bytes(16)})
    with pytest.raises(CheckpointFormatError, match="oob.pt.*only 4 elements"):
        load_torch_checkpoint(path)


# -- broken files ----------------------------------------------------------------------------

def test_truncated_file_is_a_format_error(tmp_path):
    raw = open(os.path.join(TORCH_PT, "views.pt"), "rb").read()
    path = tmp_path / "truncated.pt"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointFormatError, match="truncated.pt.*truncated or corrupt"):
        load_torch_checkpoint(path)


def test_short_storage_record_is_a_format_error(tmp_path):
    pickled = (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n((X\x07\x00\x00\x00storage"
               b"ctorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuK\x04tQ"
               b"K\x00K\x04\x85K\x01\x85\x89}tR.")
    path = _zip_with_pickle(tmp_path / "short.pt", pickled, {"0": bytes(10)})
    with pytest.raises(CheckpointFormatError, match="short.pt.*has 10 bytes, expected 16"):
        load_torch_checkpoint(path)


def test_other_bad_inputs(tmp_path):
    with pytest.raises(CheckpointFormatError, match="legacy \\(pre-1.6\\)"):
        load_torch_checkpoint(os.path.join(TORCH_PT, "legacy.pt"))
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointFormatError, match="notes.pt: not a PyTorch zip checkpoint"):
        load_torch_checkpoint(text)
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        load_torch_checkpoint(tmp_path / "nothere.pt")
    with pytest.raises(CheckpointNotFoundError):
        load_torch_checkpoint(tmp_path / "nothere.pt")
    garbled = _zip_with_pickle(tmp_path / "garbled.pt", b"\x80\x02}q\x00(X")
    with pytest.raises(CheckpointFormatError, match="garbled.pt: corrupt checkpoint"):
        load_torch_checkpoint(garbled)


def test_build_is_limited_to_containers(tmp_path):
    # GLOBAL collections.OrderedDict (the class itself) + BUILD would set attributes on the class.
    on_class = b"\x80\x02ccollections\nOrderedDict\n}X\x01\x00\x00\x00xK\x01sb."
    with pytest.raises(UnsafeCheckpointError, match="sets state on a type"):
        load_torch_checkpoint(_zip_with_pickle(tmp_path / "build_class.pt", on_class))
    assert not hasattr(collections.OrderedDict, "x")
    on_marker = b"\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb."
    with pytest.raises(UnsafeCheckpointError, match="sets state on a _StorageType"):
        load_torch_checkpoint(_zip_with_pickle(tmp_path / "build_marker.pt", on_marker))
    on_dtype = b"\x80\x02ctorch\nfloat32\n(K\x03X\x01\x00\x00\x00>NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb."
    with pytest.raises(CheckpointFormatError, match="unexpected numpy dtype state"):
        load_torch_checkpoint(_zip_with_pickle(tmp_path / "build_dtype.pt", on_dtype))


def test_plain_numpy_values_load_but_object_arrays_do_not(tmp_path):
    pickled = pickle.dumps({"arr": np.arange(3.0), "scalar": np.float32(2.5)}, protocol=2)
    loaded = load_torch_checkpoint(_zip_with_pickle(tmp_path / "np.pt", pickled))
    np.testing.assert_array_equal(loaded["arr"], np.arange(3.0))
    assert loaded["scalar"] == np.float32(2.5) and loaded["scalar"].dtype == np.float32
    objects = pickle.dumps({"arr": np.array([1, None], dtype=object)}, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="object array"):
        load_torch_checkpoint(_zip_with_pickle(tmp_path / "obj.pt", objects))


def test_contiguous_tensors_are_read_only_views_of_the_file(tmp_path):
    path = tmp_path / "mapped.pt"
    save_torch_checkpoint({"w": np.arange(1000, dtype=np.float32).reshape(10, 100)}, path)
    weight = load_torch_checkpoint(path)["w"]
    assert not weight.flags.owndata and not weight.flags.writeable
    np.testing.assert_array_equal(weight, np.arange(1000, dtype=np.float32).reshape(10, 100))


def test_zip64_entries_stay_aligned(tmp_path, monkeypatch):
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 64)  # force zip64 records without writing 2 GB
    path = tmp_path / "z64.pt"
    arrays = {"a": np.arange(100, dtype=np.float32), "b": np.ones(7, np.float16)}
    save_torch_checkpoint(arrays, path)
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
            assert (info.header_offset + 30 + name_len + extra_len) % 64 == 0, info.filename
    loaded = load_torch_checkpoint(path)
    for key, want in arrays.items():
        np.testing.assert_array_equal(loaded[key], want)


def test_folder_path_is_a_format_error(tmp_path):
    with pytest.raises(CheckpointFormatError, match="is a folder"):
        load_torch_checkpoint(tmp_path)
