"""Face tracks for multi-person videos: association rules on synthetic boxes, the detection
pre-pass and track choice on a two-person clip built from the demos, single-face parity."""

import cv2
import numpy as np
import pytest

from lipsync_jax.face import (
    FaceAligner,
    FaceDetection,
    FaceSelectionError,
    FaceTracker,
    InsightFaceLandmarker,
    MediaPipeLandmarker,
    MultiTrackAligner,
    NoFaceError,
    TrackAnchorSelector,
    TrackFacePass,
    TrackLandmarker,
    build_tracks,
    choose_track,
    detect_faces,
    face_pass_for_tracks,
    find_face_tracks,
    select_track_anchors,
)
from lipsync_jax.face.landmarks import box_from_anchors
from lipsync_jax.face.list_faces import list_faces
from lipsync_jax.face.list_faces import main as list_faces_main
from lipsync_jax.face.tracks import TrackBuilder, iou
from lipsync_jax.golden.core import load_fixture
from lipsync_jax.media import read_frames
from tests.helpers.paths import TWO_PEOPLE_HALF_WIDTH, TWO_PEOPLE_HEIGHT, TWO_PEOPLE_SECONDS, golden_path

CLIP_SECONDS = TWO_PEOPLE_SECONDS  # the session fixture demo_clips (conftest.py)
HALF_WIDTH, HEIGHT = TWO_PEOPLE_HALF_WIDTH, TWO_PEOPLE_HEIGHT


def face(cx, cy, size=80.0, score=1.0):
    """A synthetic detection: square box of ``size`` at (cx, cy) and anchors inside it."""
    box = np.array([cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2])
    anchors = np.array([[cx - size / 4, cy - size / 4], [cx + size / 4, cy - size / 4], [cx, cy]])
    return FaceDetection(anchors, box, score)


def centres_x(track):
    return (track.boxes[:, 0] + track.boxes[:, 2]) / 2


# ---------------------------------------------------------------- association (synthetic)

def test_missed_frames_keep_the_track_and_gaps_interpolate():
    frames = [[face(100 + 2 * t, 200)] if t not in (5, 6, 7) else [] for t in range(20)]
    tracks = build_tracks(frames, max_gap=3)
    assert len(tracks) == 1
    track = tracks[0]
    assert track.num_frames == 17 and (track.first_frame, track.last_frame) == (0, 19)
    assert track.anchors_at(6) is None and track.anchors_at(8) is not None
    np.testing.assert_allclose(track.box_at(6), face(112, 200).box)  # linear between frames 4 and 8
    assert track.box_at(20) is None


def test_face_leaving_longer_than_max_gap_starts_a_new_track():
    def clip(missing):
        return [[face(300, 200)] if not 10 <= t < 10 + missing else [] for t in range(30)]

    assert len(build_tracks(clip(4), max_gap=4)) == 1  # missing exactly max_gap frames: same track
    tracks = build_tracks(clip(5), max_gap=4)  # one more: the old track ended, a new one starts
    assert [(t.track_id, t.first_frame, t.last_frame) for t in tracks] == [(0, 0, 9), (1, 15, 29)]


def test_retry_fills_missed_frames_but_never_takes_another_face():
    builder = TrackBuilder(max_gap=2)
    asked = []

    def retry(box):
        asked.append(box)
        return face(*((box[:2] + box[2:]) / 2), 80) if len(asked) <= 5 else face(400, 200, 80)

    for t in range(12):
        dets = [face(100 + 3 * t, 200)] if t < 3 else []
        dets.append(face(400, 200))  # a second person, always detected
        builder.update(t, dets, retry=retry)
    left, right = builder.finish()
    assert right.num_frames == 12
    # frames 3-7 recovered around the predicted (moving) box; then the retry only finds the other
    # face, which is refused, so the track ends after max_gap missed frames
    assert left.frames.tolist() == list(range(8))
    np.testing.assert_allclose(centres_x(left), 100 + 3 * np.arange(8))
    assert len(asked) == 5 + 3  # retried every missed frame until the gap rule closed the track


def test_new_track_extends_back_while_the_face_is_found_earlier():
    builder = TrackBuilder(max_gap=3)
    findable = {4: face(204, 100), 5: face(205, 100), 2: face(202, 100)}  # frame 3: not found

    def retry_before(index, box):
        asked.append(index)
        return findable.get(index)

    asked = []
    for t in range(8):
        dets = [face(50, 300, 90)]  # someone else all along
        if t >= 6:
            dets.append(face(200 + t, 100))
        builder.update(t, dets, retry_before=retry_before)
    other, late = builder.finish()
    assert late.frames.tolist() == [4, 5, 6, 7] and asked == [5, 4, 3]  # stops at the first miss
    builder = TrackBuilder(max_gap=5, min_frames=1)
    for t in range(3):  # back-filling never takes a face another track has at that frame
        builder.update(t, [face(100, 100)] if t < 2 else [face(100, 100), face(160, 100)],
                       retry_before=lambda index, box: face(100, 100))
    assert [t.frames.tolist() for t in builder.finish()] == [[0, 1, 2], [2]]


def test_two_static_faces_keep_identity_whatever_the_detection_order():
    rng = np.random.default_rng(0)
    frames = []
    for t in range(40):
        dets = [face(100 + rng.normal(0, 2), 200, 90), face(400 + rng.normal(0, 2), 210, 70)]
        if t % 7 == 3:
            dets = dets[:1]  # the right face missed now and then
        frames.append(list(rng.permutation(dets)))
    left, right = build_tracks(frames)
    assert left.num_frames == 40 and right.num_frames == 34
    assert centres_x(left).max() < 150 and centres_x(right).min() > 350


def test_crossing_faces_do_not_swap_identity():
    frames = []
    for t in range(41):
        a, b = face(100 + 10 * t, 200, 80), face(500 - 10 * t, 205, 110)  # b passes in front of a
        occluded = abs(a.box[0] - b.box[0]) < 40
        frames.append([b] if occluded else [a, b])
    tracks = build_tracks(frames, max_gap=6)
    assert len(tracks) == 2
    for track in tracks:
        steps = np.diff(centres_x(track))
        assert np.all(steps > 0) or np.all(steps < 0), steps  # each track moves one way only
    mover_right = next(t for t in tracks if centres_x(t)[-1] > centres_x(t)[0])
    assert mover_right.first_frame == 0 and mover_right.last_frame == 40
    assert np.allclose(mover_right.boxes[:, 2] - mover_right.boxes[:, 0], 80)  # never took b's box


def test_spurious_short_tracks_are_dropped_and_ids_are_dense():
    frames = [[face(100, 100)] + ([face(400, 300, 60)] if t == 5 else []) for t in range(10)]
    frames[8].append(face(250, 100, 70))
    frames[9].append(face(250, 100, 70))
    tracks = build_tracks(frames, min_frames=3)
    assert [t.track_id for t in tracks] == [0] and tracks[0].num_frames == 10
    assert len(build_tracks(frames, min_frames=1)) == 3
    only_blip = build_tracks([[face(50, 50)]] + [[] for _ in range(5)], min_frames=3)
    assert len(only_blip) == 1  # never drop every track


def test_frames_must_come_in_order():
    builder = TrackBuilder()
    builder.update(3, [face(10, 10)])
    with pytest.raises(ValueError, match="increasing"):
        builder.update(3, [])


def test_choose_track_by_word_or_id():
    frames = [[face(100, 200, 60), face(300, 200, 100), face(500, 200, 80)] for _ in range(5)]
    tracks = build_tracks(frames)
    assert [round(t.mean_centre_x) for t in tracks] == [100, 300, 500]
    assert choose_track(tracks).track_id == 1 == choose_track(tracks, "largest").track_id
    assert choose_track(tracks, "left").track_id == 0 and choose_track(tracks, "RIGHT").track_id == 2
    assert choose_track(tracks, 2).track_id == 2 and choose_track(tracks, "0").track_id == 0
    with pytest.raises(FaceSelectionError, match="no face track with id 7.*0, 1, 2"):
        choose_track(tracks, "7")
    with pytest.raises(FaceSelectionError, match="unknown face choice 'middle'"):
        choose_track(tracks, "middle")
    with pytest.raises(FaceSelectionError, match="no face tracks"):
        choose_track([], "largest")


def test_selector_matches_detections_to_tracks_per_frame():
    frames = [[face(100 + t, 200), face(400 - t, 200)] for t in range(10)]
    frames[4] = frames[4][1:]  # left face missed: a 1-frame gap in track 0
    tracks = build_tracks(frames)
    full = [list(reversed([face(100 + t + 1, 201), face(400 - t - 1, 199)])) for t in range(12)]
    full[6] = []
    selector = TrackAnchorSelector(tracks)
    got = selector.anchors(2, full[2])
    np.testing.assert_allclose(got[0], full[2][1].anchors)  # left track gets the left face
    np.testing.assert_allclose(got[1], full[2][0].anchors)
    assert selector.anchors(4, full[4])[0] is not None  # gap frame: interpolated box still matches
    assert selector.anchors(6, full[6]) == {0: None, 1: None}
    assert selector.anchors(11, full[11]) == {0: None, 1: None}  # after the tracks end
    assert selector.anchors(3, [face(250, 200)]) == {0: None, 1: None}  # nobody where the tracks are
    right = select_track_anchors(tracks, "right", full)
    assert len(right) == 12 and right[6] is None and right[10] is None
    assert all(a[2, 0] > 250 for a in right[:10] if a is not None)


def test_single_track_passes_every_frame_largest_face_through():
    tracks = build_tracks([[face(100, 100)] for _ in range(5)])
    later = [[face(600, 400, 90), face(50, 50, 40)]]  # moved far away: still the only person
    assert np.allclose(select_track_anchors(tracks, "largest", [[]] * 5 + later)[5], later[0][0].anchors)


def test_track_landmarker_drives_the_existing_face_tracker():
    frame = np.zeros((64, 64, 3), np.uint8)
    frames = [[face(20, 20, 30), face(45, 25, 24)] for _ in range(6)]
    tracks = build_tracks(frames)

    class Replay:
        calls = 0

        def detect(self, image):
            Replay.calls += 1
            return frames[Replay.calls - 1]

    landmarker = TrackLandmarker(Replay(), tracks, "right")
    results = [FaceTracker(256, landmarker=landmarker, smooth=False)(frame) for _ in range(2)]
    np.testing.assert_allclose(results[1].landmarks, frames[1][1].anchors)
    assert len(landmarker.last_detections) == 2 and landmarker.frame_index == 2


def test_detect_faces_wraps_single_face_callables():
    anchors = np.array([[40.0, 50.0], [80.0, 50.0], [60.0, 70.0]])
    [det] = detect_faces(lambda frame: anchors, None)
    box = box_from_anchors(anchors)
    assert np.array_equal(det.anchors, anchors) and np.array_equal(det.box, box)
    assert box[0] < 40 and box[2] > 80 and box[1] < 50 and box[3] > 70
    assert detect_faces(lambda frame: None, None) == []
    assert iou(box, box) == pytest.approx(1.0) and iou(box, box + [100, 0, 100, 0]) == 0.0


def test_insightface_detect_keeps_latentsync_filter_and_order():
    class Face:
        def __init__(self, bbox, score, shift):
            self.bbox, self.det_score = np.array(bbox, np.float32), score
            self.landmark_2d_106 = np.arange(212, dtype=np.float64).reshape(106, 2) / 3 + shift

    faces = [Face([0, 0, 60, 90], 0.9, 0), Face([100, 0, 300, 250], 0.8, 1000),  # kept, kept (largest)
             Face([0, 0, 40, 90], 0.9, 0), Face([0, 0, 200, 100], 0.9, 0),  # too narrow, too wide
             Face([0, 0, 100, 150], 0.3, 0)]  # low score

    class App:
        def get(self, frame):
            return faces

    landmarker = InsightFaceLandmarker.__new__(InsightFaceLandmarker)
    landmarker._app, landmarker.min_score, landmarker.max_num_faces, landmarker.size_scale = App(), 0.5, 4, 1.0
    frame = np.zeros((300, 400, 3), np.uint8)
    found = landmarker.detect(frame)
    assert [d.box.tolist() for d in found] == [[100, 0, 300, 250], [0, 0, 60, 90]]
    assert np.array_equal(found[0].anchors, landmarker(frame)) and found[0].score == pytest.approx(0.8)
    assert np.all(found[0].anchors == np.round(found[0].anchors))
    landmarker.size_scale = 1.5  # pre-pass on frames at 2/3 size: limits stay in source pixels
    assert [d.box.tolist() for d in landmarker.detect(frame)] == [[100, 0, 300, 250], [0, 0, 60, 90],
                                                                  [0, 0, 40, 90]]
    landmarker.size_scale, landmarker.max_num_faces = 1.0, 1
    assert len(landmarker.detect(frame)) == 1


# ---------------------------------------------------------------- real clips from the demos

@pytest.fixture(scope="module")
def multi_landmarker():
    landmarker = MediaPipeLandmarker(max_num_faces=4)
    yield landmarker
    landmarker.close()


@pytest.fixture(scope="module")
def two_people(demo_clips, multi_landmarker):
    """The pre-pass with thumbnails, and every frame's detections (the clip is under 640 px, so the
    pre-pass sees the frames at full size and both must agree)."""
    listing = list_faces(demo_clips["two"], str(demo_clips["folder"] / "thumbs"), landmarker=multi_landmarker,
                         progress=False)
    frames = list(read_frames(demo_clips["two"], 25.0))
    return listing, [multi_landmarker.detect(f) for f in frames], frames


@pytest.mark.integration
def test_two_people_give_two_stable_tracks(two_people, multi_landmarker):
    listing, detections, frames = two_people
    faces = listing.faces
    assert faces.num_frames == 25 * CLIP_SECONDS and faces.detection_scale == 1.0
    assert len(faces.tracks) == 2
    left, right = sorted(faces.tracks, key=lambda t: t.mean_centre_x)
    assert centres_x(left).max() < HALF_WIDTH < centres_x(right).min()  # never swap sides
    for track in (left, right):
        assert track.num_frames >= 0.9 * faces.num_frames
        assert track.last_frame == faces.num_frames - 1
    plain = build_tracks(detections)  # without the crop retry: same two tracks, with gaps
    assert len(plain) == 2 and sum(t.num_frames for t in plain) < sum(t.num_frames for t in faces.tracks)
    builder = TrackBuilder()  # the pre-pass is association of these detections plus the retry
    for index, (frame, found) in enumerate(zip(frames, detections)):
        builder.update(index, found, retry=lambda box, frame=frame: multi_landmarker.detect_in_box(frame, box),
                       retry_before=lambda i, box, index=index: multi_landmarker.detect_in_box(frames[i], box)
                       if i > index - builder.max_gap - 1 else None)
    rebuilt = builder.finish()
    assert [t.frames.tolist() for t in rebuilt] == [t.frames.tolist() for t in faces.tracks]
    for a, b in zip(rebuilt, faces.tracks):
        np.testing.assert_array_equal(a.anchors, b.anchors)


def test_two_people_choice_is_consistent(two_people, multi_landmarker):
    listing, detections, frames = two_people
    tracks = listing.faces.tracks
    left, right = sorted(tracks, key=lambda t: t.mean_centre_x)
    assert choose_track(tracks, "left") is left and choose_track(tracks, "right") is right
    largest = max(tracks, key=lambda t: t.mean_area)
    assert listing.faces.choose() is largest and choose_track(tracks, largest.track_id) is largest
    for choice, side in (("left", -1), ("right", 1), ("largest", 1 if largest is right else -1)):
        chosen = choose_track(tracks, choice)
        anchors = select_track_anchors(tracks, choice, detections)  # whole-frame detections only
        present = [i for i, a in enumerate(anchors) if a is not None]
        assert 0.7 * chosen.num_frames <= len(present) and set(present) <= set(chosen.frames.tolist())
        # the engine's form: per frame, with the crop retry for a track no detection matched
        selector = TrackAnchorSelector(tracks)
        retried = [selector.anchors(i, d, f, multi_landmarker)[chosen.track_id]
                   for i, (d, f) in enumerate(zip(detections, frames))]
        assert all(np.array_equal(a, b) for a, b in zip(retried, select_track_anchors(
            tracks, choice, detections, frames, multi_landmarker)) if a is not None)
        assert [i for i, a in enumerate(retried) if a is not None] == chosen.frames.tolist()
        assert all(np.array_equal(retried[i], anchors[i]) for i in present)
        xs = np.array([a[:, 0].mean() for a in retried if a is not None])
        assert np.all(np.sign(xs - HALF_WIDTH) == side), (choice, xs)


def test_all_faces_aligned_in_one_pass_each_with_its_own_smoothing(two_people, multi_landmarker):
    listing, detections, frames = two_people
    tracks = listing.faces.tracks
    frames, detections = frames[:20], detections[:20]

    class Replay:  # the detections already made; the crop retry runs for real
        calls = 0

        def detect(self, image):
            Replay.calls += 1
            return detections[Replay.calls - 1]

        def detect_in_box(self, image, box):
            return multi_landmarker.detect_in_box(image, box)

    aligner = MultiTrackAligner(256, tracks, Replay(), ["right", "left"])
    left, right = choose_track(tracks, "left").track_id, choose_track(tracks, "right").track_id
    assert aligner.track_ids == [right, left]
    results = [aligner(f) for f in frames]
    aligner.check_found()
    for tid in (left, right):
        alone = FaceAligner(256)  # this person's faces alone, smoothed as a one-person video
        track = tracks[tid]
        for i, result in enumerate(results):
            aligned = result[tid]
            assert (aligned is None) == (not track.covers(i) or track.anchors_at(i) is None)
            if aligned is not None:  # back-filled frames: FaceMesh on a slightly different crop
                np.testing.assert_allclose(aligned.landmarks, track.anchors_at(i), atol=1.0)
                np.testing.assert_array_equal(aligned.affine, alone.affine(aligned.landmarks))
                assert aligned.face.shape == (256, 256, 3)
    lonely = MultiTrackAligner(256, tracks, lambda image: None, [left])
    lonely(np.zeros_like(frames[0]))  # nobody found
    with pytest.raises(NoFaceError, match=f"face {left}"):
        lonely.check_found()


def test_engine_face_pass_follows_the_chosen_person(two_people, multi_landmarker):
    listing, detections, frames = two_people
    tracks = listing.faces.tracks
    face_pass = face_pass_for_tracks(256, "mediapipe", "two.mp4", tracks, "left", landmarker=multi_landmarker)
    assert isinstance(face_pass, TrackFacePass) and face_pass.resolution == 256
    left = choose_track(tracks, "left")
    for i, frame in enumerate(frames[:12]):
        aligned = face_pass(frame)
        assert (aligned is None) == (left.anchors_at(i) is None)
        if aligned is not None:
            assert aligned.landmarks[:, 0].max() < HALF_WIDTH
    face_pass.check_found()
    face_pass.close()  # a given landmarker stays open for its owner
    assert multi_landmarker.detect(frames[20])
    with pytest.raises(FaceSelectionError, match="no face track with id 5"):
        face_pass_for_tracks(256, "mediapipe", "two.mp4", tracks, "5", landmarker=multi_landmarker)
    single = build_tracks([detections[10][:1]] * 3)
    today = face_pass_for_tracks(256, "mediapipe", "one.mp4", single, "largest", landmarker=multi_landmarker)
    assert type(today) is FaceTracker and today.landmarker is multi_landmarker


def test_list_faces_thumbnails_and_cli(two_people, demo_clips, tmp_path, capsys):
    listing = two_people[0]
    assert sorted(listing.thumbnails) == [0, 1]
    for track_id, path in listing.thumbnails.items():
        image = cv2.imread(path)
        track = listing.faces.tracks[track_id]
        assert image is not None and image.shape[0] > track.mean_box[3] - track.mean_box[1]
    lines = listing.lines()
    assert len(lines) == 3 and lines[1].startswith("face 0: frames") and "thumbnail" in lines[2]
    assert "[default: largest]" in lines[1 + listing.faces.choose().track_id]
    assert list_faces_main(["--video", demo_clips["two"], "--thumbs", str(tmp_path / "t"), "--max_frames", "12",
                            "--max_side", "320", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\nface ") == 2 and "(480x426)" in out
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["face_0.jpg", "face_1.jpg"]
    assert list_faces_main(["--video", str(tmp_path / "missing.mp4"), "--quiet"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'missing.mp4'}: media file not found"


def test_downscaled_pre_pass_reports_source_pixels(two_people, demo_clips, multi_landmarker):
    listing = two_people[0]
    small = find_face_tracks(demo_clips["two"], max_frames=8, max_side=320, landmarker=multi_landmarker,
                             progress=False)
    assert small.detection_scale == pytest.approx(1.5) and (small.width, small.height) == (480, 426)
    assert next(read_frames(demo_clips["two"], 25.0, max_side=320)).shape == (284, 320, 3)
    right_full = choose_track(listing.faces.tracks, "right")
    right_small = choose_track(small.tracks, "right")
    for frame in right_small.frames[:5]:
        assert iou(right_small.box_at(frame), right_full.box_at(frame)) > 0.8


@pytest.mark.integration
def test_single_face_clip_keeps_todays_anchors(demo_clips, multi_landmarker):
    faces = find_face_tracks(demo_clips["one"], landmarker=multi_landmarker, progress=False)
    assert len(faces.tracks) == 1
    [track] = faces.tracks
    today = MediaPipeLandmarker()  # the single-face landmarker the pipeline uses
    try:
        frames = list(read_frames(demo_clips["one"], 25.0))
        expected = [today(f) for f in frames]
    finally:
        today.close()
    found = [i for i, a in enumerate(expected) if a is not None]
    assert len(found) >= 45 and set(found) <= set(track.frames.tolist())  # the crop retry may add frames
    for i in found:
        np.testing.assert_array_equal(track.anchors_at(i), expected[i])
    detections = [multi_landmarker.detect(f) for f in frames]
    selected = select_track_anchors(faces.tracks, "largest", detections)
    for got, want in zip(selected, expected):
        assert (got is None) == (want is None)
        if want is not None:
            np.testing.assert_array_equal(got, want)


def test_full_resolution_single_face_path_is_unchanged(multi_landmarker):
    """On the golden full-resolution demo frames, multi-face detection finds the single-face anchors, and
    the engine's single-track path (TrackLandmarker in FaceTracker) aligns exactly as today."""
    fixture = load_fixture(golden_path("align_restore.npz"))
    frames = [fixture.inputs["frame0"], fixture.inputs["frame1"]]
    today = MediaPipeLandmarker()
    try:
        detections = [multi_landmarker.detect(f) for f in frames]
        assert [len(d) for d in detections] == [1, 1]
        for frame, found in zip(frames, detections):
            np.testing.assert_array_equal(found[0].anchors, today(frame))
        tracks = build_tracks(detections)
        followed = FaceTracker(256, landmarker=TrackLandmarker(multi_landmarker, tracks))
        reference = FaceTracker(256, landmarker=today)
        for frame in frames:
            got, want = followed(frame), reference(frame)
            np.testing.assert_array_equal(got.affine, want.affine)
            np.testing.assert_array_equal(got.face, want.face)
    finally:
        today.close()


def test_other_detectors_tracks_match_our_track_ids():
    """LSE's S3FD tracks (larger boxes, their own numbering) name the face track they follow."""
    from lipsync_jax.eval.lse import TrackResult, _face_track_of
    from lipsync_jax.eval.lse_tracks import FaceTrackLSE
    from lipsync_jax.face.tracks import match_face_track

    frames = [[face(100, 200), face(400 + t, 210)] if t != 4 else [face(100, 200)] for t in range(30)]
    tracks = build_tracks(frames)
    left, right = (choose_track(tracks, side) for side in ("left", "right"))
    ids = np.arange(5, 25)

    def bigger(track, factor=1.4):  # S3FD's box: the whole head, wider than the landmark box
        boxes = np.stack([track.box_at(int(i)) for i in ids])
        centre, half = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]) / 2 * factor
        return np.concatenate([centre - half, centre + half], axis=1)

    assert match_face_track(tracks, ids, bigger(right)) == right.track_id
    assert match_face_track(tracks, ids, bigger(left)) == left.track_id
    assert match_face_track(tracks, ids, bigger(right) + 250) is None  # nobody there
    assert match_face_track(tracks, ids + 40, bigger(right)) is None  # no shared frames
    lse_track = FaceTrackLSE(frames=ids, boxes=bigger(right), num_detections=len(ids))
    assert _face_track_of(lse_track, tracks) == right.track_id and _face_track_of(lse_track, None) is None
    assert TrackResult.__dataclass_fields__["face_track"].default is None
