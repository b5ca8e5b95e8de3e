"""Face pipeline: golden parity, MediaPipe anchors on real frames, no-face handling, restore."""

import itertools

import cv2
import numpy as np
import pytest

from lipsync_jax.face import (
    AlignTemplate,
    FaceAligner,
    FaceBackendError,
    FaceInputError,
    FaceTracker,
    InsightFaceLandmarker,
    MediaPipeLandmarker,
    NoFaceError,
    align_video,
    load_fixed_mask,
    make_landmarker,
    paste_back,
    resize_to_crop,
    similarity_transform,
)
from lipsync_jax.golden import check_face
from lipsync_jax.golden.core import load_fixture
from tests.helpers.paths import asset_path, golden_path

# Measured: 0.41, 0.52, 0.39 px on frame0 and 0.18, 0.35, 0.40 px on frame1 (full resolution).
ANCHOR_BOUND_PX = 2.0


def read_frames(path, count, scale=1.0):
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(path, pix_fmt="rgb24")
    meta = next(reader)
    width, height = meta["size"]
    frames = []
    for raw in itertools.islice(reader, count):
        frame = np.frombuffer(raw, np.uint8).reshape(height, width, 3)
        if scale != 1.0:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        frames.append(frame)
    reader.close()
    return frames


@pytest.fixture(scope="module")
def fixture():
    return load_fixture(golden_path("align_restore.npz"))


@pytest.fixture(scope="module")
def landmarker():
    lm = MediaPipeLandmarker()
    yield lm
    lm.close()


def test_golden_align_restore(fixture):
    results = check_face.check_fixture(fixture)
    names = {r.name for r in results}
    assert {"affine_no_smooth", "affine_smooth_frame1", "restored_frame0/mean_abs", "fixed_mask_256"} <= names
    failed = [r.line() for r in results if not r.passed]
    assert not failed, failed


def test_mediapipe_anchors_match_insightface_on_real_frames(fixture, landmarker):
    for name in ("frame0", "frame1"):
        anchors = landmarker(fixture.inputs[name])  # full-resolution 1080x1920 frame
        assert anchors is not None and anchors.shape == (3, 2)
        dist = np.linalg.norm(anchors - fixture.inputs[f"landmarks3_{name}"], axis=1)
        assert dist.max() < ANCHOR_BOUND_PX, (name, dist)


def test_mediapipe_aligned_face_matches_latentsync_crop(fixture, landmarker):
    aligner = FaceAligner(int(fixture.config["resolution"]), smooth=False)
    crop, _ = aligner.crop(fixture.inputs["frame0"], landmarker(fixture.inputs["frame0"]))
    ref, _ = FaceAligner(aligner.template.resolution, smooth=False).crop(fixture.inputs["frame0"],
                                                                           fixture.inputs["landmarks3_frame0"])
    assert crop.shape == ref.shape
    assert np.abs(crop.astype(np.int16) - ref).mean() < 6.0  # a sub-pixel shift on a sharp face


def test_small_face_in_landscape_frame_uses_detector_crop(fixture, landmarker):
    scale = 0.5
    small = cv2.resize(fixture.inputs["frame0"], None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    canvas = np.full((1080, 1920, 3), 90, np.uint8)
    rows = min(small.shape[0], 1030)
    canvas[50:50 + rows, 1000:1000 + small.shape[1]] = small[:rows]
    anchors = landmarker(canvas)
    assert anchors is not None
    in_original = (anchors - [1000, 50]) / scale
    assert np.linalg.norm(in_original - fixture.inputs["landmarks3_frame0"], axis=1).max() < 15.0


def test_no_face_gives_none(landmarker):
    assert landmarker(np.zeros((480, 640, 3), np.uint8)) is None
    noise = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert landmarker(noise) is None


def test_bad_frame_is_a_clear_error(landmarker):
    with pytest.raises(FaceInputError, match="uint8"):
        landmarker(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(FaceInputError, match=r"\(h, w, 3\)"):
        landmarker(np.zeros((64, 64), np.uint8))


def test_video_with_hidden_face_keeps_going(landmarker):
    frames = read_frames(asset_path("demo1_video.mp4"), 6, scale=0.5)  # 540x960
    hidden = {2, 3}
    for i in hidden:
        frames[i] = np.full_like(frames[i], 40)
    tracker = FaceTracker(resolution=256, landmarker=landmarker, source="demo1")
    results = [tracker(f) for f in frames]
    assert [r is None for r in results] == [i in hidden for i in range(6)]
    assert tracker.missing_frames == sorted(hidden) and tracker.faces_found == 4
    for r in results:
        if r is not None:
            assert r.face.shape == (256, 256, 3) and r.face.dtype == np.uint8
            assert r.affine.shape == (2, 3) and np.all(np.isfinite(r.affine))
            assert r.box == (0, 0, 210, 280)
    # The head moves ~3 px per frame here (540x960): anchors 3 frames apart stay close.
    assert np.abs(results[1].landmarks - results[4].landmarks).max() < 25.0
    tracker.check_found()


def test_video_without_any_face_raises(landmarker):
    frames = [np.full((240, 320, 3), v, np.uint8) for v in (0, 128, 255)]
    stream = align_video(frames, landmarker=landmarker, source="blank.mp4")
    assert [next(stream) for _ in range(3)] == [None, None, None]
    with pytest.raises(NoFaceError, match="blank.mp4.*3 frames"):
        next(stream)
    with pytest.raises(NoFaceError, match="no frames"):
        list(align_video([], landmarker=landmarker, source="empty.mp4"))


def test_paste_back_of_unchanged_face_round_trips(landmarker):
    frame = read_frames(asset_path("demo1_video.mp4"), 1, scale=0.5)[0]
    aligned = FaceTracker(256, landmarker=landmarker)(frame)
    restored = paste_back(frame, aligned.face, aligned)
    diff = np.abs(restored.astype(np.int16) - frame)
    assert diff[:100].max() == 0 and diff[-100:].max() == 0  # far from the face: untouched
    assert diff.mean() < 1.0  # face region: only resampling blur
    changed = paste_back(frame, np.zeros_like(aligned.face), aligned)
    assert np.abs(changed.astype(np.int16) - frame).max() > 50  # a different face does show


def test_similarity_transform_recovers_known_transform():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 500, (3, 2))
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -40.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix, _ = similarity_transform(points, points @ rot.T + shift)
    np.testing.assert_allclose(matrix, np.concatenate([rot, shift[:, None]], 1), atol=1e-9)
    with pytest.raises(FaceInputError, match="degenerate"):
        similarity_transform(np.ones((3, 2)), points)


def test_template_and_mask_at_512():
    template = AlignTemplate.for_resolution(512)
    assert template.face_size == (420, 560)
    mask = load_fixed_mask(512)
    assert mask.shape == (512, 512, 3) and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0 and not mask.flags.writeable
    assert mask[:100].min() == 1.0  # upper face kept
    assert mask[280:360, 180:330].max() == 0.0  # mouth region masked


def test_resize_to_crop_is_identity_at_same_size_and_keeps_constants():
    face = np.random.default_rng(2).uniform(-1, 1, (32, 24, 3)).astype(np.float32)
    np.testing.assert_allclose(resize_to_crop(face, (24, 32)), face, atol=1e-6)
    flat = np.full((256, 256, 3), 0.25, np.float32)
    np.testing.assert_allclose(resize_to_crop(flat, (210, 280)), 0.25, atol=1e-6)


def test_insightface_backend_missing_gives_install_hint(tmp_path):
    with pytest.raises(FaceBackendError, match=r"2d106det\.onnx.*pip install insightface"):
        InsightFaceLandmarker(root=str(tmp_path))
    with pytest.raises(FaceBackendError, match="unknown face backend"):
        make_landmarker("dlib")


def test_tracker_keeps_smoothing_over_short_gaps_and_resets_after_long_ones(fixture):
    first = fixture.inputs["landmarks3_frame0"] + [[0, 0], [0, 0], [15, 0]]  # another nose offset
    later = fixture.inputs["landmarks3_frame1"]
    script = iter([first, None, later, None, None, None, later])
    tracker = FaceTracker(256, landmarker=lambda frame: next(script), max_gap=2)
    results = [tracker(fixture.inputs["frame0"]) for _ in range(7)]
    assert [r is None for r in results] == [False, True, False, True, True, True, False]
    fresh = FaceAligner(256).affine(later)  # ``later`` smoothed as a first frame
    consecutive = FaceAligner(256)
    consecutive.affine(first)
    # frame 2 follows a 1-frame gap: smoothed with frame 0's state, as consecutive frames are
    np.testing.assert_allclose(results[2].affine, consecutive.affine(later), atol=1e-5)
    assert np.abs(results[2].affine - fresh).max() > 0.01
    # frame 6 follows a 3-frame gap (> max_gap): state reset, so it is smoothed like a first frame
    np.testing.assert_allclose(results[6].affine, fresh, atol=1e-5)
