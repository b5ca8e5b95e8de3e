"""SyncNet training through train.py: the tiny SyncNet on pairs cut from the demo clip by the
grain loader (lipsync_jax.data), and the synthetic-source smoke run."""

import cv2
import numpy as np
import pytest

from lipsync_jax.audio.load import load_audio
from lipsync_jax.data import records
from lipsync_jax.media.video import read_frames
from tests.helpers.paths import asset_path
from tests.helpers.train import losses, run_train

CLIP_FRAMES = 34  # a SyncNet sample needs >= 2 * 16 frames
RES = 64


def _demo_dataset(root):
    """Two 34-frame clips of demo1 (a fixed square crop of the upper body around the face, 64 px)
    with their 16 kHz audio, written as a clip dataset."""
    frames = list(read_frames(asset_path("demo1_video.mp4"), fps=25.0, max_frames=2 * CLIP_FRAMES))
    audio = load_audio(asset_path("demo1_audio.wav"))
    h, w = frames[0].shape[:2]
    side = min(h, w)
    top = max(0, (h - side) // 3)
    crops = [cv2.resize(f[top:top + side, (w - side) // 2:(w + side) // 2], (RES, RES), interpolation=cv2.INTER_AREA)
             for f in frames]
    serialized = []
    for clip in range(2):
        clip_frames = crops[clip * CLIP_FRAMES:(clip + 1) * CLIP_FRAMES]
        a0, a1 = clip * CLIP_FRAMES * 640, (clip + 1) * CLIP_FRAMES * 640  # 16000 / 25 samples per frame
        record = records.ClipRecord(f"demo1_{clip}", [records.encode_jpeg(f) for f in clip_frames],
                                    records.audio_to_int16(audio[a0:a1]), 25.0, RES, "demo1_video.mp4", w, h,
                                    clip * CLIP_FRAMES / 25.0)
        serialized.append(records.serialize(record, records.features()))
    records.write_dataset(str(root), [serialized])
    return root


@pytest.mark.heavy  # over CI's time budget
@pytest.mark.slow
def test_syncnet_learns_demo_pairs_above_chance(tmp_path, tmp_path_factory):
    data_dir = _demo_dataset(tmp_path_factory.mktemp("demo_clips"))
    steps = 40
    run_train(tmp_path, ["--config=configs/syncnet/tiny.py", "--data=grain_fixed",
                         f"--config.data.train_data_dir={data_dir}", "--config.data.batch_size=16",
                         "--config.optimizer.lr=1e-3",
                         f"--config.run.max_train_steps={steps}", f"--config.run.validation_steps={steps}",
                         "--noprogress"], tmp_path_factory.mktemp("cache"))
    accuracy, loss = losses(tmp_path, "accuracy"), losses(tmp_path)
    assert sorted(loss) == list(range(1, steps + 1))
    assert np.mean([accuracy[s] for s in range(steps - 4, steps + 1)]) > 0.7  # chance: 0.5
    assert loss[steps] < loss[1]
    assert 0.0 <= losses(tmp_path, "val/accuracy")[steps] <= 1.0  # other windows of the same clips


@pytest.mark.slow  # compiles the SyncNet step
def test_syncnet_config_trains_on_synthetic_batches(tmp_path, tmp_path_factory):
    run_train(tmp_path, ["--config=configs/syncnet/tiny.py", "--config.data.batch_size=2",
                         "--config.run.max_train_steps=2", "--noprogress"], tmp_path_factory.mktemp("cache"))
    acc = losses(tmp_path, "accuracy")
    assert sorted(acc) == [1, 2] and all(0.0 <= a <= 1.0 for a in acc.values())
    assert all(np.isfinite(v) and v > 0 for v in losses(tmp_path).values())
    assert (tmp_path / "checkpoints" / "2").is_dir()


@pytest.mark.heavy  # compiles the SyncNet step with the VAE encoder in it
def test_latent_syncnet_learns_synthetic_pairs_above_chance(tmp_path):
    """configs/syncnet/tiny_latent.py (faces encoded by the frozen tiny VAE, 16 frames x 4 latent
    channels): the fixed synthetic batch of 16 pairs (half in sync) is learnt, as the pixel
    SyncNet learns its demo pairs above."""
    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.train.loop import run_training
    from lipsync_jax.train.tasks import build_task

    steps = 10  # 100% pair accuracy from step 4 on in a CPU run
    config = load_config(resolve_path("configs/syncnet/tiny_latent.py"),
                         ["data.batch_size=16", "optimizer.lr=1e-3", f"run.max_train_steps={steps}",
                          f"run.validation_steps={steps}"])
    task = build_task(config, "synthetic_fixed")
    state = run_training(task, config, str(tmp_path), progress=False)
    assert int(state.step) == steps
    accuracy, loss = losses(tmp_path, "accuracy"), losses(tmp_path)
    assert sorted(loss) == list(range(1, steps + 1))
    assert np.mean([accuracy[s] for s in range(steps - 4, steps + 1)]) > 0.7  # chance: 0.5
    assert loss[steps] < loss[1]
    shardings = (tmp_path / "frozen_shardings.json").read_text()
    assert "vae" in shardings  # the frozen VAE is part of the step


@pytest.mark.heavy  # compiles the tiny UNet forward at 16 frames
def test_unet_sync_loss_in_latent_space_without_pixel_supervision():
    """run.pixel_space_supervise false + use_syncnet: the sync term comes from the latent SyncNet on
    the x0 latents (nothing decoded: lpips/trepa stay 0), and it depends on the audio."""
    import jax

    from lipsync_jax.config_utils import load_config, resolve_path
    from lipsync_jax.train.task import TrainConfigError
    from lipsync_jax.train.tasks import build_task

    overrides = ["data.batch_size=1", "run.pixel_space_supervise=False", "run.use_syncnet=True",
                 "data.syncnet_config_path=configs/syncnet/tiny_latent.py"]
    config = load_config(resolve_path("configs/unet/tiny.py"), overrides)
    task = build_task(config, "synthetic")
    params = jax.jit(task.init_params)(jax.random.key(0))
    frozen = jax.jit(task.init_frozen)(jax.random.key(1))
    assert set(frozen) == {"vae", "syncnet"}
    batch = next(task.make_data(0, 1))
    evaluate = jax.jit(task.eval_step)
    terms = evaluate(params, frozen, batch, jax.random.key(2))
    assert float(terms["sync"]) > 0 and float(terms["lpips"]) == 0 and float(terms["trepa"]) == 0
    np.testing.assert_allclose(float(terms["loss"]), float(terms["recon"]) + 0.05 * float(terms["sync"]), rtol=1e-6)
    other = evaluate(params, frozen, dict(batch, mel=batch["mel"][::-1] * -1.0), jax.random.key(2))
    assert float(other["sync"]) != float(terms["sync"])  # the SyncNet sees the audio
    np.testing.assert_allclose(float(other["recon"]), float(terms["recon"]), rtol=1e-6)
    # a pixel SyncNet config without pixel supervision is refused with the field names
    with pytest.raises(TrainConfigError, match="latent-space SyncNet"):
        build_task(load_config(resolve_path("configs/unet/tiny.py"), overrides[:3]), "synthetic")
