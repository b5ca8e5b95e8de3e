"""Evaluation metrics and the eval/ command lines: PSNR/SSIM on arrays (analytic values, a
direct definition-based SSIM, symmetry), video-level frame metrics, and sync_eval end to end
with a random tiny SyncNet on a 2 s trimmed demo clip."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from lipsync_jax.eval.frame_metrics import FrameMetricsError, gaussian_window, lower_half, psnr, ssim
from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import ROOT, asset_path


def _load_cli(name):
    spec = importlib.util.spec_from_file_location(f"eval_cli_{name}", os.path.join(ROOT, "eval", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ssim_by_definition(a, b, data_range=255.0):
    """Mean SSIM straight from the formula: weighted moments of every 11x11 patch, float64."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    window = np.outer(gaussian_window(), gaussian_window())
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for i in range(a.shape[0] - 10):
        for j in range(a.shape[1] - 10):
            pa, pb = a[i:i + 11, j:j + 11], b[i:i + 11, j:j + 11]
            ma, mb = np.einsum("ij,ijc->c", window, pa), np.einsum("ij,ijc->c", window, pb)
            va = np.einsum("ij,ijc->c", window, pa * pa) - ma * ma
            vb = np.einsum("ij,ijc->c", window, pb * pb) - mb * mb
            cov = np.einsum("ij,ijc->c", window, pa * pb) - ma * mb
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma * ma + mb * mb + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 1, (3, 40, 48, 3)), axis=1), axis=2)  # textured, not white noise
    smooth = (smooth - smooth.min()) / (smooth.max() - smooth.min())
    return (30 + 190 * smooth).astype(np.uint8)  # values in [30, 220]: room for +-30 offsets


def test_identical_frames_give_infinite_psnr_and_unit_ssim(frames):
    assert np.all(np.isinf(psnr(frames, frames)))
    np.testing.assert_allclose(ssim(frames, frames), 1.0, atol=1e-6)


@pytest.mark.parametrize("offset", [1, 5, 30])
def test_psnr_of_constant_offset_is_analytic(frames, offset):
    shifted = (frames.astype(np.int16) + offset).astype(np.uint8)
    expected = 10 * np.log10(255.0 ** 2 / offset ** 2)
    np.testing.assert_allclose(psnr(shifted, frames), expected, rtol=1e-12)
    # on a [-1, 1] scale (data range 2) the same frames give the same PSNR
    np.testing.assert_allclose(psnr(shifted / 127.5 - 1, frames / 127.5 - 1, data_range=2.0), expected, rtol=1e-9)


def test_ssim_matches_the_definition_and_is_symmetric(frames):
    rng = np.random.default_rng(1)
    noisy = np.clip(frames + rng.normal(0, 20, frames.shape), 0, 255).astype(np.uint8)
    ours = ssim(noisy, frames)
    np.testing.assert_allclose(ours, ssim(frames, noisy), rtol=1e-6)
    assert np.all(ours < 0.99) and np.all(ours > 0)
    a, b = noisy[0, :24, :26], frames[0, :24, :26]
    np.testing.assert_allclose(ssim(a, b)[0], _ssim_by_definition(a, b), rtol=1e-5)


def test_ssim_drops_as_noise_grows_and_ignores_a_constant_offset_mostly(frames):
    rng = np.random.default_rng(2)
    values = [ssim(np.clip(frames + rng.normal(0, s, frames.shape), 0, 255), frames).mean() for s in (2, 10, 40)]
    assert values[0] > values[1] > values[2]
    shifted = (frames.astype(np.int16) + 5).astype(np.uint8)
    assert ssim(shifted, frames).mean() > values[1]  # luminance term only: far less than noise of std 10


def test_frame_metric_errors(frames):
    with pytest.raises(FrameMetricsError, match="shapes differ"):
        psnr(frames, frames[:, :-1])
    with pytest.raises(FrameMetricsError, match="smaller than the 11x11"):
        ssim(frames[:, :8], frames[:, :8])
    assert lower_half(np.zeros((2, 7, 4, 3))).shape == (2, 4, 4, 3)


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", *args], check=True)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """2 s of demo1 (270x480, with its audio) and a brightened copy of it."""
    folder = tmp_path_factory.mktemp("eval_clip")
    path, brighter = str(folder / "clip.mp4"), str(folder / "brighter.mp4")
    _ffmpeg("-i", asset_path("demo1_video.mp4"), "-t", "2", "-vf", "scale=270:480", "-c:v", "libx264", "-crf", "18",
            "-c:a", "aac", path)
    _ffmpeg("-i", path, "-vf", "eq=brightness=0.06", "-c:v", "libx264", "-crf", "18", "-c:a", "copy", brighter)
    return path, brighter


@pytest.mark.integration
def test_video_metrics_frame_and_mouth(clip, tmp_path, capsys):
    path, brighter = clip
    cli = _load_cli("frame_metrics")
    out = str(tmp_path / "fm.json")
    assert cli.main(["--generated", brighter, "--reference", path, "--region", "both", "--max_frames", "6",
                     "--json", out]) == 0
    result = json.load(open(out))
    for region in ("frame", "mouth"):
        r = result[region]
        assert r["num_compared"] == len(r["psnr_per_frame"]) == 6
        assert 10 < r["psnr"] < 45 and 0.5 < r["ssim"] < 1.0
        assert r["frames_without_face"] == 0
    assert cli.main(["--generated", path, "--reference", path, "--max_frames", "3", "--json", out]) == 0
    same = json.load(open(out))["frame"]
    assert same["psnr"] == "inf" and same["ssim"] == pytest.approx(1.0, abs=1e-6)

    assert cli.main(["--generated", str(tmp_path / "missing.mp4"), "--reference", path]) == 1
    assert "missing.mp4" in capsys.readouterr().err


@pytest.mark.integration
def test_sync_eval_cli_random_init_end_to_end(clip, tmp_path):
    path, _ = clip
    out = tmp_path / "sync.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "eval", "sync_eval.py"), "--video", path, "--random_init",
                           "--config", os.path.join(ROOT, "configs", "syncnet", "tiny.py"), "--max_offset", "5",
                           "--json", str(out)], capture_output=True, text=True, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM weights" in proc.stderr
    result = json.loads(out.read_text())
    assert result["random_init"] is True and result["num_frames"] == 50
    assert result["num_windows"] == 50 - 16 + 1 == len(result["window_similarity_at_zero"])
    assert result["offsets"] == list(range(-5, 6)) and -5 <= result["best_offset"] <= 5
    per_offset = result["mean_similarity_per_offset"]
    assert result["best_similarity"] == pytest.approx(max(v for v in per_offset if v is not None))
    assert result["similarity_at_zero"] == pytest.approx(per_offset[5])
    assert result["similarity_at_zero"] == pytest.approx(np.nanmean(
        [np.nan if v is None else v for v in result["window_similarity_at_zero"]]))
    assert all(v is None or -1.0 <= v <= 1.0 for v in result["window_similarity_at_best"])


@pytest.mark.integration
def test_sync_eval_cli_missing_inputs_exit_1(clip, tmp_path, capsys):
    cli = _load_cli("sync_eval")
    tiny = os.path.join(ROOT, "configs", "syncnet", "tiny.py")
    assert cli.main(["--video", str(tmp_path / "nope.mp4"), "--random_init", "--config", tiny]) == 1
    assert "nope.mp4" in capsys.readouterr().err
    assert cli.main(["--video", clip[0], "--audio", str(tmp_path / "nope.wav"), "--random_init", "--config", tiny]) == 1
    assert "nope.wav: no such file" in capsys.readouterr().err
    assert cli.main(["--video", clip[0], "--syncnet_checkpoint", str(tmp_path / "no_ckpt")]) == 1
    assert "no_ckpt" in capsys.readouterr().err


def test_sync_score_window_similarity_lines_up_with_offsets():
    from lipsync_jax.eval.sync_score import score_from_embeddings

    rng = np.random.default_rng(3)
    vision = rng.normal(size=(4, 8))
    audio = rng.normal(size=(6, 8))
    score = score_from_embeddings(vision, audio, max_offset=3)
    sims = vision @ audio.T
    for k, d in enumerate(score.offsets):
        for i in range(4):
            expected = sims[i, i + d] if 0 <= i + d < 6 else np.nan
            np.testing.assert_allclose(score.window_similarity[i, k], expected)
    np.testing.assert_allclose(np.nanmean(score.window_similarity, axis=0), score.mean_similarity)


@pytest.mark.integration
def test_sync_eval_cli_folder_mode_table(clip, tmp_path, capsys):
    videos, audio = tmp_path / "videos", tmp_path / "audio"
    videos.mkdir()
    audio.mkdir()
    _ffmpeg("-i", clip[0], "-t", "0.8", "-c:v", "libx264", "-crf", "18", "-an", str(videos / "a.mp4"))  # 20 frames
    _ffmpeg("-i", clip[0], "-t", "0.8", "-vn", "-ar", "16000", "-ac", "1", str(audio / "a.wav"))
    (videos / "b.mp4").write_bytes(b"not a video")  # no audio of its own, no match: an error row
    cli = _load_cli("sync_eval")
    table_json, table_csv = tmp_path / "t.json", tmp_path / "t.csv"
    code = cli.main(["--video_dir", str(videos), "--audio_dir", str(audio), "--random_init", "--config",
                     os.path.join(ROOT, "configs", "syncnet", "tiny.py"), "--max_offset", "2",
                     "--json", str(table_json), "--csv", str(table_csv)])
    assert code == 1  # one video could not be scored
    assert "b.mp4" in capsys.readouterr().err
    rows = json.loads(table_json.read_text())["videos"]
    assert [os.path.basename(r["video"]) for r in rows] == ["a.mp4", "b.mp4"]
    assert rows[0]["audio"] == str(audio / "a.wav") and rows[0]["num_windows"] == 20 - 16 + 1
    assert "error" in rows[1] and "error" not in rows[0]
    lines = table_csv.read_text().splitlines()
    assert lines[0].startswith("video,audio,similarity_at_zero") and len(lines) == 3


@pytest.mark.integration
def test_load_syncnet_from_converted_folder_and_mismatches(tmp_path):
    from lipsync_jax.checkpoints import save_params
    from lipsync_jax.config_utils import config_to_dict, load_config
    from lipsync_jax.eval.sync_eval import SyncEvalError, load_syncnet, random_params
    from lipsync_jax.models.syncnet import StableSyncNet

    model_config = config_to_dict(load_config(os.path.join(ROOT, "configs", "syncnet", "tiny.py:256")).model)
    params = random_params(StableSyncNet.from_config(model_config), seed=1)
    save_params(tmp_path / "ckpt", params, model_config)
    loaded = load_syncnet(str(tmp_path / "ckpt"))  # config.json beside the params; 256 px faces
    assert loaded.resolution == 256 and not loaded.random_init
    np.testing.assert_array_equal(loaded.params["visual_encoder"]["conv_in"]["kernel"],
                                  params["visual_encoder"]["conv_in"]["kernel"])
    with pytest.raises(SyncEvalError, match="does not take 64 px faces"):
        load_syncnet(str(tmp_path / "ckpt"), resolution=64)
    with pytest.raises(SyncEvalError, match="params do not fit the SyncNet config"):
        load_syncnet(str(tmp_path / "ckpt"),
                     config=os.path.join(ROOT, "configs", "syncnet", "syncnet_16_pixel_attn.py"))
    with pytest.raises(SyncEvalError, match="either"):
        load_syncnet(str(tmp_path / "ckpt"), random_init=True)
