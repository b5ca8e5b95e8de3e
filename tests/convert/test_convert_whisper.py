"""Whisper converter: OpenAI tiny.pt layout, Hugging Face layout (golden keys renamed per HF's
published naming), dims from the file, the position-table buffer, and clear mismatch errors."""

import json
import re

import numpy as np
import pytest

from lipsync_jax.audio.features import AudioFeatureExtractor
from lipsync_jax.audio.whisper_encoder import WhisperEncoderConfig, sinusoids
from lipsync_jax.convert.rules import ConversionError
from lipsync_jax.convert.safetensors_io import save_safetensors
from lipsync_jax.convert.whisper import convert_file, convert_state_dict, infer_config
from lipsync_jax.golden.core import load_fixture, rel_l2
from lipsync_jax.tree_utils import flatten_tree
from tests.helpers.paths import golden_path
from tests.helpers.torch_writer import save_torch_checkpoint

# OpenAI -> Hugging Face (transformers' WhisperForConditionalGeneration) key naming
HF_RENAMES = [
    (r"^encoder\.positional_embedding$", "model.encoder.embed_positions.weight"),
    (r"^encoder\.ln_post\.", "model.encoder.layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.attn\.query\.", r"model.encoder.layers.\1.self_attn.q_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.key\.", r"model.encoder.layers.\1.self_attn.k_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.value\.", r"model.encoder.layers.\1.self_attn.v_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn\.out\.", r"model.encoder.layers.\1.self_attn.out_proj."),
    (r"^encoder\.blocks\.(\d+)\.attn_ln\.", r"model.encoder.layers.\1.self_attn_layer_norm."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.0\.", r"model.encoder.layers.\1.fc1."),
    (r"^encoder\.blocks\.(\d+)\.mlp\.2\.", r"model.encoder.layers.\1.fc2."),
    (r"^encoder\.blocks\.(\d+)\.mlp_ln\.", r"model.encoder.layers.\1.final_layer_norm."),
    (r"^encoder\.(conv[12])\.", r"model.encoder.\1."),
]


def _to_hf(key):
    for pattern, repl in HF_RENAMES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    raise AssertionError(f"no HF name for {key}")


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("whisper_audio.npz"))


@pytest.fixture(scope="module")
def openai_params(fixture):
    params, report = convert_state_dict(fixture.weights_f32(), fixture.config)
    assert report.problem_count() == 0, report.summary()
    return params


def _assert_same_tree(a, b):
    fa, fb = flatten_tree(a), flatten_tree(b)
    assert fa.keys() == fb.keys()
    for path in fa:
        np.testing.assert_array_equal(np.asarray(fa[path]), np.asarray(fb[path]), err_msg="/".join(path))


def test_openai_layout_uses_the_stored_position_table(fixture, openai_params):
    np.testing.assert_array_equal(openai_params["positional_embedding"],
                                  fixture.weights["encoder.positional_embedding"])
    # conv kernels channels-last (k, in, out), linear kernels (in, out), k without bias
    np.testing.assert_array_equal(openai_params["conv1"]["kernel"],
                                  fixture.weights_f32()["encoder.conv1.weight"].transpose(2, 1, 0))
    assert "bias" not in openai_params["blocks_0"]["attn"]["key"]


def test_huggingface_layout_converts_to_the_same_params(fixture, openai_params):
    hf = {_to_hf(k): v for k, v in fixture.weights_f32().items()}
    hf["model.decoder.layers.0.fc1.weight"] = np.zeros((1536, 384), np.float32)
    hf["model.decoder.embed_tokens.weight"] = np.zeros((10, 384), np.float32)
    hf["proj_out.weight"] = np.zeros((10, 384), np.float32)
    hf_config = {"num_mel_bins": 80, "max_source_positions": 1500, "d_model": 384,
                 "encoder_attention_heads": 6, "encoder_layers": 4}
    params, report = convert_state_dict(hf, hf_config)
    assert report.problem_count() == 0, report.summary()
    assert sorted(report.skipped) == ["model.decoder.embed_tokens.weight", "model.decoder.layers.0.fc1.weight",
                                      "proj_out.weight"]
    _assert_same_tree(params, openai_params)
    # a bare WhisperModel/encoder state dict without the "model." prefix works too
    bare = {k[len("model."):]: v for k, v in hf.items() if k.startswith("model.encoder.")}
    params_bare, report_bare = convert_state_dict(bare, hf_config)
    assert report_bare.problem_count() == 0
    _assert_same_tree(params_bare, openai_params)
    assert infer_config(hf) == WhisperEncoderConfig.from_config(fixture.config)


def test_missing_position_table_is_computed(fixture):
    weights = {k: v for k, v in fixture.weights_f32().items() if k != "encoder.positional_embedding"}
    params, report = convert_state_dict(weights, fixture.config)
    assert report.problem_count() == 0
    np.testing.assert_array_equal(params["positional_embedding"], sinusoids(1500, 384))
    np.testing.assert_allclose(params["positional_embedding"], fixture.weights["encoder.positional_embedding"],
                               atol=2e-4)  # float32 sin/cos of large arguments differ in the last bits
    # the embeddings barely notice the recomputed table
    audio = fixture.inputs["audio_16k"]
    embeddings = AudioFeatureExtractor(params, fixture.config).clip_embeddings(audio)
    assert rel_l2(embeddings, fixture.outputs["layer_embeddings"]) < 1e-4


def test_wrong_dims_raise_a_readable_error(fixture):
    dims = dict(fixture.config["dims"], n_audio_layer=3)
    _, report = convert_state_dict(fixture.weights_f32(), dims)
    with pytest.raises(ConversionError, match=r"encoder\.blocks\.3"):
        report.raise_if_problems("Whisper checkpoint tiny.pt")
    dims = dict(fixture.config["dims"], n_audio_state=192)
    _, report = convert_state_dict(fixture.weights_f32(), dims)
    assert report.mismatched and "got (3, 80, 384), want (3, 80, 192)" in " ".join(report.mismatched)
    with pytest.raises(ValueError, match="divisible by n_audio_head"):
        WhisperEncoderConfig.from_config(dict(fixture.config["dims"], n_audio_state=256))


def test_convert_file_openai_tiny_pt_reads_dims(tmp_path, fixture, openai_params):
    state = dict(fixture.weights)  # float16 params + float32 buffer, as stored
    state["decoder.ln.weight"] = np.ones(384, np.float16)
    path = tmp_path / "tiny.pt"
    save_torch_checkpoint({"dims": dict(fixture.config["dims"]), "model_state_dict": state}, path)
    params, report = convert_file(str(path), None)
    assert report.skipped == ["decoder.ln.weight"]
    flat, ref = flatten_tree(params), flatten_tree(openai_params)
    for key in ref:
        np.testing.assert_array_equal(np.asarray(flat[key], np.float32), ref[key])


def test_convert_file_huggingface_folder(tmp_path, fixture, openai_params):
    folder = tmp_path / "whisper-tiny"
    folder.mkdir()
    save_safetensors({_to_hf(k): v for k, v in fixture.weights_f32().items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({
        "model_type": "whisper", "num_mel_bins": 80, "max_source_positions": 1500, "d_model": 384,
        "encoder_attention_heads": 6, "encoder_layers": 4, "decoder_layers": 4}))
    params, report = convert_file(str(folder), None)
    assert report.problem_count() == 0
    _assert_same_tree(params, openai_params)


def test_convert_file_rejects_a_checkpoint_for_other_dims(tmp_path, fixture):
    path = tmp_path / "tiny.pt"
    save_torch_checkpoint({"model_state_dict": dict(fixture.weights)}, path)
    with pytest.raises(ConversionError, match="tiny.pt"):
        convert_file(str(path), {"dims": dict(fixture.config["dims"], n_audio_layer=5)})
