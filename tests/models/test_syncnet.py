"""StableSyncNet: golden parity, the sync loss, .pt conversion and the sync-score offset finder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.convert.rules import ConversionError
from lipsync_jax.convert.syncnet import convert_file
from lipsync_jax.eval.sync_score import (
    SyncNetTower,
    SyncScoreError,
    audio_window_embeddings,
    audio_window_starts,
    score_from_embeddings,
    sync_score,
    sync_score_with,
    visual_window_embeddings,
)
from lipsync_jax.golden import check_syncnet
from lipsync_jax.golden.core import load_fixture, load_manifest, rel_l2
from lipsync_jax.losses.sync import sync_loss, syncnet_sync_loss
from lipsync_jax.models.syncnet import StableSyncNet, SyncNetConfigError, abstract_params, stack_frames
from tests.helpers.params import random_params
from tests.helpers.paths import golden_path
from tests.helpers.torch_writer import save_torch_checkpoint


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("syncnet_tiny.npz"))


@pytest.mark.integration
def test_golden_fixture_and_manifests(fixture):
    results = check_syncnet.check_fixture(fixture)
    assert {r.name for r in results} >= {"vision_embeds", "audio_embeds", "cosine_loss"}
    for name in ("syncnet_16_pixel_attn", "syncnet_16_latent", "syncnet_16_pixel"):
        results += check_syncnet.check_manifest(load_manifest(golden_path(f"manifest_{name}.json")))
    assert all(r.passed for r in results), [r.line() for r in results]


def test_sync_loss_matches_bce_and_stays_finite():
    v = jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    a = jnp.array([[0.6, 0.8], [2.0, 0.0], [-1.0, 0.1]])  # cos 0.6, 1 (unnormalised), negative
    loss = sync_loss(v, a)
    np.testing.assert_allclose(np.asarray(loss[:2]), [-np.log(0.6), 0.0], atol=1e-6)
    assert float(loss[2]) == pytest.approx(100.0)  # torch.nn.BCELoss clamps log at -100
    np.testing.assert_allclose(np.asarray(sync_loss(v[:1], a[:1], 0.0)), [-np.log(0.4)], rtol=1e-6)
    grads = jax.grad(lambda x: sync_loss(v, x).sum())(a)
    assert bool(jnp.all(jnp.isfinite(grads)))
    assert float(jnp.abs(grads[0]).sum()) > 0  # in-range samples get a gradient


@pytest.mark.integration
def test_convert_pt_reproduces_golden(tmp_path, fixture):
    path = str(tmp_path / "stable_syncnet.pt")
    save_torch_checkpoint({"state_dict": dict(fixture.weights), "global_step": 7}, path)
    params, report = convert_file(path, fixture.config, dtype=np.float32)
    assert report.problem_count() == 0 and report.converted == len(fixture.weights)
    model = StableSyncNet.from_config(fixture.config)
    images = fixture.inputs["image_sequences"].astype(np.float32).transpose(0, 2, 3, 1)
    audio = fixture.inputs["audio_sequences"].astype(np.float32).transpose(0, 2, 3, 1)
    vision_embeds, audio_embeds = jax.jit(model.apply)({"params": params}, images, audio)
    assert rel_l2(vision_embeds, fixture.outputs["vision_embeds"]) <= 1e-4
    assert rel_l2(audio_embeds, fixture.outputs["audio_embeds"]) <= 1e-4


def test_wrong_config_or_bad_config_is_a_clear_error(tmp_path, fixture):
    path = str(tmp_path / "stable_syncnet.pt")
    save_torch_checkpoint({"state_dict": dict(fixture.weights)}, path)
    no_attn = {part: dict(cfg, attn_blocks=[0] * len(cfg["attn_blocks"])) for part, cfg in fixture.config.items()}
    with pytest.raises(ConversionError, match="stable_syncnet.pt"):
        convert_file(path, no_attn)
    with pytest.raises(SyncNetConfigError, match="visual_encoder"):
        StableSyncNet.from_config({"audio_encoder": fixture.config["audio_encoder"]})


# --- sync score -------------------------------------------------------------------------------

FPS = 25.0


def _frame_values(windows):  # (b, h, w, 16*3) -> (b, 16): the first pixel's R of each frame
    return windows[:, 0, 0, 0::3]


def _audio_values(windows):  # (b, 80, 52, 1) -> (b, 16): one mel column inside each frame's span
    cols = np.round(3.2 * np.arange(16) + 1.6).astype(int)  # window start + col lands in frame k
    return windows[:, 0, cols, 0]


def _unit(x):
    x = x - x.mean(axis=-1, keepdims=True)
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def embed_frames_signal(params, windows):
    return _unit(_frame_values(windows))


def embed_mel_signal(params, windows):
    return _unit(_audio_values(windows))


def _synthetic_av(num_frames, shift, seed=0):
    """Frames carry a random per-frame value; the mel carries the same values ``shift`` frames
    later (sound of frame i at audio frame i + shift)."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(num_frames + 40)
    frames = np.broadcast_to(values[:num_frames, None, None, None], (num_frames, 2, 2, 3)).astype(np.float32)
    num_cols = int(80 * (num_frames + 20) / FPS)
    audio_frame = (np.arange(num_cols) * 25) // 80 - shift  # frame whose sound is at this column
    mel = np.broadcast_to(values[np.clip(audio_frame, 0, None)], (80, num_cols)).astype(np.float32)
    return frames, mel


@pytest.mark.parametrize("shift", [0, 4, -7])
def test_offset_finder_recovers_known_shift(shift):
    frames, mel = _synthetic_av(48, shift)
    score = sync_score_with(embed_frames_signal, embed_mel_signal, None, frames, mel, fps=FPS, batch_size=8)
    assert list(score.offsets) == list(range(-15, 16))
    assert score.num_windows == 48 - 15
    assert score.best_offset == shift
    assert score.best_similarity == pytest.approx(1.0, abs=1e-5)
    assert score.confidence > 0.5
    if shift == 0:
        assert score.similarity_at_zero == pytest.approx(1.0, abs=1e-5)
    else:
        assert score.similarity_at_zero < 0.5


def test_score_from_embeddings_pairs_and_errors():
    eye = np.eye(4)
    score = score_from_embeddings(eye[:2], eye, max_offset=2)  # visual i == audio i + 0
    np.testing.assert_allclose(score.mean_similarity, [np.nan, 0, 1, 0, 0], equal_nan=True)
    assert score.best_offset == 0
    with pytest.raises(SyncScoreError, match="16 frames"):
        sync_score_with(embed_frames_signal, embed_mel_signal, None, np.zeros((10, 2, 2, 3)), np.zeros((80, 100)))


@pytest.fixture(scope="module")
def small_syncnet():
    """A narrow StableSyncNet for 32x32 faces (lower half 16x32) with one attention block."""
    config = {
        "audio_encoder": {"in_channels": 1, "block_out_channels": [32] * 6,
                          "downsample_factors": [[2, 1], 2, 2, 2, 2, [2, 3]], "attn_blocks": [0, 0, 0, 1, 0, 0],
                          "dropout": 0.0},
        "visual_encoder": {"in_channels": 48, "block_out_channels": [32] * 5,
                           "downsample_factors": [[1, 2], 2, 2, 2, 2], "attn_blocks": [0, 0, 0, 1, 0],
                           "dropout": 0.0},
    }
    model = StableSyncNet.from_config(config)
    return model, random_params(abstract_params(model), seed=3)


@pytest.mark.integration
def test_sync_score_with_syncnet_windows_match_direct_embedding(small_syncnet):
    model, params = small_syncnet
    rng = np.random.default_rng(5)
    frames = rng.uniform(-1, 1, (19, 32, 32, 3)).astype(np.float32)
    mel = rng.uniform(-4, 4, (80, 150)).astype(np.float32)
    lower = frames[:, 16:]
    vision = visual_window_embeddings(SyncNetTower(model, "visual"), params, jnp.asarray(lower),
                                      jnp.arange(4), batch_size=3)
    starts = audio_window_starts(4, FPS)
    audio = audio_window_embeddings(SyncNetTower(model, "audio"), params, jnp.asarray(mel),
                                    jnp.asarray(starts), batch_size=3)
    # independent construction: (f, h, w, c) -> (h, w, f*3 + c); mel columns int(80 j / 25)
    windows = np.stack([lower[i:i + 16].transpose(1, 2, 0, 3).reshape(16, 32, 48) for i in range(4)])
    clips = np.stack([frames[i:i + 16] for i in range(4)])  # (b, f, h, w, c)
    np.testing.assert_array_equal(np.asarray(stack_frames(clips, lower_half=True)), windows)
    mel_windows = np.stack([mel[:, s:s + 52, None] for s in (0, 3, 6, 9)])
    direct_v, direct_a = jax.jit(model.apply)({"params": params}, windows, mel_windows)
    np.testing.assert_allclose(np.asarray(vision), np.asarray(direct_v), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(audio), np.asarray(direct_a), rtol=1e-4, atol=1e-5)

    losses = syncnet_sync_loss(model, params, jnp.asarray(clips), jnp.asarray(mel_windows[..., 0]))
    cos = np.sum(np.asarray(direct_v) * np.asarray(direct_a), axis=-1)
    np.testing.assert_allclose(np.asarray(losses), -np.log(np.clip(cos, np.exp(-100), None)), rtol=1e-4)

    score = sync_score(model, params, frames, mel, fps=FPS, batch_size=3)
    assert score.num_windows == 4
    expected_zero = float(np.mean(np.sum(np.asarray(direct_v) * np.asarray(direct_a), axis=-1)))
    assert score.similarity_at_zero == pytest.approx(expected_zero, abs=1e-5)
    assert np.isfinite(score.mean_similarity).sum() >= 16  # pairs exist for offsets -3..15
