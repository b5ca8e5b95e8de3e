"""Whisper encoder features: long-audio window stitching, batching, frame windows for any fps,
silence/short audio, bfloat16, and the content-hash cache. A tiny random encoder (real 30 s
windows, narrow width) keeps these fast."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices, gather_frame_windows
from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram

TINY = WhisperEncoderConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2)
SR = 16000


@pytest.fixture(scope="module")
def tiny_params():
    mel = jnp.zeros((1, TINY.n_frames, TINY.n_mels))
    return jax.jit(WhisperEncoder(TINY).init)(jax.random.key(0), mel)["params"]


@pytest.fixture(scope="module")
def extractor(tiny_params):
    return AudioFeatureExtractor(tiny_params, TINY, max_batch=4)


def _speechlike(seconds, seed=0):
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * np.arange(n) / SR)
    return (0.2 * envelope * rng.standard_normal(n)).astype(np.float32)


def _encode_one(params, mel_window):  # (3000, 80) -> (1500, layers, d), one window, no batching code
    out, _ = WhisperEncoder(TINY).apply({"params": params}, jnp.asarray(mel_window)[None])
    return np.asarray(out[0])


@pytest.mark.integration
def test_long_audio_stitches_independent_30s_windows(extractor, tiny_params):
    audio = _speechlike(65.3)
    embeddings = extractor.clip_embeddings(audio)
    mel = log_mel_spectrogram(audio)  # (80, 6530)
    assert embeddings.shape == (1500 + 1500 + 265, TINY.n_audio_layer + 1, TINY.n_audio_state)
    for w, (start, rows) in enumerate([(0, 1500), (3000, 1500), (6000, 265)]):
        window = np.zeros((3000, 80), np.float32)
        chunk = mel[:, start:start + 3000].T
        window[:len(chunk)] = chunk
        expected = _encode_one(tiny_params, window)[:rows]
        got = embeddings[w * 1500:w * 1500 + rows]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"window {w}")


def test_first_window_overlaps_single_window_result(extractor):
    """Where the long clip's first window and a clip of just its first 30 s see the same mel
    (same loudest frame, same samples under every STFT frame), their rows agree."""
    audio = _speechlike(42.0)
    audio[SR:2 * SR] *= 3.0  # the loudest second lies in the first window: same max-8 floor
    long_rows = extractor.clip_embeddings(audio)
    head = audio[:30 * SR + 160]  # 3001 mel frames: frame 2999 sees the same samples as in the long clip
    head_rows = extractor.clip_embeddings(head)
    np.testing.assert_allclose(head_rows[:1500], long_rows[:1500], rtol=1e-5, atol=1e-5)
    assert long_rows.shape[0] == 1500 + 1200 // 2 and head_rows.shape[0] == 1500  # 1 extra mel frame -> 0 rows


def test_window_batching_does_not_change_results(tiny_params):
    audio = _speechlike(95.0, seed=3)  # 4 windows
    one = AudioFeatureExtractor(tiny_params, TINY, max_batch=1).clip_embeddings(audio)
    many = AudioFeatureExtractor(tiny_params, TINY, max_batch=8).clip_embeddings(audio)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-5)


def test_frame_windows_count_and_flatten_order(extractor):
    audio = _speechlike(3.0)
    embeddings = extractor.clip_embeddings(audio)
    windows = extractor.frame_windows(audio)
    rows = len(embeddings)
    assert rows == 150 and windows.shape == (rows // 2 + 2, 10 * 3, 32)
    idx = frame_chunk_indices(rows)
    for frame in (0, 1, 37, len(idx) - 1):
        for j in range(10):
            for layer in range(3):
                np.testing.assert_array_equal(windows[frame, j * 3 + layer], embeddings[idx[frame, j], layer])


def test_frame_indices_for_other_fps():
    rows = 400
    at25, at50 = frame_chunk_indices(rows, 25), frame_chunk_indices(rows, 50)
    assert len(at50) == rows + 2 and len(at25) == rows // 2 + 2
    np.testing.assert_array_equal(at50[0:len(at25) * 2 - 2:2], at25[:-1])  # frame 2i at 50 fps = frame i at 25
    for fps in (30.0, 29.97, 24.0, 12.5):
        idx = frame_chunk_indices(rows, fps)
        centres = np.array([int(i * 50 / fps) for i in range(len(idx))])
        np.testing.assert_array_equal(idx[:, 4], np.clip(centres, 0, rows - 1))
        np.testing.assert_array_equal(idx - idx[:, 4:5], np.clip(idx - idx[:, 4:5], -4, 5))
        last_start = int((len(idx) - 1) * (50.0 / fps))
        assert last_start > rows and int((len(idx) - 2) * (50.0 / fps)) <= rows
        # each window covers the 0.2 s of audio centred on the frame's own time
        times = np.arange(len(idx)) / fps
        inside = centres < rows - 5
        assert np.all(np.abs(idx[inside, 4] / 50.0 - times[inside]) < 1 / 50 + 1e-9)


def test_frame_indices_clamp_at_both_ends():
    idx = frame_chunk_indices(10)
    np.testing.assert_array_equal(idx[0], [0, 0, 0, 0, 0, 1, 2, 3, 4, 5])
    np.testing.assert_array_equal(idx[-1], [8, 9, 9, 9, 9, 9, 9, 9, 9, 9])


def test_short_audio_and_silence_are_finite(extractor):
    short = extractor.frame_windows(_speechlike(0.3))
    assert short.shape == (15 // 2 + 2, 30, 32) and np.all(np.isfinite(short))
    silent = extractor.frame_windows(np.zeros(SR // 2, np.float32))
    assert silent.shape == (25 // 2 + 2, 30, 32) and np.all(np.isfinite(silent))


def test_audio_shorter_than_one_embedding_is_an_error(extractor):
    with pytest.raises(ValueError, match="shorter than one Whisper frame"):
        extractor.frame_windows(np.zeros(200, np.float32))


def test_bfloat16_compute_close_to_float32(tiny_params):
    audio = _speechlike(2.0)
    ref = AudioFeatureExtractor(tiny_params, TINY).clip_embeddings(audio)
    bf16 = AudioFeatureExtractor(tiny_params, TINY, dtype=jnp.bfloat16).clip_embeddings(audio)
    assert bf16.dtype == np.float32 and np.all(np.isfinite(bf16))
    assert np.linalg.norm(bf16 - ref) / np.linalg.norm(ref) < 3e-2


def test_gather_frame_windows_shape():
    emb = np.arange(6 * 2 * 3, dtype=np.float32).reshape(6, 2, 3)
    out = gather_frame_windows(emb, np.array([[0, 5], [2, 2]]))
    assert out.shape == (2, 4, 3)
    np.testing.assert_array_equal(out[0], np.concatenate([emb[0], emb[5]]))


def test_cache_hits_misses_and_recovers(tmp_path, tiny_params):
    cache = FeatureCache(tmp_path / "audio_cache")
    extractor = AudioFeatureExtractor(tiny_params, TINY, cache=cache)
    audio = _speechlike(1.0)
    calls = []
    original = extractor._clip_embeddings
    extractor._clip_embeddings = lambda a: calls.append(1) or original(a)

    first = extractor.clip_embeddings(audio)
    again = extractor.clip_embeddings(audio.copy())  # same content, other array: hit
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    files = list((tmp_path / "audio_cache").glob("*.npy"))
    assert len(files) == 1

    changed = audio.copy()
    changed[100] += 0.01
    extractor.clip_embeddings(changed)  # other content: miss
    assert len(calls) == 2

    files[0].write_bytes(b"not a numpy file")  # corrupt entry: recomputed and rewritten
    np.testing.assert_allclose(extractor.clip_embeddings(audio), first, rtol=1e-6)
    assert len(calls) == 3
    np.testing.assert_array_equal(np.load(files[0]), first)


def test_cache_identity_depends_on_params(tiny_params):
    other = jax.tree_util.tree_map(lambda x: x * 1.5, tiny_params)
    a = AudioFeatureExtractor(tiny_params, TINY).identity
    b = AudioFeatureExtractor(other, TINY).identity
    c = AudioFeatureExtractor(tiny_params, TINY, dtype=jnp.bfloat16).identity
    assert len({a, b, c}) == 3
