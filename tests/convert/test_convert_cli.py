"""python -m lipsync_jax.convert: dispatch, config loading, dtype, saving, and one-line errors."""

import json
import os
import pickle
import sys
import types
import zipfile

import ml_dtypes
import numpy as np
import pytest

from lipsync_jax.checkpoints import read_metadata, restore_params
from lipsync_jax.convert import __main__ as cli
from lipsync_jax.convert.rules import ConversionError, ConversionReport
from lipsync_jax.convert.safetensors_io import save_safetensors
from lipsync_jax.golden.core import load_fixture
from tests.helpers.paths import golden_path
from tests.helpers.torch_writer import save_torch_checkpoint


@pytest.fixture
def fake_converter(monkeypatch):
    """Routes the ``syncnet`` subcommand to a recording stand-in converter module."""
    calls = []
    module = types.ModuleType("fake_converter")

    def convert_file(src, config):
        calls.append((src, config))
        if config and config.get("fail"):
            raise ConversionError(f"{src} does not match the model config: 3 missing")
        report = ConversionReport(converted=2, skipped=["buffer"])
        if config and config.get("leave_missing"):
            report.missing.append("head/kernel")
        return {"dense": {"kernel": np.ones((2, 3), np.float32)}, "ids": np.arange(3, dtype=np.int32)}, report

    module.convert_file = convert_file
    monkeypatch.setitem(sys.modules, "fake_converter", module)
    monkeypatch.setitem(cli.CONVERTERS, "syncnet", "fake_converter")
    return calls


@pytest.fixture
def src(tmp_path):
    path = tmp_path / "weights.pt"
    save_torch_checkpoint({"global_step": 1, "state_dict": {"w": np.ones(2, np.float32)}}, path)
    return str(path)


def _config_py(tmp_path, body="model=dict(layers=2, widths=(8, 16)), run=dict(seed=1)"):
    path = tmp_path / "cfg.py"
    path.write_text(f"import ml_collections\n\ndef get_config():\n    return ml_collections.ConfigDict(dict({body}))\n")
    return str(path)


def test_dispatch_passes_model_section_casts_and_saves(tmp_path, src, fake_converter, capsys):
    dst = tmp_path / "out"
    code = cli.main(["syncnet", "--src", src, "--config", _config_py(tmp_path), "--dst", str(dst),
                     "--dtype", "bfloat16"])
    assert code == 0
    assert fake_converter == [(src, {"layers": 2, "widths": [8, 16]})]
    params, config = restore_params(dst)
    assert config == {"layers": 2, "widths": [8, 16]}
    assert params["dense"]["kernel"].dtype == ml_dtypes.bfloat16
    assert params["ids"].dtype == np.int32  # integers are not cast
    metadata = read_metadata(dst)
    assert metadata["kind"] == "syncnet" and metadata["source"] == os.path.abspath(src)
    assert metadata["dtype"] == "bfloat16" and metadata["converted"] == 2 and metadata["skipped"] == 1
    out = capsys.readouterr().out
    assert "syncnet: 2 converted, 1 skipped, 0 missing, 0 unexpected" in out and str(dst) in out
    assert "skipped on purpose: buffer" in out


def test_whole_config_without_model_section_and_json_config(tmp_path, src, fake_converter):
    cli.main(["syncnet", "--src", src, "--config", _config_py(tmp_path, "dims=dict(n_mels=80)"),
              "--dst", str(tmp_path / "a")])
    json_path = tmp_path / "cfg.json"
    json_path.write_text(json.dumps({"width": 4}))
    cli.main(["syncnet", "--src", src, "--config", str(json_path), "--dst", str(tmp_path / "b")])
    assert [config for _, config in fake_converter] == [{"dims": {"n_mels": 80}}, {"width": 4}]


def test_config_is_optional_only_for_some_kinds(tmp_path, src, fake_converter, monkeypatch, capsys):
    assert cli.main(["syncnet", "--src", src, "--dst", str(tmp_path / "x")]) == 1
    assert "--config is required for syncnet" in capsys.readouterr().err
    monkeypatch.setitem(cli.CONVERTERS, "whisper", "fake_converter")
    whisper_src = str(tmp_path / "tiny.pt")
    dims = {"n_mels": 80, "n_audio_layer": 4}
    save_torch_checkpoint({"dims": dims, "model_state_dict": {"w": np.ones(1, np.float32)}}, whisper_src)
    assert cli.main(["whisper", "--src", whisper_src, "--dst", str(tmp_path / "y")]) == 0
    assert fake_converter[-1] == (whisper_src, None)
    assert restore_params(tmp_path / "y")[1] == {"dims": dims}  # the checkpoint's dims are stored


def test_missing_converter_exits_2(tmp_path, src, monkeypatch, capsys):
    monkeypatch.setitem(cli.CONVERTERS, "videomae", "lipsync_jax.convert._no_such_converter")
    assert cli.main(["videomae", "--src", src, "--config", _config_py(tmp_path), "--dst", str(tmp_path / "o")]) == 2
    assert "converter for videomae is not available yet" in capsys.readouterr().err


def test_unknown_kind_is_a_usage_error(tmp_path, src):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["gan", "--src", src, "--dst", str(tmp_path / "o")])
    assert exit_info.value.code == 2


@pytest.mark.parametrize("case", ["missing_src", "missing_config", "conversion_error", "unfilled_params", "malicious"])
def test_errors_are_one_line_exit_1_and_save_nothing(tmp_path, src, fake_converter, capsys, case):
    config = _config_py(tmp_path)
    if case == "missing_src":
        src, expect = str(tmp_path / "absent.pt"), "absent.pt: no such checkpoint"
    elif case == "missing_config":
        config, expect = str(tmp_path / "nope.py"), "nope.py"
    elif case == "conversion_error":
        config, expect = _config_py(tmp_path, "model=dict(fail=True)"), "does not match the model config"
    elif case == "unfilled_params":
        config, expect = _config_py(tmp_path, "model=dict(leave_missing=True)"), "1 missing: head/kernel"
    else:
        src = str(tmp_path / "evil.pt")

        class Evil:
            def __reduce__(self):
                return os.system, ("echo pwned",)

        with zipfile.ZipFile(src, "w") as archive:
            archive.writestr("archive/data.pkl", pickle.dumps({"state_dict": Evil()}, protocol=2))
        fake_converter_module = sys.modules["fake_converter"]
        fake_converter_module.convert_file = lambda s, c: __import__(
            "lipsync_jax.convert.checkpoint_io", fromlist=["read_state_dict"]).read_state_dict(s)
        expect = "refusing to load posix.system"
    dst = tmp_path / "out"
    assert cli.main(["syncnet", "--src", src, "--config", config, "--dst", str(dst)]) == 1
    captured = capsys.readouterr()
    assert expect in captured.err and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert not dst.exists()


def test_real_vae_conversion_from_a_diffusers_folder(tmp_path, capsys):
    fixture = load_fixture(golden_path("vae_tiny.npz"))
    folder = tmp_path / "sd-vae-tiny"
    folder.mkdir()
    save_safetensors(fixture.weights, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(fixture.config))
    dst = tmp_path / "vae"
    assert cli.main(["vae", "--src", str(folder), "--dst", str(dst), "--dtype", "float32"]) == 0
    params, config = restore_params(dst)
    assert config == fixture.config  # no --config: the folder's config.json is stored
    leaves = [leaf for group in [params] for leaf in _leaves(group)]
    assert all(leaf.dtype == np.float32 for leaf in leaves)
    assert sum(leaf.size for leaf in leaves) == sum(w.size for w in fixture.weights.values())
    assert read_metadata(dst)["converted"] == len(fixture.weights)
    assert f"vae: {len(fixture.weights)} converted" in capsys.readouterr().out


def _leaves(tree):
    for value in tree.values():
        yield from (_leaves(value) if isinstance(value, dict) else [value])
