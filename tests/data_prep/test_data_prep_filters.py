"""data_prep's per-clip filters on short, scaled-down demo clips: sync_av (audio shifted by k
frames is kept and re-cut by k), the quality filter, one person per clip (a two-person clip is
dropped by default and split in two with --multi_face split), the statistics table and plots.

Scorers are test doubles where weights matter (random weights make SyncNet / HyperIQA scores
meaningless); the face pipeline, detection, tracks and plumbing are the real ones."""

import csv
import json
import math
import subprocess

import numpy as np
import pytest

from data_prep import filters
from data_prep.clips import PrepOptions, Tools, process_source
from data_prep.prepare import prepare
from data_prep.stats import COLUMNS, kept_per_stage
from data_prep.sync_filter import SyncResult
from lipsync_jax.audio import load_audio
from lipsync_jax.data import records
from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import asset_path

RES = 64
SECONDS = 4
SPF = 640
SHIFT = 3  # frames the audio of the shifted source comes late


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


def _options(**kwargs):
    base = dict(resolution=RES, min_seconds=2.0, max_seconds=SECONDS, max_source_seconds=SECONDS)
    return PrepOptions(**{**base, **kwargs})


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("filter_media")
    for name in ("demo1", "demo2"):  # 4 s, 360x640 H.264
        _ffmpeg("-i", asset_path(f"{name}_video.mp4"), "-t", str(SECONDS), "-vf", "scale=360:640", "-c:v", "libx264",
                "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(folder / f"{name}.mp4"))
    # demo1 with its sound SHIFT frames late (picture untouched)
    _ffmpeg("-i", str(folder / "demo1.mp4"), "-af", f"adelay={SHIFT * 40}:all=1", "-c:v", "copy", "-c:a", "pcm_s16le",
            str(folder / "shifted.mkv"))
    # two people side by side: demo1 | demo2, each 180x320
    _ffmpeg("-i", str(folder / "demo1.mp4"), "-i", str(folder / "demo2.mp4"), "-filter_complex",
            "[0:v]scale=180:320[a];[1:v]scale=180:320[b];[a][b]hstack=inputs=2[v]", "-map", "[v]", "-map", "0:a",
            "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(folder / "two_people.mp4"))
    return folder


@pytest.fixture(scope="module")
def landmarker():
    from lipsync_jax.face import make_landmarker

    tool = make_landmarker("mediapipe")
    yield tool
    tool.close()


@pytest.fixture(scope="module")
def face_detector():
    tool = filters.MediaPipeFaceDetector()
    yield tool
    tool.close()


class _CorrelationSyncScorer:
    """Stands in for a trained SyncNet: finds the audio lag (in frames, sound after picture
    positive) by correlating the clip's audio with the unshifted reference track, and reports
    a confident score there."""

    def __init__(self, reference: np.ndarray, max_offset: int = 8):
        self.reference, self.max_offset = reference, max_offset
        self.calls = []

    def score(self, faces, audio, fps):
        assert len(audio) == len(faces) * SPF
        window = self.reference[8 * SPF:8 * SPF + 40 * SPF]  # 40 frames of the reference, from frame 8
        lags = range(-self.max_offset, self.max_offset + 1)
        corr = [float(np.dot(window, audio[(8 + d) * SPF:(48 + d) * SPF])) for d in lags]
        best = list(lags)[int(np.argmax(corr))]
        self.calls.append(best)
        return SyncResult(score=0.9, confidence=8.0, offset=best)


@pytest.mark.integration
def test_audio_shifted_by_k_frames_is_kept_and_recut_by_k(media, landmarker, face_detector):
    reference = load_audio(str(media / "demo1.mp4"))
    shifted = load_audio(str(media / "shifted.mkv"))
    scorer = _CorrelationSyncScorer(reference)
    result = process_source(str(media / "shifted.mkv"), _options(), tools=Tools(
        landmarker=landmarker, face_detector=face_detector, sync_scorer=scorer))
    (clip,) = result.clips
    assert scorer.calls == [SHIFT] and clip.sync_offset == SHIFT and clip.sync_confidence == 8.0
    n = SECONDS * 25 - SHIFT  # the last SHIFT frames have no audio SHIFT frames later
    assert len(clip.frames) == n and clip.audio.shape == (n * SPF,)
    np.testing.assert_array_equal(clip.audio, records.audio_to_int16(shifted[SHIFT * SPF:(SHIFT + n) * SPF]))
    # the re-cut audio is the original (unshifted) sound of those frames
    recut = records.audio_to_float(clip.audio)
    original = reference[:n * SPF]
    assert np.corrcoef(recut, original)[0, 1] > 0.95
    assert np.corrcoef(shifted[:n * SPF], original)[0, 1] < 0.8  # without the re-cut it would not match
    (row,) = result.stats
    assert (row.status, row.sync_offset, row.num_frames) == ("kept", SHIFT, n)


def test_sync_av_rule_thresholds():
    assert filters.sync_verdict(3.0, 6, 3.0, 6) == ("", "")
    assert filters.sync_verdict(3.0, -7, 3.0, 6)[0] == "sync_offset"
    assert filters.sync_verdict(2.99, 0, 3.0, 6)[0] == "sync_confidence"
    assert filters.sync_verdict(math.nan, 0, 3.0, 6)[0] == "sync_confidence"
    assert PrepOptions().conf_threshold == 3.0 and PrepOptions(sync_scorer="stable").conf_threshold == 0.0
    assert PrepOptions(sync_conf_threshold=1.5).conf_threshold == 1.5


class _ScriptedQuality:
    """HyperIQA stand-in: returns the next scripted score and records what it was shown."""

    def __init__(self, scores):
        self.scores, self.seen = list(scores), []

    def __call__(self, frames):
        self.seen.append(np.array(frames))
        return self.scores.pop(0)


@pytest.mark.integration
def test_quality_filter_drops_a_clip_scored_below_threshold(media, landmarker, face_detector):
    quality = _ScriptedQuality([30.0, 55.0])  # two 2 s clips: the first one scores below 40
    options = _options(max_seconds=2.0)
    result = process_source(str(media / "demo2.mp4"), options, tools=Tools(
        landmarker=landmarker, face_detector=face_detector, quality_scorer=quality))
    assert [(s.status, s.stage, s.reason, s.quality) for s in result.stats] == [
        ("dropped", "quality", "low_quality", 30.0), ("kept", "kept", "", 55.0)]
    (clip,) = result.clips
    assert clip.start_time == 2.0 and len(clip.frames) == 50
    # LatentSync's filter_visual_quality: first, middle and last aligned frame
    assert [f.shape for f in quality.seen] == [(3, RES, RES, 3)] * 2
    np.testing.assert_array_equal(quality.seen[1], records.decode_frames(clip.frames, [0, 25, 49]))


def _left_right_tracks(boxes_per_frame):
    """Test double for the track finder: faces left / right of the frame's middle (180 px)."""
    spans = []
    for side in (0, 1):
        frames, boxes = [], []
        for i, frame_boxes in enumerate(boxes_per_frame):
            for box in frame_boxes:
                if ((box[0] + box[2]) / 2 >= 180) == bool(side):
                    frames.append(i)
                    boxes.append(box[:4])
                    break
        if frames:
            spans.append(filters.FaceTrackSpan(np.array(frames), np.array(boxes)))
    return spans


@pytest.mark.integration
def test_two_person_clip_is_dropped_by_default(media, landmarker, face_detector):
    result = process_source(str(media / "two_people.mp4"), _options(), tools=Tools(
        landmarker=landmarker, face_detector=face_detector))
    assert result.clips == []
    (row,) = result.stats
    assert (row.status, row.stage, row.reason, row.max_faces) == ("dropped", "single_face", "multi_face", 2)


@pytest.mark.integration
@pytest.mark.parametrize("finder", ["double", "tracks_module"])
def test_two_person_clip_is_split_per_face_track(media, landmarker, face_detector, finder):
    track_finder = _left_right_tracks if finder == "double" else filters.load_track_finder()
    result = process_source(str(media / "two_people.mp4"), _options(multi_face="split"), tools=Tools(
        landmarker=landmarker, face_detector=face_detector, track_finder=track_finder))
    assert [(s.status, s.track) for s in result.stats] == [("kept", 0), ("kept", 1)]
    left, right = result.clips
    assert left.clip_id.endswith("-t0") and right.clip_id.endswith("-t1")
    assert len(left.frames) == len(right.frames) == SECONDS * 25
    np.testing.assert_array_equal(left.audio, right.audio)  # same source sound
    # each clip follows one person: compare with the one-person sources aligned alone
    alone = {name: process_source(str(media / f"{name}.mp4"), _options(multi_face="keep"),
                                  tools=Tools(landmarker=landmarker)).clips[0] for name in ("demo1", "demo2")}

    def distance(a, b):
        idx = [0, 50, 99]
        return float(np.abs(records.decode_frames(a.frames, idx).astype(float)
                            - records.decode_frames(b.frames, idx).astype(float)).mean())

    assert distance(left, alone["demo1"]) < distance(left, alone["demo2"])
    assert distance(right, alone["demo2"]) < distance(right, alone["demo1"])


def test_single_face_verdict_rules():
    one = np.array([[10, 10, 50, 60, 0.9]])
    two = np.array([[10, 10, 50, 60, 0.9], [100, 10, 120, 30, 0.8]])  # second face 20 px tall vs 50
    assert filters.single_face_verdict([one] * 5).ok
    assert filters.single_face_verdict([one] * 5).face_size == 50.0
    assert filters.single_face_verdict([one, two, two, one, two]).reason == "multi_face"
    assert filters.single_face_verdict([one, two, two, one, two], competing_face_ratio=0.5).ok  # small face
    assert filters.single_face_verdict([one, two, one, two, one]).ok  # a second face in < 3 frames: noise
    assert filters.single_face_verdict([one, np.zeros((0, 5)), one]).reason == "face_track"
    assert filters.face_size_verdict(50.0, 64).reason == "face_small"
    assert filters.face_size_verdict(50.0, 0).ok and filters.face_size_verdict(80.0, 64).ok
    assert filters.quality_frame_indices(100) == [0, 50, 99]


@pytest.mark.integration
def test_statistics_table_and_plots_are_written(media, landmarker, face_detector, tmp_path):
    quality = _ScriptedQuality([30.0, 55.0, 70.0, 20.0])
    tools = Tools(landmarker=landmarker, face_detector=face_detector, quality_scorer=quality)
    sources = [str(media / name) for name in ("demo1.mp4", "demo2.mp4", "two_people.mp4")]
    summary = prepare(sources, str(tmp_path), _options(max_seconds=2.0), num_workers=0, tools=tools)
    with open(tmp_path / "clips.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == COLUMNS and len(rows) == 6  # 2 clips per source
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"].rsplit("/", 1)[1], []).append((row["status"], row["stage"], row["quality"]))
    assert by_source["two_people.mp4"] == [("dropped", "single_face", "")] * 2
    assert sorted(by_source["demo1.mp4"] + by_source["demo2.mp4"]) == [
        ("dropped", "quality", "20.0"), ("dropped", "quality", "30.0"), ("kept", "kept", "55.0"),
        ("kept", "kept", "70.0")]
    assert all(float(r["face_size"]) > 20 for r in rows)
    assert summary["kept_clips"] == 2 and summary["dataset_records"] == 2
    stats = json.loads((tmp_path / "stats" / "summary.json").read_text())
    assert stats["kept_per_stage"] == {"candidates": 6, "segment": 6, "single_face": 4, "face_size": 4, "face": 4,
                                       "sync": 4, "quality": 2}
    assert stats["thresholds"]["quality"] == 40.0 and stats["quality"]["measured"] == 4
    for name in ("sync_confidence.png", "quality.png", "clips_per_stage.png"):
        data = (tmp_path / "stats" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_kept_per_stage_counts():
    rows = [{"status": "kept", "stage": "kept"}, {"status": "dropped", "stage": "sync"},
            {"status": "dropped", "stage": "segment"}, {"status": "dropped", "stage": "sync"}]
    assert kept_per_stage(rows) == [("candidates", 4), ("segment", 3), ("single_face", 3), ("face_size", 3),
                                    ("face", 3), ("sync", 1), ("quality", 1)]


@pytest.mark.slow
def test_real_lse_and_hyperiqa_scorers_plumbing(media, landmarker, face_detector):
    """The real scorers (random, narrowed weights: the numbers are meaningless) through the filters:
    classic SyncNet + S3FD on the written clip, HyperIQA on its first/middle/last frame."""
    from lipsync_jax.eval.lse import load_lse_syncnet, load_s3fd
    from lipsync_jax.eval.quality import load_hyperiqa

    sync = filters.LseSyncScorer(syncnet=load_lse_syncnet(random_init=True, narrow_by=8),
                                 detector=load_s3fd(random_init=True, narrow_by=8))
    quality = filters.HyperIqaQualityScorer(scorer=load_hyperiqa(random_init=True, config={"narrow_by": 8}))
    options = _options(resolution=256, max_seconds=3.0, max_source_seconds=3.0, sync_max_offset=15,
                       sync_conf_threshold=-1e9, min_quality=-1e9)
    path = str(media / "demo2.mp4")
    result = process_source(path, options, tools=Tools(landmarker=landmarker, face_detector=face_detector,
                                                       sync_scorer=sync, quality_scorer=quality))
    (row,) = result.stats
    (clip,) = result.clips
    assert row.status == "kept" and np.isfinite(row.sync_confidence) and row.sync_confidence >= 0  # median - min
    assert np.isfinite(row.sync_score) and abs(row.sync_offset) <= 15 and np.isfinite(row.quality)
    first = max(0, -row.sync_offset)
    n = len(clip.frames)
    audio = load_audio(path)[:3 * 16000]
    begin = (first + row.sync_offset) * SPF
    np.testing.assert_array_equal(clip.audio, records.audio_to_int16(
        np.pad(audio[begin:begin + n * SPF], (0, max(0, n * SPF - len(audio[begin:begin + n * SPF]))))))
