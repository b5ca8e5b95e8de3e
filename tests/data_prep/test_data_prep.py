"""data_prep end to end on the demo videos (first 6 s, downscaled), a corrupt file and a video
without a face; plus the shot detector, clip segmenting and offset-trimming helpers."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from data_prep.clips import PrepOptions, source_key
from data_prep.prepare import MARKER, WORK_DIR, prepare
from data_prep.shots import ShotDetector, segment_shot
from data_prep.sync_filter import corrected_span
from lipsync_jax.data import records
from lipsync_jax.media import ffmpeg_exe
from tests.helpers.paths import ROOT, asset_path

RES = 64
SECONDS = 6


def _ffmpeg(*args):
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    for name in ("demo1", "demo2"):  # 6 s, 360x640, H.264 (the originals are 1080x1920 HEVC)
        _ffmpeg("-i", asset_path(f"{name}_video.mp4"), "-t", str(SECONDS), "-vf", "scale=360:640",
                "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18", "-c:a", "aac", str(folder / f"{name}.mp4"))
    _ffmpeg("-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
            "-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-t", str(SECONDS),
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac",
            "-shortest", str(folder / "no_face.mp4"))
    (folder / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 30000, np.uint8).tobytes())
    return folder


@pytest.fixture(scope="module")
def prepared(sources, tmp_path_factory):
    out = tmp_path_factory.mktemp("dataset")
    cmd = [sys.executable, "-m", "data_prep", "--input_dir", str(sources), "--output_dir", str(out),
           "--num_workers", "2", "--resolution", str(RES), "--max_source_seconds", str(SECONDS)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stderr


@pytest.mark.integration
def test_real_videos_become_records_and_bad_files_are_skipped(prepared, sources):
    out, log = prepared
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sources"] == 4 and summary["kept_clips"] == 2
    assert summary["sources_by_status"] == {"done": 2, "skipped": 2}
    skipped = summary["skipped_sources_by_reason"]
    assert [s["source"] for s in skipped["unreadable_video"]] == [str(sources / "corrupt.mp4")]
    assert [s["source"] for s in skipped["no_face"]] == [str(sources / "no_face.mp4")]
    assert "corrupt.mp4: skipped (unreadable_video)" in log and "no_face.mp4: skipped (no_face)" in log
    assert "corrupt.mp4" in (out / "data_prep.log").read_text()


@pytest.mark.integration
def test_dataset_opens_with_tfds_without_tensorflow(prepared, sources):
    out, _ = prepared
    code = (
        "import sys, tensorflow_datasets as tfds\n"
        f"ds = tfds.data_source('{records.DEFAULT_NAME}', data_dir={str(out)!r})['train']\n"
        "print(len(ds), sorted(r['clip_id'].decode() for r in (ds[0], ds[1])))\n"
        "assert 'tensorflow' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count, ids = proc.stdout.strip().split(" ", 1)
    assert int(count) == 2
    for name in ("demo1", "demo2"):
        assert source_key(str(sources / f"{name}.mp4")) in ids


@pytest.mark.integration
def test_record_contents(prepared, sources):
    out, _ = prepared
    source = records.ClipDataSource(str(out))
    by_source = {os.path.basename(source[i]["source"].decode()): source[i] for i in range(len(source))}
    assert sorted(by_source) == ["demo1.mp4", "demo2.mp4"]
    for record in by_source.values():
        n = SECONDS * 25
        assert record["num_frames"] == n and len(record["frames"]) == n
        assert record["audio"].dtype == np.int16 and record["audio"].shape == (n * 640,)
        assert np.abs(record["audio"]).max() > 1000  # real speech, not silence
        assert record["fps"] == 25.0 and record["resolution"] == RES and record["audio_sample_rate"] == 16000
        assert (record["source_width"], record["source_height"]) == (360, 640)
        assert record["start_time"] == 0.0
        assert math.isnan(record["sync_score"]) and record["sync_offset"] == 0
        faces = records.decode_frames(record["frames"], [0, n // 2, n - 1])
        assert faces.shape == (3, RES, RES, 3) and faces.std() > 10


@pytest.mark.integration
def test_rerun_skips_finished_sources(prepared, sources):
    out, _ = prepared
    markers = sorted((out / WORK_DIR).glob(f"*/{MARKER}"))
    assert len(markers) == 4
    before = [m.stat().st_mtime_ns for m in markers]
    options = PrepOptions(resolution=RES, max_source_seconds=SECONDS)
    paths = sorted(str(p) for p in sources.iterdir())
    summary = prepare(paths, str(out), options, num_workers=2)
    assert summary["processed_this_run"] == 0 and summary["reused"] == 4
    assert summary["kept_clips"] == 2 and summary["dataset_records"] == 2
    assert [m.stat().st_mtime_ns for m in markers] == before
    assert len(records.ClipDataSource(str(out))) == 2
    # other options are other work: nothing reused
    changed = prepare([str(sources / "corrupt.mp4")], str(out / "other"), PrepOptions(resolution=32), num_workers=0)
    assert changed["processed_this_run"] == 1 and changed["kept_clips"] == 0


def test_shot_detector_finds_a_cut_and_ignores_motion():
    rng = np.random.default_rng(0)
    warm = np.clip(rng.normal((170, 120, 100), 20, (90, 160, 3)), 0, 255).astype(np.uint8)
    cold = np.clip(rng.normal((40, 80, 160), 20, (90, 160, 3)), 0, 255).astype(np.uint8)
    frames = [np.roll(warm, 3 * i, axis=1) for i in range(10)] + [np.roll(cold, 3 * i, axis=1) for i in range(10)]
    detector = ShotDetector()
    cuts = [i for i, frame in enumerate(frames) if detector.update(frame)]
    assert cuts == [10]
    assert max(detector.distances[:9]) < 0.1 < detector.distances[9]


def test_segment_shot_gives_5_to_10_second_clips():
    for length in (124, 125, 250, 251, 499, 500, 501, 1234):
        clips = segment_shot(100, length, 125, 250)
        if length < 125:
            assert clips == []
            continue
        assert all(125 <= n <= 250 for _, n in clips)
        starts = [s for s, _ in clips]
        assert starts[0] == 100 and all(b - a == clips[0][1] for a, b in zip(starts, starts[1:]))
        assert 0 <= 100 + length - (starts[-1] + clips[-1][1]) < len(clips)


def test_corrected_span_keeps_frames_whose_shifted_audio_exists():
    # 300 frames of audio; a clip of 150 frames at frame 0 with audio 5 frames early is cut
    assert corrected_span(0, 150, -5, 300 * 640, 640) == (5, 150)
    assert corrected_span(100, 150, 3, 300 * 640, 640) == (0, 150)
    assert corrected_span(140, 150, 20, 300 * 640, 640) == (0, 140)


class _FixedOffsetScorer:
    """Stands in for the SyncNet: says the audio lags the picture by OFFSET frames."""

    OFFSET = 3

    def score(self, faces, audio, fps):
        from data_prep.sync_filter import SyncResult

        assert len(audio) == len(faces) * 640
        return SyncResult(score=0.5, confidence=0.2, offset=self.OFFSET)


@pytest.mark.integration
def test_sync_offset_recuts_the_audio(sources):
    from data_prep.clips import process_source
    from lipsync_jax.audio import load_audio

    path = str(sources / "demo1.mp4")
    options = PrepOptions(resolution=RES, max_source_seconds=SECONDS, syncnet_ckpt="(fake)", sync_conf_threshold=0.1)
    result = process_source(path, options, scorer=_FixedOffsetScorer())
    (clip,) = result.clips
    shift = _FixedOffsetScorer.OFFSET
    n = SECONDS * 25 - shift  # the last frames have no audio 3 frames later within the 6 s
    assert len(clip.frames) == n and (clip.sync_offset, clip.sync_score) == (shift, 0.5)
    expected = records.audio_to_int16(load_audio(path)[shift * 640:(shift + n) * 640])
    np.testing.assert_array_equal(clip.audio, expected)


@pytest.mark.heavy  # StableSyncNet compile + scoring
def test_tiny_syncnet_checkpoint_scores_clips(sources, tmp_path):
    import jax

    from lipsync_jax.checkpoints import save_params
    from lipsync_jax.config_utils import config_to_dict, load_config
    from lipsync_jax.models.syncnet import StableSyncNet, init_params

    config = config_to_dict(load_config("configs/syncnet/tiny.py:64"))
    params = init_params(jax.random.key(0), StableSyncNet.from_config(config), image_hw=(RES // 2, RES))
    ckpt = save_params(str(tmp_path / "syncnet"), params, config)
    options = PrepOptions(resolution=RES, max_source_seconds=SECONDS, sync_scorer="stable", syncnet_ckpt=ckpt,
                          sync_max_offset=15, sync_conf_threshold=-1.0)
    summary = prepare([str(sources / "demo2.mp4")], str(tmp_path / "out"), options, num_workers=0)
    assert summary["kept_clips"] == 1, summary
    record = records.ClipDataSource(str(tmp_path / "out"))[0]
    assert np.isfinite(record["sync_score"]) and abs(record["sync_score"]) <= 1.0 + 1e-5  # a cosine
    assert np.isfinite(record["sync_confidence"]) and abs(record["sync_offset"]) <= 15
    assert record["num_frames"] == SECONDS * 25 - abs(record["sync_offset"])
    assert record["audio"].shape == (record["num_frames"] * 640,)


def test_sources_from_folder_and_list(tmp_path):
    from data_prep.prepare import PrepError, list_sources

    (tmp_path / "a").mkdir()
    for name in ("a/x.mp4", "a/y.MOV", "a/notes.txt", "z.mkv"):
        (tmp_path / name).write_bytes(b"")
    listing = tmp_path / "list.txt"
    listing.write_text("# comment\nz.mkv\n\na/x.mp4\n")
    assert list_sources(str(tmp_path / "a"), None) == [str(tmp_path / "a/x.mp4"), str(tmp_path / "a/y.MOV")]
    assert list_sources(str(tmp_path / "a"), str(listing)) == [
        str(tmp_path / "a/x.mp4"), str(tmp_path / "a/y.MOV"), str(tmp_path / "z.mkv")]
    with pytest.raises(PrepError, match="not a folder"):
        list_sources(str(tmp_path / "missing"), None)
    with pytest.raises(PrepError, match="no videos"):
        empty = tmp_path / "empty.txt"
        empty.write_text("# nothing\n")
        list_sources(None, str(empty))


@pytest.mark.integration
def test_cli_bad_arguments_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "data_prep", "--input_dir", str(tmp_path / "nope"),
                           "--output_dir", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
