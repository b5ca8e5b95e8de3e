"""save_params / restore_params: the orbax round trip of converted weights."""

import json
import os

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lipsync_jax
from lipsync_jax.checkpoints import (
    NotAConvertedCheckpointError,
    cast_floating,
    read_metadata,
    restore_params,
    save_params,
)
from tests.helpers.paths import DATA_DIR


def _params():
    rng = np.random.default_rng(0)
    return {
        "conv_in": {"kernel": rng.standard_normal((3, 3, 4, 8)).astype(np.float32),
                    "bias": rng.standard_normal(8).astype(np.float32)},
        "norm": {"scale": rng.standard_normal(8).astype(ml_dtypes.bfloat16)},
        "table": {"ids": np.arange(5, dtype=np.int32)},
        "jax_leaf": jnp.linspace(0, 1, 4, dtype=jnp.float16),
    }


def test_round_trip_keeps_values_dtypes_config_and_metadata(tmp_path):
    params = _params()
    config = {"block_out_channels": (32, 64), "use_motion_module": True, "np_value": np.int64(3)}
    out = save_params(tmp_path / "unet", params, config,
                      metadata={"source": "/x/latentsync_unet.pt", "report": "9 converted"})
    assert out == str(tmp_path / "unet")
    restored, restored_config = restore_params(tmp_path / "unet")
    assert restored_config == {"block_out_channels": [32, 64], "use_motion_module": True, "np_value": 3}
    assert sorted(restored) == sorted(params)
    for group in params:
        for name, want in params[group].items() if isinstance(params[group], dict) else []:
            got = restored[group][name]
            assert isinstance(got, np.ndarray) and got.dtype == want.dtype, (group, name)
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(restored["jax_leaf"], np.asarray(params["jax_leaf"]))
    metadata = read_metadata(tmp_path / "unet")
    assert metadata["source"] == "/x/latentsync_unet.pt" and metadata["report"] == "9 converted"
    assert metadata["lipsync_jax_version"] == lipsync_jax.__version__
    assert metadata["param_count"] == 3 * 3 * 4 * 8 + 8 + 8 + 5 + 4


def test_restore_with_dtype_casts_only_floating_leaves(tmp_path):
    save_params(tmp_path / "c", _params(), None)
    restored, config = restore_params(tmp_path / "c", dtype=jnp.bfloat16)
    assert config is None
    assert restored["conv_in"]["kernel"].dtype == ml_dtypes.bfloat16
    assert restored["norm"]["scale"].dtype == ml_dtypes.bfloat16
    assert restored["table"]["ids"].dtype == np.int32
    assert cast_floating({"a": np.ones(2, ml_dtypes.bfloat16)}, "float32")["a"].dtype == np.float32


def test_overwrite_replaces_previous_conversion(tmp_path):
    save_params(tmp_path / "d", _params(), {"v": 1})
    save_params(tmp_path / "d", {"only": np.zeros(2, np.float32)}, {"v": 2})
    restored, config = restore_params(tmp_path / "d")
    assert list(restored) == ["only"] and config == {"v": 2}


def test_not_a_converted_checkpoint(tmp_path):
    (tmp_path / "random").mkdir()
    with pytest.raises(NotAConvertedCheckpointError, match="random: not a converted checkpoint"):
        restore_params(tmp_path / "random")
    save_params(tmp_path / "e", _params(), None)
    meta = tmp_path / "e" / "metadata.json"
    meta.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(NotAConvertedCheckpointError, match="unknown format"):
        restore_params(tmp_path / "e")


def test_bad_params_are_refused(tmp_path):
    with pytest.raises(TypeError, match="leaf /a/b is a str"):
        save_params(tmp_path / "f", {"a": {"b": "text"}}, None)
    with pytest.raises(ValueError, match="empty"):
        save_params(tmp_path / "g", {}, None)


LEGACY = os.path.join(DATA_DIR, "legacy_converted")


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["vae", "syncnet"])
def test_folders_converted_before_the_bare_tree_convention_still_load(kind):
    """tests/data/legacy_converted holds VAE/SyncNet folders written by the old converters
    ({"params": tree} on disk); they restore as bare trees that fit the model and run."""
    import jax

    from lipsync_jax.models import syncnet, vae
    from lipsync_jax.tree_utils import shape_mismatches

    folder = os.path.join(LEGACY, kind)
    assert read_metadata(folder)["kind"] == kind
    params, config = restore_params(folder)
    assert "params" not in params
    if kind == "vae":
        model = vae.AutoencoderKL.from_config(config)
        assert shape_mismatches(params, vae.abstract_params(model)) == ([], [], [])
        latents = vae.encode_to_latents(model, params, jnp.zeros((1, 16, 16, 3)), jax.random.key(0))
        assert latents.shape == (1, 8, 8, 4) and bool(jnp.all(jnp.isfinite(latents)))
    else:
        model = syncnet.StableSyncNet.from_config(config)
        assert shape_mismatches(params, syncnet.abstract_params(model)) == ([], [], [])
        vision, audio = model.apply({"params": params}, jnp.ones((1, 4, 4, 48)), jnp.ones((1, 4, 4, 1)))
        assert vision.shape == audio.shape == (1, 32)
