"""LSE-C / LSE-D: classic SyncNet + S3FD (golden fixtures, manifests), MFCC, offset search,
face tracking and cropping, the legacy torch reader, and eval/lse.py end to end (random weights)."""

from __future__ import annotations

import collections
import csv
import json
import os
import pickle
import subprocess
import sys
import types
import wave

import numpy as np
import pytest

from lipsync_jax.golden.core import load_fixture, load_manifest
from tests.helpers.paths import ROOT

GOLDEN = os.path.join(ROOT, "tests", "data", "golden")
ASSETS = os.path.join(ROOT, "tests", "data", "assets")


def _assert_all_pass(comparisons):
    assert comparisons
    failed = [c.line() for c in comparisons if not c.passed]
    assert not failed, failed


@pytest.mark.integration
@pytest.mark.parametrize("name", ["lse_syncnet_tiny.npz", "s3fd_tiny.npz"])
def test_golden_fixture(name):
    from lipsync_jax.golden.check_eval_nets import check_fixture

    _assert_all_pass(check_fixture(load_fixture(os.path.join(GOLDEN, name))))


@pytest.mark.parametrize("name", ["manifest_lse_syncnet.json", "manifest_s3fd.json"])
def test_golden_manifest_exact_count(name):
    from lipsync_jax.golden.check_eval_nets import check_manifest
    from lipsync_jax.golden.registry import manifest_kind

    manifest = load_manifest(os.path.join(GOLDEN, name))
    assert manifest_kind(manifest["name"]) == manifest["kind"]
    comparisons = check_manifest(manifest)
    _assert_all_pass(comparisons)
    assert f"{manifest['total_params']:,}" in comparisons[1].detail


def test_mfcc_shapes_and_short_signal():
    from lipsync_jax.audio.mfcc import mfcc, num_mfcc_frames

    fixture = load_fixture(os.path.join(GOLDEN, "lse_syncnet_tiny.npz"))
    audio = fixture.inputs["audio"]
    assert mfcc(audio).shape == (num_mfcc_frames(audio.shape[0]), 13) == fixture.outputs["mfcc"].T.shape
    short = mfcc(audio[:100])  # shorter than one 400-sample frame: one zero-padded frame
    assert short.shape == (1, 13) and np.all(np.isfinite(short))
    assert np.all(np.isfinite(mfcc(np.zeros(800))))  # silence: eps instead of log(0)


def test_offset_search_sign_and_confidence():
    from lipsync_jax.eval.lse_score import sync_distances

    rng = np.random.default_rng(0)
    audio = rng.standard_normal((60, 8)).astype(np.float32)
    lag = 3  # lip window i shows what audio window i + 3 says
    lip = np.concatenate([audio[lag:], rng.standard_normal((lag, 8)).astype(np.float32)])
    score = sync_distances(lip, audio, vshift=5)
    assert score.av_offset == -lag
    offsets, dists = score.dists_by_offset()
    assert list(offsets) == list(range(-5, 6)) and dists.argmin() == list(offsets).index(-lag)
    assert score.min_dist == pytest.approx(dists.min()) and score.conf == pytest.approx(np.median(dists) - dists.min())
    assert score.window_conf.shape == score.window_conf_smoothed.shape == (60,)
    assert score.dists.shape == (60, 11)


def test_too_short_inputs_name_the_problem():
    from lipsync_jax.eval.lse_score import LSEInputError, check_lengths

    assert check_lengths(10, 640 * 10) == 5
    with pytest.raises(LSEInputError, match="audio too short"):
        check_lengths(100, 640 * 5)
    with pytest.raises(LSEInputError, match="only 5 face frames"):
        check_lengths(5, 640 * 100)


def test_track_faces_gaps_filters_and_interpolation():
    from lipsync_jax.eval.lse_tracks import DetectSettings, track_faces

    settings = DetectSettings(min_track=5, num_failed_det=3, min_face_size=100)
    face_a = np.array([100, 100, 220, 240, 0.99])
    face_b = np.array([400, 100, 480, 180, 0.95])  # 80 px: too small for min_face_size
    detections = []
    for i in range(20):
        faces = [face_a + [i, 0, i, 0, 0]] if i not in (7, 8) else []  # a 2-frame gap, interpolated
        if i < 12:
            faces.append(face_b)
        if i == 15:
            faces.append(np.array([0, 0, 300, 300, 0.97]))  # a one-off box: too short a track
        detections.append(np.array(faces))
    tracks = track_faces(detections, settings)
    assert len(tracks) == 1
    track = tracks[0]
    assert (track.start, track.end, track.num_detections) == (0, 19, 18)
    np.testing.assert_allclose(track.boxes[7], face_a[:4] + [7, 0, 7, 0])
    # a gap longer than num_failed_det ends the track: the rest is too short to keep
    detections = [np.array([face_a]) if i < 10 or i > 14 else np.zeros((0, 5)) for i in range(20)]
    tracks = track_faces(detections, settings)
    assert [(t.start, t.end) for t in tracks] == [(0, 9)]


def test_shot_cuts_split_tracks():
    from lipsync_jax.eval.lse_tracks import DetectSettings, ShotDetector, track_faces

    rng = np.random.default_rng(2)
    dark = np.full((64, 512, 3), 20, np.uint8)
    bright = rng.integers(0, 255, (64, 512, 3), dtype=np.uint8)
    frames = [dark] * 20 + [bright] * 5 + [dark] * 25  # a cut at 20; the one at 25 is too close to it
    detector = ShotDetector()
    assert sum(1 for _ in detector.watch(iter(frames))) == 50
    assert detector.cuts == [20] and detector.shots() == [(0, 20), (20, 50)]
    assert detector.scores[20] >= 27 and detector.scores[1] == 0
    face = np.array([[100, 100, 250, 250, 0.99]])
    settings = DetectSettings(min_track=8)
    tracks = track_faces([face] * 50, settings, detector.shots())
    assert [(t.start, t.end) for t in tracks] == [(0, 19), (20, 49)]
    assert [(t.start, t.end) for t in track_faces([face] * 50, DetectSettings(min_track=25), detector.shots())] \
        == [(20, 49)]  # the first shot is shorter than min_track


def test_crop_matches_pad_and_slice():
    from lipsync_jax.eval.lse_tracks import DetectSettings, FaceTrackLSE, crop_face, crop_windows

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 255, (120, 160, 3), dtype=np.uint8)
    boxes = np.array([[10.0, 20.0, 70.0, 90.0], [120.0, 60.0, 175.0, 130.0]])  # the second reaches past the edge
    track = FaceTrackLSE(frames=np.arange(2), boxes=boxes, num_detections=2)
    windows = crop_windows(track, DetectSettings(smoothing=1))
    import cv2

    for window in windows:
        y0, y1, x0, x1, pad = (int(v) for v in window)
        padded = np.pad(frame, ((pad, pad), (pad, pad), (0, 0)), constant_values=110)
        want = cv2.resize(padded[y0:y1, x0:x1], (224, 224))[..., ::-1]
        np.testing.assert_array_equal(crop_face(frame, window), want)
        sampled = crop_face(frame, window, max_window_pixels=0).astype(int)  # the path for absurd boxes
        assert np.abs(sampled - want).max() <= 1


def test_nms_keeps_best_and_drops_overlaps():
    from lipsync_jax.models.s3fd import nms_boxes, nms_sorted

    dets = np.array([[0, 0, 10, 10, 0.5], [1, 1, 11, 11, 0.9], [50, 50, 60, 60, 0.7]], np.float64)
    assert list(nms_boxes(dets, 0.1)) == [1, 2]
    assert list(nms_sorted(dets[:, :4], dets[:, 4], 0.3, 5000)) == [1, 2]
    assert list(nms_sorted(dets[:, :4], dets[:, 4], 0.99, 5000)) == [1, 2, 0]


# -- legacy (pre-1.6) torch files, as syncnet_v2.model and sfd_face.pth are ---------------------

def _write_legacy_torch(path, state_dict, monkeypatch):
    """A legacy torch.save file written without torch (fake torch globals for the pickler)."""
    torch_mod, utils_mod = types.ModuleType("torch"), types.ModuleType("torch._utils")
    storage_types = {}
    for name in ("FloatStorage", "LongStorage"):
        storage_types[name] = type(name, (), {"__module__": "torch"})
        setattr(torch_mod, name, storage_types[name])

    def _rebuild_tensor_v2(*args):  # never called: only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    utils_mod._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch_mod._utils = utils_mod
    monkeypatch.setitem(sys.modules, "torch", torch_mod)
    monkeypatch.setitem(sys.modules, "torch._utils", utils_mod)

    class StorageRef:
        def __init__(self, key, array):
            self.key, self.array = key, array

    class Tensor:
        def __init__(self, ref):
            self.ref = ref

        def __reduce__(self):
            shape = self.ref.array.shape
            stride = tuple(s // self.ref.array.itemsize for s in self.ref.array.strides)
            return _rebuild_tensor_v2, (self.ref, 0, shape, stride, False, collections.OrderedDict())

    refs = {}
    obj = collections.OrderedDict()
    for i, (key, value) in enumerate(state_dict.items()):
        array = np.array(value, np.int64 if value.dtype.kind == "i" else np.float32, order="C")
        refs[str(i)] = StorageRef(str(i), array)
        obj[key] = Tensor(refs[str(i)])

    def persistent_id(o):
        if not isinstance(o, StorageRef):
            return None
        storage = storage_types["LongStorage" if o.array.dtype == np.int64 else "FloatStorage"]
        return ("storage", storage, o.key, "cpu", o.array.size, None)

    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}},
                    f, protocol=2)
        pickler = pickle.Pickler(f, protocol=2)
        pickler.persistent_id = persistent_id
        pickler.dump(obj)
        keys = sorted(refs)
        pickle.dump(keys, f, protocol=2)
        for key in keys:
            f.write(np.int64(refs[key].array.size).tobytes())
            f.write(refs[key].array.tobytes())


def test_legacy_checkpoint_converts_via_cli(tmp_path, monkeypatch):
    from lipsync_jax.convert.__main__ import main as convert_main
    from lipsync_jax.convert.s3fd import convert_state_dict
    from lipsync_jax.convert.torch_legacy import is_legacy_checkpoint, read_any_state_dict
    from lipsync_jax.eval.lse import load_s3fd
    from lipsync_jax.tree_utils import flatten_tree

    fixture = load_fixture(os.path.join(GOLDEN, "s3fd_tiny.npz"))
    weights = fixture.weights_f32()
    src = str(tmp_path / "sfd_face.pth")
    with monkeypatch.context() as patch:
        _write_legacy_torch(src, {**weights, "step": np.array(7, np.int64)}, patch)
    assert is_legacy_checkpoint(src)
    read = read_any_state_dict(src)
    step = read.pop("step")
    assert step.shape == () and int(step) == 7
    assert sorted(read) == sorted(weights)
    for key in weights:
        np.testing.assert_array_equal(read[key], weights[key])
    assert convert_main(["s3fd", "--src", src, "--dst", str(tmp_path / "s3fd")]) == 1  # "step" is unexpected
    read_src = str(tmp_path / "clean.pth")
    with monkeypatch.context() as patch:
        _write_legacy_torch(read_src, weights, patch)
    assert convert_main(["s3fd", "--src", read_src, "--dst", str(tmp_path / "s3fd")]) == 0
    want = flatten_tree(convert_state_dict(weights, {"narrow_by": 4})[0])
    for loaded in (load_s3fd(str(tmp_path / "s3fd")), load_s3fd(read_src)):
        got = flatten_tree(loaded.params)
        assert sorted(got) == sorted(want) and loaded.model.config.narrow_by == 4
        for path in want:
            np.testing.assert_array_equal(np.asarray(got[path]), want[path])


def test_syncnet_legacy_file_and_converted_folder_load_alike(tmp_path, monkeypatch):
    from lipsync_jax.convert.__main__ import main as convert_main
    from lipsync_jax.eval.lse import load_lse_syncnet
    from lipsync_jax.tree_utils import flatten_tree

    fixture = load_fixture(os.path.join(GOLDEN, "lse_syncnet_tiny.npz"))
    src = str(tmp_path / "syncnet_v2.model")
    with monkeypatch.context() as patch:  # keeps the int64 num_batches_tracked entries
        _write_legacy_torch(src, fixture.weights_f32(), patch)
    assert convert_main(["lse_syncnet", "--src", src, "--dst", str(tmp_path / "converted")]) == 0
    with open(tmp_path / "converted" / "config.json") as f:
        assert json.load(f) == {"narrow_by": 4, "num_layers_in_fc_layers": 256}
    from_file, from_folder = load_lse_syncnet(src), load_lse_syncnet(str(tmp_path / "converted"))
    assert from_file.model.config == from_folder.model.config and from_file.model.config.embed_dim == 256
    a, b = flatten_tree(from_file.params), flatten_tree(from_folder.params)
    assert sorted(a) == sorted(b)
    for path in a:
        np.testing.assert_array_equal(np.asarray(a[path]), np.asarray(b[path]))
    np.testing.assert_array_equal(np.asarray(a[("netcnnaud", "norm_1", "running_var")]),
                                  fixture.weights["netcnnaud.1.running_var"])


def test_truncated_legacy_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    from lipsync_jax.checkpoints import CheckpointFormatError
    from lipsync_jax.convert.torch_legacy import read_any_state_dict

    path = str(tmp_path / "cut.model")
    with monkeypatch.context() as patch:
        _write_legacy_torch(path, {"w": np.ones((64, 64), np.float32)}, patch)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)
    with pytest.raises(CheckpointFormatError, match="cut.model"):
        read_any_state_dict(path)


# -- end to end (random weights) -----------------------------------------------------------------

def _write_wav(path, seconds):
    samples = (np.sin(np.arange(int(16000 * seconds)) / 5.0) * 8000).astype(np.int16)
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(samples.tobytes())


@pytest.mark.integration
def test_eval_lse_cli_folder_with_bad_inputs(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    os.symlink(os.path.join(ASSETS, "demo1_video.mp4"), videos / "demo1.mp4")  # its own audio track
    os.symlink(os.path.join(ASSETS, "demo2_video.mp4"), videos / "demo2.mp4")
    os.symlink(os.path.join(ASSETS, "demo2_audio.wav"), videos / "demo2.wav")  # scored against this file
    os.symlink(os.path.join(ASSETS, "demo2_video.mp4"), videos / "short.mp4")
    _write_wav(str(videos / "short.wav"), 0.1)  # shorter than 5 frames
    (videos / "broken.mp4").write_bytes(b"not a video")
    out_csv, out_json = tmp_path / "lse.csv", tmp_path / "lse.json"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "eval", "lse.py"), "--video_dir", str(videos), "--random_init",
         "--narrow_by", "4", "--max_frames", "24", "--min_track", "10", "--detect_scale", "0.1",
         "--csv", str(out_csv), "--json", str(out_json), "--no_progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr  # some videos could not be scored
    assert "MEANINGLESS" in proc.stderr and "Traceback" not in proc.stderr
    with open(out_csv, newline="") as f:
        rows = {row["video"].split("/")[-1]: row for row in csv.DictReader(f)}
    assert set(rows) == {"demo1.mp4", "demo2.mp4", "short.mp4", "broken.mp4"}
    for name in ("demo1.mp4", "demo2.mp4"):
        row = rows[name]
        assert row["error"] == "" and row["track"] == "0"
        assert np.isfinite(float(row["lse_c"])) and float(row["lse_d"]) > 0
        assert -15 <= int(row["av_offset"]) <= 15 and int(row["num_windows"]) == 24 - 5
    assert rows["demo2.mp4"]["audio"].endswith("demo2.wav")
    assert "audio too short" in rows["short.mp4"]["error"] and "short.wav" in rows["short.mp4"]["error"]
    assert "broken.mp4" in rows["broken.mp4"]["error"]
    with open(out_json) as f:
        result = json.load(f)
    assert result["random_init"] is True
    scored = [v for v in result["videos"] if "error" not in v]
    assert len(scored) == 2
    track = scored[0]["tracks"][0]
    assert track["offsets"] == list(range(-15, 16)) and len(track["mean_dists"]) == 31
    assert len(track["window_conf"]) == track["num_windows"] == 19
    assert scored[0]["lse_d"] == pytest.approx(min(track["mean_dists"]), rel=1e-5)


def test_video_without_faces_is_a_clear_error():
    from lipsync_jax.eval.lse import LSEEvalError, evaluate_lse, load_lse_syncnet, load_s3fd
    from lipsync_jax.eval.lse_tracks import DetectSettings

    detector = load_s3fd(random_init=True, narrow_by=8)
    for name, head in detector.params.items():
        if name.startswith("conf_"):
            head["bias"][-1] = -8.0  # nothing scores as a face
    syncnet = load_lse_syncnet(random_init=True, narrow_by=8)
    with pytest.raises(LSEEvalError, match="demo1_video.mp4: no face track"):
        evaluate_lse(os.path.join(ASSETS, "demo1_video.mp4"), syncnet=syncnet, detector=detector,
                     settings=DetectSettings(scale=0.05), max_frames=8, progress=False)


@pytest.mark.slow
def test_eval_lse_full_demo_video(tmp_path):
    from lipsync_jax.eval.lse import evaluate_lse, load_lse_syncnet, load_s3fd

    syncnet = load_lse_syncnet(random_init=True, narrow_by=4)
    detector = load_s3fd(random_init=True, narrow_by=4)
    result = evaluate_lse(os.path.join(ASSETS, "demo1_video.mp4"), os.path.join(ASSETS, "demo1_audio.wav"),
                          syncnet=syncnet, detector=detector, progress=False)
    assert result.num_frames == 250 and result.tracks
    assert result.tracks[0].score.num_windows == 240 - 5  # 9.6 s of audio = 240 frames
    assert np.isfinite(result.lse_c) and result.lse_d > 0
