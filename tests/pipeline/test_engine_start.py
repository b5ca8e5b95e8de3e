
"""The start of an engine job (pipeline/audio_plan.py, pipeline/face_choice.py), without a device program:

- the output frame count predicted from the audio's length alone (so Whisper runs in a thread
  beside the face pre-pass) equals the one Whisper's rows give, for short, 30 s-boundary and
  multi-window clips at 25 and 29.97 fps;
- a landmarker lent by the ``LandmarkerPool`` after it served another video gives exactly the
  faces of a fresh one (MediaPipe in static-image mode keeps no state between frames), and the
  pool builds each kind of backend once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax.media import read_frames
from tests.helpers.paths import asset_path

SR = 16000


@pytest.mark.integration
def test_predicted_frame_count_equals_whispers():
    from types import SimpleNamespace

    from lipsync_jax.audio.features import AudioFeatureExtractor
    from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
    from lipsync_jax.pipeline.audio_plan import audio_plan, predicted_frames

    tiny = WhisperEncoderConfig(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=1)
    params = jax.jit(WhisperEncoder(tiny).init)(jax.random.key(0), jnp.zeros((1, tiny.n_frames, tiny.n_mels)))
    models = SimpleNamespace(audio=AudioFeatureExtractor(params["params"], tiny), audio_feat_length=(2, 2))
    rng = np.random.default_rng(0)
    for n in (700, 1600, 3 * SR + 77, 30 * SR - 1, 30 * SR, 30 * SR + 321, 61 * SR + 5):
        samples = (0.1 * rng.standard_normal(n)).astype(np.float32)
        for fps in (25.0, 29.97):
            assert predicted_frames(models, samples, fps) == audio_plan(models, samples, fps).num_frames, (n, fps)
    assert predicted_frames(SimpleNamespace(audio=object(), audio_feat_length=(2, 2)), samples, 25.0) is None


def test_pooled_landmarker_gives_a_fresh_ones_faces():
    from lipsync_jax.face import FaceTracker
    from lipsync_jax.pipeline.face_choice import LandmarkerPool

    frames = list(read_frames(asset_path("demo1_video.mp4"), 25.0, max_frames=4))
    other = list(read_frames(asset_path("demo2_video.mp4"), 25.0, max_frames=3, max_side=640))
    fresh_tracker = FaceTracker(64)
    fresh = [fresh_tracker(f) for f in frames]
    fresh_tracker.close()

    pool = LandmarkerPool()
    used = pool.borrow("mediapipe", 1)
    assert all(used(f) is not None for f in other)  # it has seen another video, other sizes
    pool.give_back("mediapipe", 1, used)
    lent = pool.borrow("mediapipe", 1)
    assert lent is used and pool.built == 1
    tracker = FaceTracker(64, landmarker=lent)
    pooled = [tracker(f) for f in frames]
    tracker.close()  # not its landmarker: still usable
    assert lent(frames[0]) is not None
    pool.give_back("mediapipe", 1, lent)
    for a, b in zip(fresh, pooled):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.affine, b.affine)
        np.testing.assert_array_equal(a.face, b.face)
    pool.close()


def test_pool_keeps_at_most_keep_idle():
    from lipsync_jax.pipeline.face_choice import LandmarkerPool

    closed = []

    class Fake:
        def close(self):
            closed.append(self)

    pool = LandmarkerPool(keep=1)
    a, b = Fake(), Fake()
    pool.give_back("x", 1, a)
    pool.give_back("x", 1, b)  # over the limit: closed
    assert closed == [b] and pool.borrow("x", 1) is a
    pool.give_back("x", 4, a)
    pool.close()
    assert closed == [b, a]


def test_warp_face_into_a_scratch_region_is_bit_identical():
    """Converting only the sampled region (scratch buffer full of NaN elsewhere) gives the very
    bytes of converting the whole frame, for crops inside, across and outside the frame edges."""
    from lipsync_jax.face.align import warp_face

    rng = np.random.default_rng(0)
    for shape in ((1920, 1080, 3), (97, 131, 3)):
        frame = rng.integers(0, 256, shape, dtype=np.uint8)
        scratch = np.full(shape, np.nan, np.float32)
        for trial in range(150):
            size = [(52, 70), (210, 280), (420, 560)][trial % 3]
            angle, scale = rng.uniform(-np.pi, np.pi), np.exp(rng.uniform(-3.0, 1.0))
            rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            centre = rng.uniform(-0.3, 1.3, 2) * shape[1::-1]  # where the crop's middle lands in the frame
            shift = np.array(size, np.float64) / 2 - rotation @ centre
            affine = np.concatenate([rotation, shift[:, None]], axis=1).astype(np.float32)
            np.testing.assert_array_equal(warp_face(frame, affine, size, scratch), warp_face(frame, affine, size),
                                          err_msg=f"{shape} trial {trial}")
