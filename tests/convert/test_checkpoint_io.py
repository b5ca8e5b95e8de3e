"""read_state_dict: file-type dispatch, unwrapping, DDP prefixes, folders and shards."""

import collections
import json
import os

import ml_dtypes
import numpy as np
import pytest

from lipsync_jax.checkpoints import CheckpointFormatError, CheckpointNotFoundError
from lipsync_jax.convert.checkpoint_io import read_state_dict
from lipsync_jax.convert.safetensors_io import save_safetensors
from tests.helpers.paths import DATA_DIR
from tests.helpers.torch_writer import save_torch_checkpoint


def _tensors(seed=0):
    rng = np.random.default_rng(seed)
    return collections.OrderedDict([
        ("conv.weight", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        ("conv.bias", rng.standard_normal(4).astype(np.float16)),
        ("norm.weight", rng.standard_normal(4).astype(ml_dtypes.bfloat16)),
        ("steps", np.arange(3, dtype=np.int64)),
    ])


def _assert_same(got, want):
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype, key
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin", ".ckpt"])
def test_official_layout_global_step_and_state_dict(tmp_path, suffix):
    path = tmp_path / f"latentsync_unet{suffix}"
    save_torch_checkpoint({"global_step": 123, "state_dict": _tensors()}, path)
    state, extras = read_state_dict(path)
    _assert_same(state, _tensors())
    assert extras == {"global_step": 123}


@pytest.mark.parametrize("key", ["state_dict", "model_state_dict", "model", "module"])
def test_unwraps_each_default_key(tmp_path, key):
    path = tmp_path / "ckpt.pt"
    save_torch_checkpoint({"dims": {"n_mels": 80}, key: _tensors(), "note": "x"}, path)
    state, extras = read_state_dict(path)
    _assert_same(state, _tensors())
    assert extras == {"dims": {"n_mels": 80}, "note": "x"}


def test_key_order_and_custom_keys(tmp_path):
    path = tmp_path / "both.pt"
    other = {"w": np.ones(2, np.float32)}
    save_torch_checkpoint({"model": other, "state_dict": _tensors()}, path)
    state, extras = read_state_dict(path)  # "state_dict" comes first in the default keys
    _assert_same(state, _tensors())
    assert set(extras) == {"model"}
    state, _ = read_state_dict(path, keys=("model",))
    assert list(state) == ["w"]


def test_flat_state_dict_strips_ddp_prefix_and_keeps_non_tensors_as_extras(tmp_path):
    path = tmp_path / "ddp.pt"
    save_torch_checkpoint({f"module.{k}": v for k, v in _tensors().items()} | {"epoch": 4}, path)
    state, extras = read_state_dict(path)
    _assert_same(state, _tensors())
    assert extras == {"epoch": 4}
    # only stripped when every key has the prefix
    mixed = tmp_path / "mixed.pt"
    save_torch_checkpoint({"module.a": np.ones(1), "b": np.ones(1)}, mixed)
    assert sorted(read_state_dict(mixed)[0]) == ["b", "module.a"]


def test_non_tensor_entries_inside_the_state_dict_go_to_extras(tmp_path):
    path = tmp_path / "extra_state.pt"
    save_torch_checkpoint({"state_dict": {"w": np.ones(2), "layer._extra_state": {"v": 1}}}, path)
    state, extras = read_state_dict(path)
    assert list(state) == ["w"]
    assert extras["state_dict_non_tensors"] == {"layer._extra_state": {"v": 1}}


def test_genuine_torch_module_file():
    state, extras = read_state_dict(os.path.join(DATA_DIR, "torch_pt", "module.pt"))
    assert list(state) == ["0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]
    assert extras == {}


def test_safetensors_file_with_metadata(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(_tensors(), path, metadata={"format": "pt"})
    state, extras = read_state_dict(path)
    _assert_same(state, _tensors())
    assert extras == {"metadata": {"format": "pt"}}


def test_diffusers_folder_prefers_safetensors_and_returns_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    save_safetensors(_tensors(0), tmp_path / "diffusion_pytorch_model.safetensors")
    save_torch_checkpoint(_tensors(1), tmp_path / "diffusion_pytorch_model.bin")
    state, extras = read_state_dict(tmp_path)
    _assert_same(state, _tensors(0))
    assert extras["config"]["latent_channels"] == 4
    os.remove(tmp_path / "diffusion_pytorch_model.safetensors")
    state, _ = read_state_dict(tmp_path)
    _assert_same(state, _tensors(1))


def test_sharded_folder(tmp_path):
    tensors = _tensors()
    keys = list(tensors)
    save_safetensors({k: tensors[k] for k in keys[:2]}, tmp_path / "model-00001-of-00002.safetensors")
    save_safetensors({k: tensors[k] for k in keys[2:]}, tmp_path / "model-00002-of-00002.safetensors")
    weight_map = {k: f"model-0000{1 + (i >= 2)}-of-00002.safetensors" for i, k in enumerate(keys)}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    state, _ = read_state_dict(tmp_path)
    _assert_same(state, tensors)
    weight_map["ghost"] = "model-00001-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointFormatError, match="index.json: 1 indexed tensors not in the shards"):
        read_state_dict(tmp_path)


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="nothing.pt: no such checkpoint"):
        read_state_dict(tmp_path / "nothing.pt")
    with pytest.raises(FileNotFoundError):
        read_state_dict(tmp_path / "nothing.pt")
    with pytest.raises(CheckpointFormatError, match="empty_dir: folder has no weights file"):
        os.mkdir(tmp_path / "empty_dir")
        read_state_dict(tmp_path / "empty_dir")
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x89HDF")
    with pytest.raises(CheckpointFormatError, match="weights.h5: unknown checkpoint type '.h5'"):
        read_state_dict(odd)
    no_tensors = tmp_path / "opt.pt"
    save_torch_checkpoint({"optimizer": {"lr": 0.1}, "epoch": 3}, no_tensors)
    with pytest.raises(CheckpointFormatError,
                       match="opt.pt: no state dict found: top-level keys are \\['epoch', 'optimizer'\\]"):
        read_state_dict(no_tensors)
    a_list = tmp_path / "list.pt"
    save_torch_checkpoint([np.ones(1)], a_list)
    with pytest.raises(CheckpointFormatError, match="list.pt: top level is a list"):
        read_state_dict(a_list)
    bad_config = tmp_path / "bad_folder"
    bad_config.mkdir()
    (bad_config / "config.json").write_text("{not json")
    with pytest.raises(CheckpointFormatError, match="config.json: cannot read JSON"):
        read_state_dict(bad_config)
