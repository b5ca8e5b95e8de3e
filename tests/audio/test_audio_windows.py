"""Whisper window layouts (audio/windows.py): LatentSync's disjoint 30 s windows and the sliding
ones. Sliding equals LatentSync up to 30 s, keeps every shape, gives each row >= 5 s of audio on
both sides, and removes the seam at 30 s (offline and live). A narrow random encoder with real
30 s windows keeps these fast; the speech is the demo audio."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.audio import load_audio
from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices, gather_frame_windows
from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram
from lipsync_jax.audio.windows import (
    AUDIO_WINDOWS,
    check_audio_windows,
    row_sources,
    seam_ratios,
    source_ids,
    window_count,
    window_start_rows,
)
from tests.helpers.paths import ASSETS_DIR

TINY = WhisperEncoderConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2)
SR = 16000


@pytest.fixture(scope="module")
def extractor():
    params = jax.jit(WhisperEncoder(TINY).init)(jax.random.key(0), jnp.zeros((1, TINY.n_frames, TINY.n_mels)))
    return AudioFeatureExtractor(params["params"], TINY, max_batch=4)


@pytest.fixture(scope="module")
def speech40():
    """40 s of speech: demo1 from 3 s, demo2, demo1, ... (no join within 0.5 s of 30 s or 24 s)."""
    one, two = (load_audio(os.path.join(ASSETS_DIR, f"demo{k}_audio.wav")) for k in (1, 2))
    return np.concatenate([one[3 * SR:], two, one, two])[:40 * SR]


def test_names_and_one_line_error():
    assert AUDIO_WINDOWS == ("latentsync", "sliding")
    assert [check_audio_windows(n) for n in AUDIO_WINDOWS] == list(AUDIO_WINDOWS)
    with pytest.raises(ValueError, match=r"^audio windows 'slide': must be one of latentsync, sliding$"):
        check_audio_windows("slide")


@pytest.mark.parametrize("num_rows", [1, 1500, 1501, 2000, 3500, 9000, 30001])
def test_sliding_rows_have_five_seconds_on_both_sides_and_fades_sum_to_one(num_rows):
    count = window_count(num_rows, "sliding")
    starts = window_start_rows(count, "sliding")
    rows = np.arange(num_rows)
    source, fade = row_sources(rows, "sliding", num_windows=count)
    assert count == (1 if num_rows <= 1500 else 1 + -(-(num_rows - 1500) // 950))
    assert source.min() == 0 and source.max() <= count - 1 and np.all(np.diff(source) >= 0)
    assert np.all((fade >= 0) & (fade < 1))
    for window, weight in ((source, 1.0 - fade), (source + 1, fade)):
        used = weight > 0
        local = rows[used] - starts[window[used]]
        assert np.all((local >= 0) & (local < 1500))  # the row lies inside the window
        before = np.minimum(local, rows[used])  # audio the row has before it in this window
        after = np.minimum(1499 - local, num_rows - 1 - rows[used])
        assert np.all(before >= np.minimum(250, rows[used])), "less than 5 s before a row where the clip has it"
        assert np.all(after >= np.minimum(250, num_rows - 1 - rows[used])), "less than 5 s after a row"
    fading = fade > 0  # a cross-fade is 50 rows (1 s) rising from 0 to 1
    assert fading.sum() == 50 * (count - 1)
    if count > 1:
        np.testing.assert_allclose(fade[fading][:50], (np.arange(50) + 0.5) / 50)


def test_latentsync_layout_is_disjoint_30s_windows():
    source, fade = row_sources(np.arange(3500), "latentsync", num_windows=window_count(3500, "latentsync"))
    np.testing.assert_array_equal(source, np.arange(3500) // 1500)
    assert not fade.any() and window_count(3500, "latentsync") == 3
    np.testing.assert_array_equal(window_start_rows(3, "latentsync"), [0, 1500, 3000])


def test_sliding_equals_latentsync_below_30_seconds(extractor, speech40):
    audio = speech40[:int(29.9 * SR)]
    latentsync = extractor.clip_embeddings(audio)
    np.testing.assert_array_equal(extractor.clip_embeddings(audio, "sliding"), latentsync)
    np.testing.assert_array_equal(extractor.frame_windows(audio, windows="sliding"), extractor.frame_windows(audio))


def test_sliding_keeps_every_shape_and_stitches_the_encoded_windows(extractor, speech40):
    latentsync, sliding = (extractor.clip_embeddings(speech40, w) for w in AUDIO_WINDOWS)
    assert sliding.shape == latentsync.shape == (2000, TINY.n_audio_layer + 1, TINY.n_audio_state)
    frames = [extractor.frame_windows(speech40, windows=w) for w in AUDIO_WINDOWS]
    assert frames[0].shape == frames[1].shape == (len(frame_chunk_indices(2000)), 10 * 3, 32)
    np.testing.assert_array_equal(sliding[:1200], latentsync[:1200])  # window 0 is LatentSync's first window
    # window 1 starts at row 950: its own encoding of mel frames 1900..4899 (zero-padded)
    mel = log_mel_spectrogram(speech40)
    window = np.zeros((1, 3000, 80), np.float32)
    window[0, :mel.shape[1] - 1900] = mel[:, 1900:].T
    second = extractor.encode_windows(window)[0]
    np.testing.assert_array_equal(sliding[1250:], second[1250 - 950:2000 - 950])
    fade = (np.arange(50) + 0.5)[:, None, None] / 50  # rows 1200..1249 cross-fade window 0 -> window 1
    np.testing.assert_allclose(sliding[1200:1250], (1 - fade) * latentsync[1200:1250] + fade * second[250:300],
                               rtol=1e-6, atol=1e-6)


def test_bad_name_is_refused(extractor):
    with pytest.raises(ValueError, match="audio windows 'disjoint'"):
        extractor.clip_embeddings(np.zeros(SR, np.float32), "disjoint")


def test_cache_keeps_the_layouts_apart(tmp_path, extractor, speech40):
    cached = AudioFeatureExtractor(extractor.params, TINY, cache=FeatureCache(tmp_path))
    first = cached.clip_embeddings(speech40)
    sliding = cached.clip_embeddings(speech40, "sliding")
    assert len(list(tmp_path.glob("*.npy"))) == 2 and not np.array_equal(first, sliding)
    np.testing.assert_array_equal(cached.clip_embeddings(speech40, "sliding"), sliding)


def _frame_seams(embeddings, windows):
    rows = len(embeddings)
    indices = frame_chunk_indices(rows)
    sources = source_ids(np.arange(rows), windows, num_windows=window_count(rows, windows))
    return seam_ratios(gather_frame_windows(embeddings, indices), sources[indices])


def test_sliding_removes_the_30s_seam(extractor, speech40):
    """Seam = the change between neighbouring frames whose rows come from other windows over the
    median neighbour change (1 = an ordinary step). With random weights LatentSync's 30 s seam is
    ~1.6 per video frame and ~5 per Whisper row; sliding windows leave no step above the ordinary
    ones: the excess over 1 per frame and the row ratio are at most half of LatentSync's."""
    latentsync, sliding = (extractor.clip_embeddings(speech40, w) for w in AUDIO_WINDOWS)
    (pairs_l, frame_l), (pairs_s, frame_s) = _frame_seams(latentsync, "latentsync"), _frame_seams(sliding, "sliding")
    assert len(pairs_l) == 5 and np.all(np.abs(pairs_l - 748) <= 3)  # the frames around 30 s
    assert len(pairs_s) > 5 and np.all(np.abs(pairs_s / 25.0 - 24.5) < 1.0)  # the cross-fade at 24-25 s
    assert frame_l.max() > 1.3, "LatentSync's seam should stand out from an ordinary step"
    assert frame_s.max() - 1.0 <= 0.5 * (frame_l.max() - 1.0)
    row_l = seam_ratios(latentsync, source_ids(np.arange(2000), "latentsync")[:, None])[1].max()
    row_s = seam_ratios(sliding, source_ids(np.arange(2000), "sliding", num_windows=2)[:, None])[1].max()
    assert row_s <= 0.5 * row_l


@pytest.mark.integration
def test_live_sliding_equals_live_latentsync_below_30_seconds_and_is_the_default(extractor, speech40):
    from lipsync_jax.live.audio_online import OnlineAudioFeatures, stream_windows

    assert OnlineAudioFeatures(extractor).layout == "sliding"
    with pytest.raises(ValueError, match="must be one of"):
        OnlineAudioFeatures(extractor, windows="overlap")
    audio = speech40[:12 * SR]
    np.testing.assert_array_equal(stream_windows(extractor, audio, piece=3200, windows="sliding"),
                                  stream_windows(extractor, audio, piece=3200, windows="latentsync"))


@pytest.mark.slow
def test_live_sliding_removes_the_30s_seam(extractor, speech40):
    """A 40 s live stream (80 ms pieces): the same seam numbers as offline, on the windows the
    session computes as the audio arrives (right context: only the look-ahead)."""
    from lipsync_jax.live.audio_online import stream_windows

    indices = frame_chunk_indices(2000)[:1000]
    ratios = {}
    for windows in AUDIO_WINDOWS:
        online = stream_windows(extractor, speech40, piece=1280, windows=windows)
        assert online.shape == (1000, 30, 32)
        ratios[windows] = seam_ratios(online, source_ids(indices, windows))[1].max()
    assert ratios["latentsync"] > 1.3
    assert ratios["sliding"] - 1.0 <= 0.5 * (ratios["latentsync"] - 1.0)
