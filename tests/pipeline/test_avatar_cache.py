"""The avatar cache (pipeline/avatar_cache.py, pipeline/moments.py): entries keyed by video
content and settings, validated on load (version, video hash, settings, checksum), stale or
corrupt ones deleted and rebuilt, atomic writes; face passes that replay or record a track; and
end to end on the tiny model: a second job on the same video replays the face track without
landmarks and samples from the cached VAE moments without encoding, with the same result."""

from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from lipsync_jax.face import AlignedFace
from lipsync_jax.media import ffmpeg_exe
from lipsync_jax.pipeline import avatar_cache as ac
from lipsync_jax.pipeline.avatar_cache import (
    AvatarCache,
    AvatarCacheMiss,
    AvatarTrack,
    CachedFacePass,
    RecordingFacePass,
)
from tests.helpers.paths import TINY_CONFIG, asset_path


def fake_aligned(n, has_face, res=8, seed=0):
    rng = np.random.default_rng(seed)
    return [AlignedFace(face=rng.integers(0, 256, (res, res, 3), dtype=np.uint8),
                        affine=rng.normal(size=(2, 3)).astype(np.float32), box=(0, 0, 21, 28),
                        landmarks=rng.normal(size=(3, 2))) if has_face[i] else None for i in range(n)]


def same_aligned(a, b):
    if a is None or b is None:
        return a is None and b is None
    return (np.array_equal(a.face, b.face) and np.array_equal(a.affine, b.affine) and tuple(a.box) == tuple(b.box)
            and np.array_equal(a.landmarks, b.landmarks))


@pytest.fixture
def video(tmp_path):
    path = tmp_path / "avatar.mp4"
    path.write_bytes(b"pretend video bytes" * 100)  # the cache only hashes the file
    return str(path)


def test_round_trip_is_one_atomic_file(tmp_path, video):
    cache = AvatarCache(str(tmp_path / "cache"))
    key = cache.key(video, resolution=8, fps=25.0, backend="mediapipe")
    assert cache.load(key) is None
    aligned = fake_aligned(5, [True, False, True, True, False])
    track = AvatarTrack.from_aligned(aligned, complete=True)
    track.latents = np.ones((3, 1, 1, 16), np.float32)
    track.vae_fingerprint = "vae-x"
    path = cache.store(key, track)
    assert os.listdir(cache.root) == [os.path.basename(path)]  # no temp file left
    loaded = cache.load(key)
    assert loaded.num_frames == 5 and loaded.complete and loaded.vae_fingerprint == "vae-x"
    assert all(same_aligned(a, b) for a, b in zip(loaded.aligned_faces(), aligned))
    np.testing.assert_array_equal(loaded.latents, track.latents)


def test_key_changes_with_video_content_and_settings(tmp_path, video):
    cache = AvatarCache(str(tmp_path))
    base = cache.key(video, resolution=256, fps=25.0, backend="mediapipe")
    assert cache.key(video, resolution=256, fps=25.0, backend="mediapipe").name == base.name
    others = [cache.key(video, resolution=512, fps=25.0, backend="mediapipe"),
              cache.key(video, resolution=256, fps=30.0, backend="mediapipe"),
              cache.key(video, resolution=256, fps=25.0, backend="insightface"),
              cache.key(video, resolution=256, fps=25.0, backend="mediapipe", face="left")]
    with open(video, "ab") as f:
        f.write(b"edited")
    others.append(cache.key(video, resolution=256, fps=25.0, backend="mediapipe"))
    assert len({k.name for k in others} | {base.name}) == 6


@pytest.mark.parametrize("damage", ["truncated", "flipped_byte", "other_version", "other_video", "other_settings"])
def test_stale_or_corrupt_entries_are_deleted_not_trusted(tmp_path, video, damage, monkeypatch):
    cache = AvatarCache(str(tmp_path / "cache"))
    key = cache.key(video, resolution=8, fps=25.0, backend="mediapipe")
    path = cache.store(key, AvatarTrack.from_aligned(fake_aligned(4, [True] * 4), complete=True))
    raw = open(path, "rb").read()
    if damage == "truncated":
        open(path, "wb").write(raw[:len(raw) // 2])
    elif damage == "flipped_byte":  # inside the faces array: only the checksum notices
        with np.load(path) as data:
            offset = raw.find(data["faces"].tobytes()[:64])
        assert offset > 0
        broken = bytearray(raw)
        broken[offset + 10] ^= 0xFF
        open(path, "wb").write(bytes(broken))
    elif damage == "other_version":
        monkeypatch.setattr(ac, "CACHE_VERSION", ac.CACHE_VERSION + 1)
        key = ac.AvatarKey(key.video_sha256, key.settings)  # same file name is forced below
        monkeypatch.setattr(AvatarCache, "path", lambda self, k: path)
    elif damage in ("other_video", "other_settings"):  # a file under this key's name made for something else
        other = (ac.AvatarKey("0" * 64, key.settings) if damage == "other_video"
                 else ac.AvatarKey(key.video_sha256, dict(key.settings, resolution=16)))
        monkeypatch.setattr(AvatarCache, "path", lambda self, k: path)
        cache.store(other, AvatarTrack.from_aligned(fake_aligned(4, [True] * 4), complete=True))
    assert cache.load(key) is None
    assert not os.path.exists(path) and len(cache.rebuilt) == 1, cache.rebuilt


def test_cached_face_pass_replays_and_refuses_past_a_partial_track():
    aligned = fake_aligned(4, [True, False, True, True])
    replay = CachedFacePass(AvatarTrack.from_aligned(aligned, complete=False), source="v.mp4")
    frame = np.zeros((4, 4, 3), np.uint8)
    assert all(same_aligned(replay(frame), a) for a in aligned)
    with pytest.raises(AvatarCacheMiss, match="v.mp4"):
        replay(frame)
    complete = CachedFacePass(AvatarTrack.from_aligned(aligned, complete=True))
    assert [complete(frame) is None for _ in range(5)] == [False, True, False, False, True]


def test_recording_face_pass_stores_only_after_a_good_pass(tmp_path, video):
    aligned = fake_aligned(3, [True, True, False])

    class Inner:
        def __init__(self):
            self.i, self.closed = 0, False

        def __call__(self, frame):
            self.i += 1
            return aligned[self.i - 1]

        def check_found(self):
            pass

        def close(self):
            self.closed = True

    cache = AvatarCache(str(tmp_path / "cache"))
    key = cache.key(video, resolution=8, fps=25.0, backend="mediapipe")
    inner = Inner()
    recorder = RecordingFacePass(inner, cache, key, expected_frames=5)
    for _ in range(3):
        recorder(np.zeros((4, 4, 3), np.uint8))
    assert recorder.store() is None  # check_found not reached: nothing stored
    recorder.check_found()
    recorder.close()
    assert inner.closed and recorder.store() == cache.path(key)
    loaded = cache.load(key)
    assert loaded.num_frames == 3 and not loaded.complete  # 3 of the video's 5 frames
    assert loaded.covers(3) and not loaded.covers(4)


# ---------------------------------------------------------------- end to end on the tiny model

@pytest.mark.slow
def test_second_job_replays_track_and_moments_with_the_same_result(tmp_path, monkeypatch):
    from lipsync_jax.pipeline import Request, Sampling, SyncJob
    from lipsync_jax.pipeline.face_choice import FacePlan
    from lipsync_jax.serving.service import LipsyncService

    clip = str(tmp_path / "clip.mp4")
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", "-i", asset_path("demo1_video.mp4"), "-t", "0.8",
                    "-vf", "scale=270:480", "-an", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", clip],
                   check=True)
    service = LipsyncService.from_config(TINY_CONFIG, random_init=True, avatar_cache=str(tmp_path / "avatars"))
    passes = []
    real = FacePlan.new_face_pass
    monkeypatch.setattr(FacePlan, "new_face_pass", lambda plan: passes.append(plan) or real(plan))

    def job(name):
        faces = {}
        on_chunk = lambda index, start, generated: faces.__setitem__(index, np.array(generated))  # noqa: E731
        request = Request(SyncJob(clip, asset_path("demo2_audio.wav"), str(tmp_path / f"{name}.mp4"), seed=5,
                                  max_seconds=0.6), Sampling(steps=1))
        result = service.run(request, on_chunk=on_chunk)
        return result, np.concatenate([faces[k] for k in sorted(faces)])

    first, faces_first = job("first")
    assert first.avatar == "stored" and len(passes) == 1
    key = service.avatar_cache.key(clip, resolution=64, fps=25.0, backend="mediapipe", face="largest")
    entry = service.avatar_cache.load(key)
    assert entry is not None and entry.latents.shape == (15, 8, 8, 16) and entry.vae_fingerprint
    assert first.result.program_calls == {"moments": 0, "encode": 1}  # 15 frames: one chunk, encoded in the program

    second, faces_second = job("second")
    assert second.avatar == "hit" and len(passes) == 1  # no face pass built for the second job
    assert second.result.program_calls == {"moments": 1, "encode": 0}  # its chunk: sampled from cached moments
    assert second.compiles == 0  # ... by the very program the first job compiled
    np.testing.assert_allclose(faces_second, faces_first, atol=2e-4)

    path = service.avatar_cache.path(key)
    with open(path, "r+b") as f:  # corrupt the entry: the next job rebuilds it
        f.truncate(os.path.getsize(path) // 3)
    third, faces_third = job("third")
    assert third.avatar == "stored" and len(passes) == 2 and service.avatar_cache.rebuilt
    np.testing.assert_allclose(faces_third, faces_first, atol=2e-4)
