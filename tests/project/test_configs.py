"""The configs/ modules against LatentSync's values (the golden manifests' and fixtures' config
dicts, and LatentSync's YAML values), plus overrides and sweeps through a real absl parse."""

import glob
import json
import os
import subprocess
import sys
import types

import ml_collections
import numpy as np
import pytest
from absl import flags

from lipsync_jax import cli_flags
from lipsync_jax.config_utils import (
    PROJECT_ROOT,
    ConfigError,
    apply_sweep,
    config_to_dict,
    get_sweep,
    load_config,
    resolve_path,
    sweep_length,
)
from tests.helpers.paths import golden_path

UNET_CONFIGS = ["stage1", "stage1_512", "stage2", "stage2_512", "stage2_efficient", "tiny", "tiny_stage1"]
SYNCNET_CONFIGS = ["syncnet_16_pixel_attn", "syncnet_16_pixel", "syncnet_16_latent", "tiny"]


def cfg(name: str) -> dict:
    return config_to_dict(load_config(os.path.join(PROJECT_ROOT, "configs", name)))


def manifest_config(name: str) -> dict:
    with open(golden_path(f"manifest_{name}.json")) as f:
        manifest = json.load(f)
    return manifest["config"] if "config" in manifest else manifest["dims"]


def fixture_meta(name: str) -> dict:
    with np.load(golden_path(f"{name}.npz")) as data:
        return json.loads(str(data["meta"]))


# ---------------------------------------------------------------- every config module


def all_config_files():
    files = glob.glob(os.path.join(PROJECT_ROOT, "configs", "**", "*.py"), recursive=True)
    return sorted(os.path.relpath(f, os.path.join(PROJECT_ROOT, "configs"))
                  for f in files if os.path.basename(f) != "common.py")


def test_config_files_are_discovered():
    names = all_config_files()
    for expected in [f"unet/{n}.py" for n in UNET_CONFIGS] + [f"syncnet/{n}.py" for n in SYNCNET_CONFIGS]:
        assert expected in names


@pytest.mark.parametrize("name", all_config_files())
def test_every_config_loads_locked_and_serialises(name):
    config = load_config(os.path.join(PROJECT_ROOT, "configs", name))
    as_dict = config_to_dict(config)
    assert json.loads(json.dumps(as_dict)) == as_dict
    with pytest.raises(AttributeError):
        config.not_a_field = 1  # locked: typos cannot add fields


@pytest.mark.parametrize("name", UNET_CONFIGS)
def test_unet_config_sections(name):
    config = cfg(f"unet/{name}.py")
    assert sorted(config) == ["ckpt", "data", "lpips", "mesh", "model", "optimizer", "run", "scheduler", "trepa",
                              "vae", "whisper"]
    # The UNet's audio cross-attention width is the Whisper encoder's width.
    assert config["model"]["cross_attention_dim"] == config["whisper"]["dims"]["n_audio_state"]
    # The SyncNet config it names exists and loads.
    syncnet = cfg(os.path.relpath(config["data"]["syncnet_config_path"], "configs"))
    assert syncnet["data"]["num_frames"] == config["data"]["num_frames"]


@pytest.mark.parametrize("name", UNET_CONFIGS)
def test_unet_repo_paths_exist(name, tmp_path, monkeypatch):
    data = cfg(f"unet/{name}.py")["data"]
    monkeypatch.chdir(tmp_path)  # found from anywhere via the project root
    for key in ("syncnet_config_path", "val_video_path", "val_audio_path", "mask_image_path"):
        assert os.path.isfile(resolve_path(data[key])), (key, data[key])
    assert resolve_path("no/such/file.txt") == "no/such/file.txt"


# ---------------------------------------------------------------- model sections vs golden


@pytest.mark.parametrize("name,manifest", [
    ("stage1", "unet_stage1"), ("stage1_512", "unet_stage1"),
    ("stage2", "unet_stage2"), ("stage2_512", "unet_stage2"),
])
def test_unet_model_equals_manifest(name, manifest):
    assert cfg(f"unet/{name}.py")["model"] == manifest_config(manifest)


def test_stage2_efficient_model_is_stage2_with_decoder_only_motion_modules():
    expected = dict(manifest_config("unet_stage2"), motion_module_decoder_only=True)
    assert cfg("unet/stage2_efficient.py")["model"] == expected


@pytest.mark.parametrize("name,fixture", [("tiny", "unet_stage2_tiny"), ("tiny_stage1", "unet_stage1_tiny")])
def test_tiny_unet_model_equals_fixture(name, fixture):
    assert cfg(f"unet/{name}.py")["model"] == fixture_meta(fixture)["config"]


@pytest.mark.parametrize("name", ["syncnet_16_pixel_attn", "syncnet_16_pixel", "syncnet_16_latent"])
def test_syncnet_model_equals_manifest(name):
    assert cfg(f"syncnet/{name}.py")["model"] == manifest_config(f"syncnet_{name.removeprefix('syncnet_')}")


def test_tiny_syncnet_256_equals_fixture():
    assert cfg("syncnet/tiny.py:256")["model"] == fixture_meta("syncnet_tiny")["config"]


def _downsampled(factors):
    height = width = 1
    for f in factors:
        fh, fw = (f, f) if isinstance(f, int) else f
        height, width = height * fh, width * fw
    return height, width


@pytest.mark.parametrize("arg", ["", ":64", ":256"])
def test_tiny_syncnet_reduces_its_input_to_one_pixel(arg):
    config = cfg(f"syncnet/tiny.py{arg}")
    resolution = config["data"]["resolution"]
    visual = config["model"]["visual_encoder"]
    assert _downsampled(visual["downsample_factors"]) == (resolution // 2, resolution)  # lower half
    assert visual["block_out_channels"][-1] == config["model"]["audio_encoder"]["block_out_channels"][-1]
    # The fixture's channels (narrow), whatever the resolution.
    fixture = fixture_meta("syncnet_tiny")["config"]
    assert visual["block_out_channels"] == fixture["visual_encoder"]["block_out_channels"]


def test_tiny_syncnet_matches_tiny_unet_resolution():
    unet = cfg("unet/tiny.py")
    syncnet = cfg(os.path.relpath(unet["data"]["syncnet_config_path"], "configs"))
    assert syncnet["data"]["resolution"] == unet["data"]["resolution"]


def test_tiny_syncnet_rejects_unknown_resolution():
    with pytest.raises(ConfigError, match="resolution must be one of"):
        load_config(os.path.join(PROJECT_ROOT, "configs/syncnet/tiny.py:100"))


def test_audio_equals_syncnet_mel_fixture():
    assert cfg("audio.py") == fixture_meta("syncnet_mel")["config"]


def test_scheduler_equals_ddim_fixture():
    golden = {k: v for k, v in fixture_meta("ddim")["config"].items() if not k.startswith("_")}
    assert cfg("scheduler.py") == golden
    for name in UNET_CONFIGS:
        assert cfg(f"unet/{name}.py")["scheduler"] == golden


def test_sampling_settings_equal_sampling_loop_fixture():
    meta = fixture_meta("sampling_loop")["config"]
    run = cfg("unet/stage2.py")["run"]
    assert run["guidance_scale"] == meta["guidance_scale"]
    assert run["inference_steps"] == meta["num_inference_steps"]
    assert cfg("unet/tiny.py")["model"] == meta["unet"]


def test_vae_configs_equal_golden():
    real, tiny, meta = cfg("vae/sd_vae_ft_mse.py"), cfg("vae/tiny.py"), fixture_meta("vae_tiny")
    assert real["model"] == manifest_config("sd_vae_ft_mse")
    assert tiny["model"] == meta["config"]
    assert real["scaling_factor"] == tiny["scaling_factor"] == meta["scaling_factor"]
    assert real["shift_factor"] == 0.0
    assert cfg("unet/stage2.py")["vae"] == real
    assert cfg("unet/tiny.py")["vae"] == tiny


def test_whisper_dims_equal_manifest():
    assert cfg("whisper/tiny.py")["dims"] == manifest_config("whisper_tiny")
    assert cfg("unet/stage2.py")["whisper"]["ckpt_path"] == "checkpoints/whisper/tiny.pt"
    assert cfg("unet/tiny.py")["whisper"]["ckpt_path"] == ""  # random weights for smoke runs


# ---------------------------------------------------------------- LatentSync YAML values

# configs/unet/stage2.yaml of LatentSync 1.6, sections other than ``model`` (cluster paths aside).
STAGE2_DATA = dict(train_output_dir="debug/unet", train_data_dir="", batch_size=1, num_workers=12,
                   num_frames=16, resolution=256, audio_sample_rate=16000, video_fps=25,
                   audio_feat_length=[2, 2])
STAGE2_CKPT = dict(resume_ckpt_path="checkpoints/latentsync_unet.pt", save_ckpt_steps=10000)
STAGE2_RUN = dict(pixel_space_supervise=True, use_syncnet=True, sync_loss_weight=0.05,
                  perceptual_loss_weight=0.1, recon_loss_weight=1, guidance_scale=1.5,
                  trepa_loss_weight=10, inference_steps=20,
                  trainable_modules=["motion_modules.", "attentions."], seed=1247,
                  use_mixed_noise=True, mixed_noise_alpha=1, mixed_precision_training=True,
                  enable_gradient_checkpointing=True, max_train_steps=10000000, max_train_epochs=-1)
STAGE2_OPTIMIZER = dict(lr=1e-5, scale_lr=False, max_grad_norm=1.0, lr_scheduler="constant", lr_warmup_steps=0)
STAGE1_RUN = {k: v for k, v in dict(STAGE2_RUN, pixel_space_supervise=False, use_syncnet=False).items()
              if k != "trainable_modules"}
# Ours, not LatentSync's: validation by inference + SyncNet score (lipsync_jax.train.validation).
OUR_RUN_FIELDS = dict(val_inference=True, val_max_seconds=10.0, log_every_steps=10, prefetch_batches=2,
                      skip_nonfinite_updates=False, scheduler="ddim", deepcache_interval=0, overlap=0,
                      max_vram_gb=0.0)
# What each LatentSync YAML changes relative to stage2.yaml: (data, run).
UNET_YAML_DIFFS = {
    "stage2": ({}, STAGE2_RUN),
    "stage2_512": ({"resolution": 512}, STAGE2_RUN),
    "stage2_efficient": ({}, dict(STAGE2_RUN, trepa_loss_weight=0, trainable_modules=["motion_modules.", "attn2."])),
    "stage1": ({}, STAGE1_RUN),
    "stage1_512": ({"resolution": 512}, STAGE1_RUN),
}


@pytest.mark.parametrize("name", sorted(UNET_YAML_DIFFS))
def test_unet_sections_equal_latentsync_yaml(name):
    config = cfg(f"unet/{name}.py")
    data_changes, run = UNET_YAML_DIFFS[name]
    for key, value in dict(STAGE2_DATA, **data_changes).items():
        assert config["data"][key] == value, key
    assert config["data"]["syncnet_config_path"] == "configs/syncnet/syncnet_16_pixel_attn.py"
    assert config["ckpt"] == STAGE2_CKPT
    assert config["run"] == dict(run, **OUR_RUN_FIELDS)
    assert config["optimizer"] == STAGE2_OPTIMIZER
    # Cluster-only paths became "required" (empty) or relative defaults.
    assert config["data"]["train_fileslist"] == ""
    assert not any(str(v).startswith("/") for v in config["data"].values())


SYNCNET_DATA = dict(train_output_dir="debug/syncnet", num_val_samples=2048, batch_size=256,
                    gradient_accumulation_steps=1, num_workers=12, latent_space=False, num_frames=16,
                    resolution=256, train_fileslist="", train_data_dir="", val_fileslist="",
                    val_data_dir="", lower_half=True, audio_sample_rate=16000, video_fps=25)
SYNCNET_YAML = {  # name: (ckpt.inference_ckpt_path, data changes)
    "syncnet_16_pixel_attn": ("checkpoints/stable_syncnet.pt", {}),
    "syncnet_16_pixel": ("", {}),
    "syncnet_16_latent": ("", dict(num_val_samples=1200, batch_size=120, latent_space=True, lower_half=False)),
}


@pytest.mark.parametrize("name", sorted(SYNCNET_YAML))
def test_syncnet_sections_equal_latentsync_yaml(name):
    config = cfg(f"syncnet/{name}.py")
    inference_ckpt, data_changes = SYNCNET_YAML[name]
    # + vae (ours) for the latent-space SyncNet: the frozen VAE that LatentSync hard-codes
    extra = ["vae"] if config["data"]["latent_space"] else []
    assert sorted(config) == sorted(["ckpt", "data", "mesh", "model", "optimizer", "run"] + extra)
    assert config["ckpt"] == dict(resume_ckpt_path="", inference_ckpt_path=inference_ckpt, save_ckpt_steps=2500)
    expected_data = dict(SYNCNET_DATA, **data_changes)
    assert {k: config["data"][k] for k in expected_data} == expected_data
    assert config["optimizer"] == dict(lr=1e-5, max_grad_norm=1.0)
    assert config["run"] == dict(max_train_steps=10000000, validation_steps=2500,
                                 mixed_precision_training=True, seed=42)


def test_tiny_unet_is_small_and_stage2_shaped():
    tiny, stage2 = cfg("unet/tiny.py"), cfg("unet/stage2.py")
    assert tiny["data"]["resolution"] in (64, 128) and tiny["data"]["batch_size"] <= 2
    assert tiny["ckpt"]["resume_ckpt_path"] == ""
    for section in ("data", "ckpt", "run", "optimizer", "model"):
        assert sorted(tiny[section]) == sorted(stage2[section]), section
    assert sorted(cfg("unet/tiny_stage1.py")["run"]) == sorted(cfg("unet/stage1.py")["run"])


# ---------------------------------------------------------------- overrides and sweeps


TINY = os.path.join(PROJECT_ROOT, "configs/unet/tiny.py")
STAGE2 = os.path.join(PROJECT_ROOT, "configs/unet/stage2.py")


def test_load_config_overrides_are_typed_like_the_command_line():
    config = load_config(STAGE2, ["optimizer.lr=3e-5", "--config.data.batch_size=4",
                                  "config.run.trainable_modules=('attn2.',)", "run.use_syncnet=false"])
    assert config.optimizer.lr == 3e-5 and isinstance(config.optimizer.lr, float)
    assert config.data.batch_size == 4
    assert config.run.trainable_modules == ("attn2.",)
    assert config.run.use_syncnet is False
    assert load_config(STAGE2).optimizer.lr == 1e-5  # a fresh load is unaffected


@pytest.mark.parametrize("override,message", [
    ("optimizer.lrr=1", "lrr"),
    ("data.batch_size=many", "batch_size"),
    ("optimizer.lr", "key=value"),
])
def test_load_config_rejects_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(STAGE2, [override])


def test_sweep_entries_apply_and_overrides_win():
    sweep = get_sweep(TINY)
    assert sweep_length(TINY) == len(sweep) >= 2
    for index, entry in enumerate(sweep):
        config = load_config(TINY, sweep_index=index)
        for key, value in entry.items():
            node = config
            for part in key.split("."):
                node = node[part]
            assert node == value
    assert load_config(TINY, ["optimizer.lr=7e-6"], sweep_index=1).optimizer.lr == 7e-6


def test_sweep_errors_are_clear():
    with pytest.raises(ConfigError, match="defines no get_sweep"):
        load_config(STAGE2, sweep_index=0)
    n = sweep_length(TINY)
    with pytest.raises(ConfigError, match=rf"out of range.*{n} entries"):
        load_config(TINY, sweep_index=n)
    with pytest.raises(ConfigError, match="out of range"):
        load_config(TINY, sweep_index=-1)


def _module_with_sweep(sweep):
    module = types.ModuleType("fake_config")
    module.get_config = lambda: ml_collections.ConfigDict({"optimizer": {"lr": 1e-5}, "run": {"seeds": (1, 2)}})
    module.get_sweep = lambda: sweep
    return module


def test_apply_sweep_refuses_unknown_keys_wrong_types_and_bad_lists():
    module = _module_with_sweep([{"optimizer.lr": 1e-3, "run.seeds": [3, 4]}, {"optimizer.lrr": 1.0},
                                 {"optimizer.lr": "fast"}])
    config = load_config(module, sweep_index=0)
    assert config.optimizer.lr == 1e-3 and config.run.seeds == (3, 4)
    with pytest.raises(ConfigError, match="'optimizer.lrr' is not a field"):
        apply_sweep(module.get_config(), module, 1)
    with pytest.raises(ConfigError, match="cannot set 'optimizer.lr'"):
        apply_sweep(module.get_config(), module, 2)
    with pytest.raises(ConfigError, match="must return a list of dicts"):
        apply_sweep(module.get_config(), _module_with_sweep({"optimizer.lr": 1.0}), 0)


def test_cli_flags_in_process_with_flag_values():
    argv = ["train.py", f"--config={TINY}", "--config.data.batch_size=3", "--sweep_index=2",
            "--config.run.seed=5"]
    flag_values = flags.FlagValues()
    cli_flags.define_config_flags(flag_values=flag_values, sys_argv=argv)
    flag_values(argv)
    config = cli_flags.resolved_config(flag_values)
    assert config.optimizer.lr == get_sweep(TINY)[2]["optimizer.lr"]
    assert config.data.batch_size == 3 and config.run.seed == 5
    assert flag_values.config.optimizer.lr == 1e-5  # the flag's own value is untouched


CLI_SCRIPT = """
import json, sys
from absl import app, flags
from lipsync_jax import cli_flags, config_utils

cli_flags.define_config_flags()

def main(argv):
    try:
        config = cli_flags.resolved_config(flags.FLAGS)
    except config_utils.ConfigError as e:
        sys.exit(f"config error: {e}")
    print(json.dumps(config_utils.config_to_dict(config)))

app.run(main)
"""


def run_cli(tmp_path, *args):
    script = tmp_path / "cli.py"
    script.write_text(CLI_SCRIPT)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, timeout=120)


@pytest.mark.integration
def test_cli_overrides_and_sweep_through_absl(tmp_path):
    result = run_cli(tmp_path, "--config=configs/unet/tiny.py", "--sweep_index=1",
                     "--config.data.batch_size=4", "--config.run.trainable_modules=('attn2.',)")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["optimizer"]["lr"] == get_sweep(TINY)[1]["optimizer.lr"]
    assert config["data"]["batch_size"] == 4
    assert config["run"]["trainable_modules"] == ["attn2."]

    result = run_cli(tmp_path, "--config=configs/unet/tiny.py", "--sweep_index=1", "--config.optimizer.lr=5e-5")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["optimizer"]["lr"] == 5e-5  # the command line wins over the sweep


@pytest.mark.integration
def test_cli_sweep_errors_through_absl(tmp_path):
    result = run_cli(tmp_path, "--config=configs/unet/stage2.py", "--sweep_index=0")
    assert result.returncode != 0 and "defines no get_sweep" in result.stderr
    result = run_cli(tmp_path, "--config=configs/unet/tiny.py", f"--sweep_index={sweep_length(TINY)}")
    assert result.returncode != 0 and "out of range" in result.stderr
    result = run_cli(tmp_path)
    assert result.returncode != 0 and "--config" in result.stderr  # required flag
    result = run_cli(tmp_path, "--config=configs/unet/no_such_config.py")
    assert result.returncode != 0 and "config error: --config=configs/unet/no_such_config.py" in result.stderr
