"""SyncNet accuracy (LatentSync's eval_syncnet_acc): the tiny StableSyncNet (random weights) on a
small clip dataset cut from the demo video; the counting checked at thresholds that force every
prediction one way, eval/syncnet_acc.py end to end and its one-line errors."""

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from lipsync_jax.audio.load import load_audio
from lipsync_jax.data import records
from lipsync_jax.media.video import read_frames
from tests.helpers.paths import ROOT, asset_path

CLIP_FRAMES = 34  # a 16-frame SyncNet pair needs >= 32 frames
RES = 64


def _load_script():
    spec = importlib.util.spec_from_file_location("eval_syncnet_acc", os.path.join(ROOT, "eval", "syncnet_acc.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def clip_dataset(tmp_path_factory):
    """Two 34-frame 64 px clips of demo1 (square crop around the face) with their audio, plus a
    10-frame clip (too short for a pair: skipped)."""
    root = tmp_path_factory.mktemp("acc_clips")
    frames = list(read_frames(asset_path("demo1_video.mp4"), fps=25.0, max_frames=2 * CLIP_FRAMES + 10))
    audio = load_audio(asset_path("demo1_audio.wav"))
    h, w = frames[0].shape[:2]
    side, top = min(h, w), max(0, (h - min(h, w)) // 3)
    crops = [cv2.resize(f[top:top + side, (w - side) // 2:(w + side) // 2], (RES, RES), interpolation=cv2.INTER_AREA)
             for f in frames]
    serialized = []
    for clip, (start, count) in enumerate([(0, CLIP_FRAMES), (CLIP_FRAMES, CLIP_FRAMES), (2 * CLIP_FRAMES, 10)]):
        record = records.ClipRecord(f"demo1_{clip}", [records.encode_jpeg(f) for f in crops[start:start + count]],
                                    records.audio_to_int16(audio[start * 640:(start + count) * 640]), 25.0, RES,
                                    "demo1_video.mp4", w, h, start / 25.0)
        serialized.append(records.serialize(record, records.features()))
    records.write_dataset(str(root), [serialized])
    return str(root)


@pytest.fixture(scope="module")
def tiny_syncnet():
    from lipsync_jax.eval.sync_eval import load_syncnet

    return load_syncnet(config=os.path.join(ROOT, "configs", "syncnet", "tiny.py"), random_init=True, seed=3)


@pytest.mark.integration
def test_accuracy_counts_pairs_per_label(clip_dataset, tiny_syncnet):
    from lipsync_jax.eval.syncnet_acc import syncnet_accuracy

    result = syncnet_accuracy(tiny_syncnet, clip_dataset, num_samples=20, batch_size=8, seed=1, progress=False)
    assert result.num_pairs == 20 == result.num_in_sync + result.num_off_sync
    assert result.num_in_sync > 0 and result.num_off_sync > 0  # both kinds of pairs are drawn
    assert 0.0 <= result.accuracy <= 1.0 and result.random_init
    weighted = (result.in_sync_accuracy * result.num_in_sync + result.off_sync_accuracy * result.num_off_sync) / 20
    assert result.accuracy == pytest.approx(weighted)
    assert -1.0 <= result.mean_similarity_off_sync <= 1.0 and -1.0 <= result.mean_similarity_in_sync <= 1.0
    # the same seed draws the same pairs: thresholds below / above every similarity force the predictions
    everything_in = syncnet_accuracy(tiny_syncnet, clip_dataset, num_samples=20, batch_size=8, seed=1,
                                     threshold=-1.01, progress=False)
    assert (everything_in.in_sync_accuracy, everything_in.off_sync_accuracy) == (1.0, 0.0)
    assert everything_in.accuracy == pytest.approx(result.num_in_sync / 20)
    assert everything_in.mean_similarity_in_sync == pytest.approx(result.mean_similarity_in_sync)
    nothing_in = syncnet_accuracy(tiny_syncnet, clip_dataset, num_samples=20, batch_size=8, seed=1,
                                  threshold=1.01, progress=False)
    assert (nothing_in.in_sync_accuracy, nothing_in.off_sync_accuracy) == (0.0, 1.0)


def test_accuracy_from_similarities():
    from lipsync_jax.eval.syncnet_acc import accuracy_from_similarities

    result = accuracy_from_similarities(np.array([0.9, 0.2, 0.6, 0.4, 0.5]), np.array([1, 1, 0, 0, 1]))
    assert result.accuracy == pytest.approx(2 / 5)  # 0.9 (in), 0.4 (off) right; 0.5 is not above 0.5
    assert result.in_sync_accuracy == pytest.approx(1 / 3) and result.off_sync_accuracy == pytest.approx(1 / 2)
    assert result.mean_similarity_off_sync == pytest.approx(0.5)


@pytest.mark.integration
def test_syncnet_acc_script(clip_dataset, tmp_path, capsys):
    script = _load_script()
    out = tmp_path / "acc.json"
    code = script.main(["--data_dir", clip_dataset, "--random_init", "--config", "configs/syncnet/tiny.py",
                        "--num_samples", "8", "--batch_size", "8", "--json", str(out), "--no_progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "MEANINGLESS" in captured.err and "SyncNet accuracy:" in captured.out
    result = json.loads(out.read_text())
    assert result["num_pairs"] == 8 and 0.0 <= result["accuracy"] <= 1.0 and result["threshold"] == 0.5
    code = script.main(["--data_dir", str(tmp_path / "missing"), "--random_init", "--config",
                        "configs/syncnet/tiny.py"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("error: ") and "missing" in err[-1]
