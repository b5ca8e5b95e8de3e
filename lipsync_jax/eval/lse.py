"""LSE-C / LSE-D (and the AV offset) of talking-head videos, as LatentSync's eval computes them:
syncnet_python's classic SyncNet (``syncnet_v2.model``) on face tracks found by S3FD
(``sfd_face.pth``).

    from lipsync_jax.eval.lse import evaluate_lse, load_lse_syncnet, load_s3fd
    syncnet = load_lse_syncnet("checkpoints/auxiliary/syncnet_v2.model")   # or a converted folder
    detector = load_s3fd("checkpoints/auxiliary/sfd_face.pth")             # or a converted folder
    result = evaluate_lse("out.mp4", syncnet=syncnet, detector=detector)   # own audio track
    result.lse_c, result.lse_d, result.av_offset                           # means over face tracks
    track = result.tracks[0]
    track.score.dists_by_offset()    # (offsets, mean distance) for a distance-vs-offset plot
    track.score.window_conf          # per 5-frame window confidence (framewise plot)

Pipeline (details in ``lse_tracks`` and ``lse_score``): the video read at 25 fps, S3FD at scale
0.25 on every frame, scene cuts, IoU face tracks per shot (more than ``min_track`` = 50 detections), median-smoothed
crops resized to 224, the 16 kHz audio of each track's time span at int16 scale, MFCC, every
5-frame window, mean distances for offsets -15..15: LSE-D = the minimum, LSE-C = median - min,
AV offset = the best shift. Several faces give several tracks, each scored; the video's values
are their means (offset: ``int(mean)``), as LatentSync's ``syncnet_eval`` reports them.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from lipsync_jax.eval.lse_score import DEFAULT_VSHIFT, SAMPLES_PER_FRAME, LSEInputError, LSEScore, lse_score
from lipsync_jax.eval.lse_tracks import (
    DetectSettings,
    FaceTrackLSE,
    ShotDetector,
    crop_tracks,
    detect_frames,
    track_faces,
)
from lipsync_jax.models.lse_syncnet import LSESyncNet, LSESyncNetConfig
from lipsync_jax.models.s3fd import S3FDConfig, S3FDNet

LSE_FPS = 25.0


class LSEEvalError(ValueError):
    """Bad LSE input: no face track, checkpoint that does not fit, ... (message names the file)."""


@dataclasses.dataclass(frozen=True)
class LoadedNet:
    model: Any  # LSESyncNet or S3FDNet
    params: Any  # bare params
    source: str  # checkpoint path, or "random init (seed N)"
    random_init: bool


# ------------------------------------------------------------------------------------------
# Loading


def _random_tree(abstract: Any, seed: int, bias_fn=None) -> dict[str, Any]:
    """Numpy params: fan-in scaled normal kernels, BN stats (0, 1), scales at their init."""
    from lipsync_jax.models.s3fd import L2NORM_SCALES
    from lipsync_jax.tree_utils import flatten_tree, unflatten_tree

    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in flatten_tree(abstract).items():
        shape, name = tuple(leaf.shape), path[-1]
        if name == "kernel":
            value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        elif name == "scale":
            value = np.full(shape, L2NORM_SCALES.get(path[0], 1.0))
        elif name == "running_var":
            value = np.ones(shape)
        else:
            value = np.zeros(shape)
        if bias_fn is not None:
            value = bias_fn(path, value)
        flat[path] = value.astype(np.float32)
    return unflatten_tree(flat)


def _restore(checkpoint: str, convert_module: Any, what: str) -> dict[str, Any]:
    """Params from a converted folder, or converted on the fly from the original file."""
    from lipsync_jax.checkpoints import is_converted, restore_params

    if not os.path.exists(checkpoint):
        raise LSEEvalError(f"{checkpoint}: {what} checkpoint not found")
    if is_converted(checkpoint):
        return restore_params(checkpoint)[0]
    return convert_module.convert_file(checkpoint)[0]


def _check_fit(params: Any, abstract: Any, source: str, what: str) -> None:
    from lipsync_jax.tree_utils import param_shapes

    want, got = param_shapes(abstract), param_shapes(params)
    bad = sorted("/".join(p) for p in want.keys() ^ got.keys())
    bad += sorted(f"{'/'.join(p)} {got[p]} != {want[p]}" for p in want.keys() & got.keys() if got[p] != want[p])
    if bad:
        raise LSEEvalError(f"{source}: params do not fit the {what} ({len(bad)} problems, e.g. {'; '.join(bad[:3])})")


def load_lse_syncnet(checkpoint: str | None = None, *, random_init: bool = False, seed: int = 0,
                     narrow_by: int = 1) -> LoadedNet:
    """The classic SyncNet from ``syncnet_v2.model`` or a folder written by
    ``python -m lipsync_jax.convert lse_syncnet``; ``random_init``: random weights (smoke tests
    only: the numbers are meaningless), ``narrow_by`` divides its widths (tests)."""
    from lipsync_jax.convert import lse_syncnet as convert_lse
    from lipsync_jax.models.lse_syncnet import abstract_params

    if random_init == (checkpoint is not None):
        raise LSEEvalError("give either a SyncNet checkpoint (syncnet_v2.model or a converted folder) or "
                           "random_init=True")
    if random_init:
        config = LSESyncNetConfig.from_config({"narrow_by": narrow_by})
        params = _random_tree(abstract_params(config), seed)
        return LoadedNet(LSESyncNet(config), params, f"random init (seed {seed})", True)
    params = _restore(checkpoint, convert_lse, "SyncNet")
    config = LSESyncNetConfig.from_config(convert_lse.saved_config(params))  # widths read off the shapes
    _check_fit(params, abstract_params(config), checkpoint, "classic SyncNet")
    return LoadedNet(LSESyncNet(config), params, os.path.abspath(checkpoint), False)


def _smoke_test_face_bias(path: tuple[str, ...], value: np.ndarray) -> np.ndarray:
    """Random S3FD weights score every prior near 0.5 and find no face above 0.9; for smoke tests
    the face-class bias is raised on the coarsest head (``conf_5``) and lowered on the others, so
    the detector reports one large arbitrary box per frame and the pipeline runs end to end."""
    if path[0].startswith("conf_") and path[-1] == "bias":
        value = value.copy()
        value[-1] = 8.0 if path[0] == "conf_5" else -8.0
    return value


def load_s3fd(checkpoint: str | None = None, *, random_init: bool = False, seed: int = 0,
              narrow_by: int = 1) -> LoadedNet:
    """S3FD from ``sfd_face.pth`` or a folder written by ``python -m lipsync_jax.convert s3fd``;
    ``random_init``: random weights biased to report one large box per frame (smoke tests)."""
    from lipsync_jax.convert import s3fd as convert_s3fd
    from lipsync_jax.models.s3fd import abstract_params

    if random_init == (checkpoint is not None):
        raise LSEEvalError("give either an S3FD checkpoint (sfd_face.pth or a converted folder) or random_init=True")
    if random_init:
        config = S3FDConfig(narrow_by)
        params = _random_tree(abstract_params(config), seed + 1, _smoke_test_face_bias)
        return LoadedNet(S3FDNet(config), params, f"random init (seed {seed + 1})", True)
    params = _restore(checkpoint, convert_s3fd, "S3FD")
    config = S3FDConfig.from_config(convert_s3fd.saved_config(params))
    _check_fit(params, abstract_params(config), checkpoint, "S3FD detector")
    return LoadedNet(S3FDNet(config), params, os.path.abspath(checkpoint), False)


# ------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass(frozen=True)
class TrackResult:
    index: int
    track: FaceTrackLSE
    score: LSEScore
    face_track: int | None = None  # the inference face track (face.tracks ids) this one follows, when given

    def to_dict(self, per_window: bool = True) -> dict[str, Any]:
        s = self.score
        out = {"track": self.index, "start_frame": self.track.start, "end_frame": self.track.end,
               "num_detections": self.track.num_detections, "lse_c": s.conf, "lse_d": s.min_dist,
               "av_offset": s.av_offset, "num_windows": s.num_windows, "face_track": self.face_track}
        if per_window:
            offsets, dists = s.dists_by_offset()
            out.update({"offsets": offsets.tolist(), "mean_dists": [float(d) for d in dists],
                        "window_conf": [float(c) for c in s.window_conf],
                        "window_conf_smoothed": [float(c) for c in s.window_conf_smoothed]})
        return out


@dataclasses.dataclass(frozen=True)
class LSEResult:
    video: str
    audio: str  # the file the audio came from (the video itself for its own track)
    tracks: tuple[TrackResult, ...]
    num_frames: int  # frames read at 25 fps
    frames_with_face: int  # frames where S3FD found at least one face
    skipped_tracks: tuple[str, ...]  # tracks that could not be scored (too short), with the reason
    shots: tuple[tuple[int, int], ...]  # scene shots (start, end exclusive) the tracks were searched in
    syncnet: str
    detector: str
    random_init: bool

    @property
    def lse_c(self) -> float:
        return float(np.mean([t.score.conf for t in self.tracks]))

    @property
    def lse_d(self) -> float:
        return float(np.mean([t.score.min_dist for t in self.tracks]))

    @property
    def av_offset(self) -> int:
        return int(np.mean([t.score.av_offset for t in self.tracks]))

    def to_dict(self, per_window: bool = True) -> dict[str, Any]:
        return {"video": self.video, "audio": self.audio, "lse_c": self.lse_c, "lse_d": self.lse_d,
                "av_offset": self.av_offset, "num_tracks": len(self.tracks), "num_frames": self.num_frames,
                "frames_with_face": self.frames_with_face, "skipped_tracks": list(self.skipped_tracks),
                "shots": [list(shot) for shot in self.shots],
                "syncnet": self.syncnet, "detector": self.detector, "random_init": self.random_init,
                "tracks": [t.to_dict(per_window) for t in self.tracks]}


def read_audio_int16(path: str) -> np.ndarray:
    """16 kHz mono float64 samples at int16 scale, rounded as a pcm_s16le WAV stores them
    (AudioLoadError naming the file when there is no audio)."""
    from lipsync_jax.audio import load_audio

    wav = load_audio(path)
    return np.clip(np.round(wav.astype(np.float64) * 32768.0), -32768, 32767)


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "frame"):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, leave=False)


def evaluate_lse(video_path: str, audio_path: str | None = None, *, syncnet: LoadedNet, detector: LoadedNet,
                 settings: DetectSettings = DetectSettings(), vshift: int = DEFAULT_VSHIFT, batch_size: int = 16,
                 max_frames: int | None = None, progress: bool = True, face_tracks=None) -> LSEResult:
    """LSE of one video against ``audio_path`` (default: its own audio track).

    ``face_tracks`` (optional: the ``PersonTrack`` list or ``VideoFaceTracks`` that inference used,
    ``face.find_face_tracks(input video)``; frame i of a non-looped output is input frame i): each
    scored track gets the id of the face track it follows (``face.tracks.match_face_track``: best
    mean IoU over shared frames) as ``face_track``, so per-track LSE lines up with ``--face ID``.

    Raises ``LSEEvalError`` (no face track), ``LSEInputError`` (audio shorter than 6 frames, no
    track long enough), ``AudioLoadError`` / ``MediaError`` (unreadable files), each naming the file.
    """
    from lipsync_jax.media import probe_video, read_frames

    info = probe_video(video_path, count=False)
    audio_source = audio_path if audio_path is not None else video_path
    audio = read_audio_int16(audio_source)
    if audio.shape[0] // SAMPLES_PER_FRAME <= 5:
        raise LSEInputError(f"{audio_source}: audio too short ({audio.shape[0] / 16000:.3f} s); LSE needs more "
                            "than 5 frames (0.24 s)")
    total = info.frame_count_at(LSE_FPS) if max_frames is None else min(max_frames, info.frame_count_at(LSE_FPS))
    shot_detector = ShotDetector(settings.scene_threshold, settings.min_scene_len)
    with _progress(total, f"S3FD {os.path.basename(video_path)}", progress) as bar:
        frames = shot_detector.watch(read_frames(video_path, LSE_FPS, max_frames=max_frames, info=info))
        detections = detect_frames(detector.model, detector.params, frames, settings, bar)
    shots = shot_detector.shots()
    tracks = track_faces(detections, settings, shots)
    frames_with_face = sum(1 for d in detections if len(d))
    if not tracks:
        raise LSEEvalError(f"{video_path}: no face track (S3FD found a face in {frames_with_face} of "
                           f"{len(detections)} frames, {len(shots)} shot(s); a track needs more than "
                           f"{settings.min_track} detections of a face larger than {settings.min_face_size:g} px "
                           "within one shot)")
    crops = crop_tracks(read_frames(video_path, LSE_FPS, max_frames=max_frames, info=info), tracks, settings)
    results, skipped = [], []
    for index, (track, faces) in enumerate(zip(tracks, crops)):
        segment = audio[track.start * SAMPLES_PER_FRAME:(track.end + 1) * SAMPLES_PER_FRAME]
        try:
            with _progress(None, f"SyncNet track {index}", progress, unit="window") as bar:
                score = lse_score(syncnet.model, syncnet.params, faces, segment, vshift, batch_size,
                                  what=f"{video_path} track {index} (frames {track.start}-{track.end})", progress=bar)
        except LSEInputError as error:
            skipped.append(str(error))
            continue
        results.append(TrackResult(index, track, score, _face_track_of(track, face_tracks)))
    if not results:
        raise LSEInputError(f"{video_path}: no face track could be scored: {'; '.join(skipped)}")
    return LSEResult(video=video_path, audio=audio_source, tracks=tuple(results), num_frames=len(detections),
                     frames_with_face=frames_with_face, skipped_tracks=tuple(skipped), shots=tuple(shots),
                     syncnet=syncnet.source,
                     detector=detector.source, random_init=syncnet.random_init or detector.random_init)


def _face_track_of(track: FaceTrackLSE, face_tracks) -> int | None:
    if face_tracks is None:
        return None
    from lipsync_jax.face.tracks import match_face_track

    return match_face_track(getattr(face_tracks, "tracks", face_tracks), track.frames, track.boxes)


def lse_input_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean "this video cannot be scored" (reported per video, not raised)."""
    from lipsync_jax.audio import AudioLoadError
    from lipsync_jax.checkpoints import CheckpointFormatError
    from lipsync_jax.convert.rules import ConversionError
    from lipsync_jax.media import MediaError

    return (LSEEvalError, LSEInputError, AudioLoadError, MediaError, CheckpointFormatError, ConversionError, OSError)
