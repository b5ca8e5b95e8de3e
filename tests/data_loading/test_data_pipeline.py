"""grain UNet/SyncNet loaders over a small synthetic clip dataset.

Frames are flat grey images whose level encodes (clip, frame), so a decoded sample says which
frames it came from; the stand-in Whisper embedder returns rows whose value is their row index,
so the audio windows say which rows they took.
"""

import os

import numpy as np
import pytest

from lipsync_jax.audio.features import frame_chunk_indices
from lipsync_jax.audio.syncnet_mel import syncnet_mel, syncnet_mel_crop
from lipsync_jax.data import records
from lipsync_jax.data.audio_features import WhisperFeatures
from lipsync_jax.data.loader import make_loader, syncnet_loader
from lipsync_jax.data.transforms import UNetSample
from lipsync_jax.data.windows import audio_row_indices, sample_target_and_reference
from lipsync_jax.face.mask import load_fixed_mask

RES = 32
F = 16
CLIP_FRAMES = (48, 60, 52, 70, 49, 64)  # >= 3 * F each
LAYERS, WIDTH = 3, 4


def _level(clip: int, frame: int) -> int:
    return 3 * frame + (clip % 2)  # < 256 for frame < 80; parity tells neighbouring clips apart


def _frame_index(frames: np.ndarray) -> np.ndarray:
    """(f, h, w, 3) in [-1, 1] -> the frame index each flat frame encodes."""
    levels = (frames.reshape(frames.shape[0], -1).mean(axis=1) + 1.0) * 127.5
    return np.round(levels / 3.0 - 0.2).astype(int)


class RowIndexEmbedder:
    """Stand-in Whisper: (T, LAYERS, WIDTH) with value row + 1000 * layer, T = 50 rows/s."""

    def __call__(self, audio):
        rows = len(audio) // 320
        return (np.arange(rows)[:, None, None] + 1000.0 * np.arange(LAYERS)[None, :, None]
                + np.zeros((1, 1, WIDTH))).astype(np.float32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("clips"))
    rng = np.random.default_rng(0)
    feature_dict = records.features()
    serialized = []
    for clip, n in enumerate(CLIP_FRAMES):
        frames = [records.encode_jpeg(np.full((RES, RES, 3), _level(clip, i), np.uint8)) for i in range(n)]
        audio = records.audio_to_int16(0.1 * rng.standard_normal(n * 640))
        record = records.ClipRecord(f"clip{clip}", frames, audio, 25.0, RES, f"src{clip}.mp4", 640, 360, 0.0)
        serialized.append(records.serialize(record, feature_dict))
    records.write_dataset(root, [serialized[:4], serialized[4:]], records_per_shard=4)
    return root


def _unet_loader(dataset, **kwargs):
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("shard_index", 0)
    kwargs.setdefault("shard_count", 1)
    transform = UNetSample(F, RES, embedder=RowIndexEmbedder())
    return make_loader(dataset, transform, kwargs.pop("batch_size", 2), **kwargs)


def _take(iterator, n):
    return [next(iterator) for _ in range(n)]


def _assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert sorted(x) == sorted(y)
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_unet_batch_shapes_ranges_and_masking(dataset):
    batch = next(iter(_unet_loader(dataset)))
    b = 2
    assert batch["gt_frames"].shape == (b, F, RES, RES, 3) and batch["gt_frames"].dtype == np.float32
    assert batch["ref_frames"].shape == (b, F, RES, RES, 3)
    assert batch["masked_frames"].shape == (b, F, RES, RES, 3)
    assert batch["masks"].shape == (b, F, RES, RES, 1)
    assert batch["mel"].shape == (b, 80, 52, 1)
    assert batch["audio_embeds"].shape == (b, F, 10 * LAYERS, WIDTH)
    for key in ("gt_frames", "ref_frames"):
        assert batch[key].min() >= -1.0 and batch[key].max() <= 1.0
    mask = load_fixed_mask(RES)
    np.testing.assert_allclose(batch["masks"], np.broadcast_to(mask[..., :1], batch["masks"].shape))
    np.testing.assert_allclose(batch["masked_frames"], batch["gt_frames"] * mask, rtol=1e-6)
    assert 0.0 < batch["masks"].mean() < 1.0  # something is masked, something kept


def test_frames_come_from_the_sampled_windows_which_never_overlap(dataset):
    it = iter(_unet_loader(dataset, batch_size=3))
    for batch in _take(it, 4):
        for i in range(3):
            start, ref = int(batch["start_index"][i]), int(batch["ref_start_index"][i])
            assert abs(start - ref) >= F
            np.testing.assert_array_equal(_frame_index(batch["gt_frames"][i]), np.arange(start, start + F))
            np.testing.assert_array_equal(_frame_index(batch["ref_frames"][i]), np.arange(ref, ref + F))
            n = CLIP_FRAMES[int(batch["record_index"][i])]
            assert 0 <= start <= n - F and 0 <= ref <= n - F
    rng = np.random.default_rng(1)
    for total in (48, 49, 60, 250):
        for _ in range(200):
            start, ref = sample_target_and_reference(rng, total, F)
            assert set(range(start, start + F)).isdisjoint(range(ref, ref + F))


def test_audio_windows_line_up_with_frames(dataset):
    batch = next(iter(_unet_loader(dataset, batch_size=4)))
    for i in range(4):
        start = int(batch["start_index"][i])
        rows_total = CLIP_FRAMES[int(batch["record_index"][i])] * 640 // 320
        windows = batch["audio_embeds"][i].reshape(F, 10, LAYERS, WIDTH)  # flattened (row, layer)
        for k in range(F):
            frame = start + k
            expected = np.clip(np.arange(2 * frame - 4, 2 * frame + 6), 0, rows_total - 1)
            np.testing.assert_array_equal(windows[k, :, 0, 0], expected)
            np.testing.assert_array_equal(windows[k, :, 2, 0], expected + 2000)
    # the same rows as the audio module's whole-video windows (LatentSync's feature2chunks)
    for rows in (96, 101, 480):
        whole = frame_chunk_indices(rows, 25.0)
        np.testing.assert_array_equal(audio_row_indices(range(len(whole)), rows), whole)


def test_mel_is_the_syncnet_crop_of_the_clip_audio(dataset):
    batch = next(iter(_unet_loader(dataset)))
    source = records.ClipDataSource(dataset)
    for i in range(2):
        record = source[int(batch["record_index"][i])]
        mel = syncnet_mel(records.record_to_float_audio(record))
        expected = syncnet_mel_crop(mel, int(batch["start_index"][i]), F)[0][..., None]
        np.testing.assert_allclose(batch["mel"][i], expected, rtol=1e-6, atol=1e-6)


def test_same_seed_same_batches_other_seed_differs(dataset):
    a = _take(iter(_unet_loader(dataset, seed=3)), 3)
    _assert_same_batches(a, _take(iter(_unet_loader(dataset, seed=3)), 3))
    c = _take(iter(_unet_loader(dataset, seed=4)), 3)
    assert any(not np.array_equal(x["start_index"], y["start_index"]) or
               not np.array_equal(x["record_index"], y["record_index"]) for x, y in zip(a, c))


def test_two_way_sharding_gives_disjoint_samples(dataset):
    seen = []
    for shard in (0, 1):
        loader = _unet_loader(dataset, batch_size=1, shard_index=shard, shard_count=2, num_epochs=1)
        seen.append({int(b["record_index"][0]) for b in loader})
    assert seen[0] and seen[1]
    assert seen[0].isdisjoint(seen[1])
    assert seen[0] | seen[1] == set(range(len(CLIP_FRAMES)))


@pytest.mark.integration
def test_restored_iterator_state_continues_with_the_same_batches(dataset):
    it = iter(_unet_loader(dataset, worker_count=2))  # worker processes
    _take(it, 2)
    state = it.get_state()
    expected = _take(it, 3)
    resumed = iter(_unet_loader(dataset, worker_count=2))
    resumed.set_state(state)
    _assert_same_batches(_take(resumed, 3), expected)
    # the same with the in-process loader
    inline = iter(_unet_loader(dataset, worker_count=0))
    _take(inline, 2)
    inline_state = inline.get_state()
    inline_expected = _take(inline, 3)
    inline = iter(_unet_loader(dataset, worker_count=0))
    inline.set_state(inline_state)
    _assert_same_batches(_take(inline, 3), inline_expected)


def test_syncnet_batches_pair_aligned_or_shifted_audio(dataset):
    loader = syncnet_loader(dataset, batch_size=8, num_frames=F, resolution=RES, seed=5, shard_index=0,
                            shard_count=1)
    batch = next(iter(loader))
    assert batch["frames"].shape == (8, F, RES, RES, 3) and batch["mel"].shape == (8, 80, 52, 1)
    assert set(np.unique(batch["labels"])) == {0.0, 1.0}
    for i in range(8):
        start, frames_start = int(batch["start_index"][i]), int(batch["frames_start_index"][i])
        assert (start == frames_start) == bool(batch["labels"][i])
        np.testing.assert_array_equal(_frame_index(batch["frames"][i]), np.arange(frames_start, frames_start + F))


def test_too_short_clips_are_skipped(tmp_path):
    frames = [records.encode_jpeg(np.zeros((RES, RES, 3), np.uint8))] * (3 * F - 1)
    record = records.ClipRecord("short", frames, np.zeros(len(frames) * 640, np.int16), 25.0, RES, "s.mp4",
                                1, 1, 0.0)
    records.write_dataset(str(tmp_path), [[records.serialize(record)]])
    loader = make_loader(str(tmp_path), UNetSample(F, RES), 1, shard_index=0, shard_count=1, num_epochs=1)
    assert list(loader) == []


def test_tiny_random_whisper_features_are_cached(dataset, tmp_path):
    cache = str(tmp_path / "embeds")
    embedder = WhisperFeatures("tiny_random", cache_dir=cache)
    loader = make_loader(dataset, UNetSample(F, RES, embedder=embedder), 1, seed=1, shard_index=0, shard_count=1)
    batch = next(iter(loader))
    assert batch["audio_embeds"].shape == (1, F, 10 * 3, 32)  # 2 layers + input, width 32
    assert np.isfinite(batch["audio_embeds"]).all() and batch["audio_embeds"].std() > 0
    assert len(os.listdir(cache)) == 1


def test_unet_loader_from_tiny_config(dataset, tmp_path):
    from lipsync_jax.config_utils import config_to_dict, load_config
    from lipsync_jax.data.loader import unet_loader_from_config

    overrides = [f"data.train_data_dir={dataset}", f"data.audio_embeds_cache_dir={tmp_path / 'embeds'}",
                 f"data.audio_mel_cache_dir={tmp_path / 'mel'}", "whisper.dims.n_audio_state=32",
                 "whisper.dims.n_audio_head=2", "whisper.dims.n_audio_layer=2"]
    config = config_to_dict(load_config("configs/unet/tiny.py", overrides))
    assert config["whisper"]["ckpt_path"] == ""  # -> random weights with whisper.dims
    loader = unet_loader_from_config(config, shard_index=0, shard_count=1)
    batch = next(iter(loader))
    b, f, s = config["data"]["batch_size"], config["data"]["num_frames"], config["data"]["resolution"]
    assert batch["gt_frames"].shape == (b, f, s, s, 3)  # 32 px records resized to the config's 64
    np.testing.assert_allclose(batch["masks"][0, 0], load_fixed_mask(s)[..., :1])
    assert batch["audio_embeds"].shape == (b, f, 10 * 3, 32)
    for i in range(b):  # resizing keeps which frames were taken
        start = int(batch["start_index"][i])
        np.testing.assert_array_equal(_frame_index(batch["gt_frames"][i]), np.arange(start, start + f))


@pytest.mark.integration
def test_precompute_fills_the_caches_the_loader_reads(dataset, tmp_path):
    from lipsync_jax.data.precompute import main

    embeds, mel = tmp_path / "embeds", tmp_path / "mel"
    args = ["--data_dir", dataset, "--whisper_params", "tiny_random", "--audio_embeds_cache_dir", str(embeds),
            "--audio_mel_cache_dir", str(mel)]
    assert main(args + ["--shard_index", "1", "--shard_count", "2"]) == 0
    assert len(os.listdir(embeds)) == len(os.listdir(mel)) == len(CLIP_FRAMES) // 2
    assert main(args) == 0
    assert len(os.listdir(embeds)) == len(os.listdir(mel)) == len(CLIP_FRAMES)
    # a loader with the same params looks up exactly these entries
    embedder = WhisperFeatures("tiny_random", cache_dir=str(embeds))
    source = records.ClipDataSource(dataset)
    for i in range(len(source)):
        audio = records.record_to_float_audio(source[i])
        assert os.path.isfile(embedder._build().cache.path_for(audio, embedder._build().identity))
