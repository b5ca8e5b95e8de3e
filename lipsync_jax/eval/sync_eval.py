"""SyncNet sync evaluation of lip-synced videos: load a StableSyncNet (converted checkpoint or
random init), align the faces of a video, compute the SyncNet mel of its audio and score them
with ``lipsync_jax.eval.sync_score`` (sliding 16-frame windows, offset search).

What the SyncNet sees (LatentSync's SyncNet data and stage-2 loss): the video at 25 fps,
faces aligned to LatentSync's template at ``resolution`` (256 for the released pixel
SyncNets), RGB scaled to [-1, 1] (``x / 255`` then ``Normalize(0.5, 0.5)``), the lower half of
each face, 16 frames stacked on channels; audio at 16 kHz as the Wav2Lip-style SyncNet mel
(80 bins, 80 columns per second, values in [-4, 4]), 52 columns per window.

Pairing for directory evaluation: ``pair_videos_with_audio`` matches ``name.mp4`` with an
audio file of the same stem (``name.wav``, ``.mp3``, ...) in the audio folder; a video
without one is scored against its own audio track.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from lipsync_jax.audio import load_audio, syncnet_mel
from lipsync_jax.eval.faces import SYNCNET_FPS, FaceTrack, read_face_track, to_signed
from lipsync_jax.eval.sync_score import SyncScore, sync_score

DEFAULT_SYNCNET_CONFIG = "configs/syncnet/syncnet_16_pixel_attn.py"
VIDEO_EXTENSIONS = (".mp4", ".mov", ".mkv", ".avi", ".webm")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".m4a", ".aac", ".flac", ".ogg")


class SyncEvalError(ValueError):
    """Bad evaluation input: checkpoint/config that do not fit, empty folder, ..."""


@dataclasses.dataclass(frozen=True)
class LoadedSyncNet:
    model: Any  # StableSyncNet
    params: Any  # bare params tree
    resolution: int  # aligned face size the visual tower expects (its input is the lower half)
    source: str  # checkpoint folder, or "random init (seed N)"
    random_init: bool


def _model_config(config: Any) -> tuple[dict[str, Any], int | None, str]:
    """(model section, data.resolution or None, label) of a config file path or mapping."""
    from lipsync_jax.config_utils import config_to_dict, load_config

    if isinstance(config, (str, os.PathLike)):
        label = os.fspath(config)
        if label.endswith(".json"):
            with open(label, encoding="utf-8") as f:
                config = json.load(f)
        else:
            config = load_config(label)
    else:
        label = "config mapping"
    config = config_to_dict(config)
    resolution = config.get("data", {}).get("resolution") if isinstance(config.get("data"), Mapping) else None
    return config.get("model", config), resolution, label


def _check_params_fit(params: Mapping[str, Any], model: Any, where: str) -> None:
    from lipsync_jax.models.syncnet import abstract_params
    from lipsync_jax.tree_utils import shape_mismatches

    missing, unexpected, wrong = shape_mismatches(params, abstract_params(model))
    if missing or unexpected or wrong:
        lines = [f"{len(missing)} missing", f"{len(unexpected)} unexpected", f"{len(wrong)} wrong shape"]
        examples = (missing + unexpected + wrong)[:5]
        raise SyncEvalError(f"{where}: params do not fit the SyncNet config ({', '.join(lines)}; e.g. "
                            f"{'; '.join(examples)}). Pass the --config the checkpoint was converted with.")


def random_params(model: Any, seed: int = 0) -> dict[str, Any]:
    """Random numpy params for ``model`` without compiling its init (``tree_utils.random_params``:
    smoke tests; seconds instead of a long init)."""
    from lipsync_jax import tree_utils
    from lipsync_jax.models.syncnet import abstract_params

    return tree_utils.random_params(abstract_params(model), seed)


def _check_resolution(model: Any, params: Any, resolution: int, where: str) -> None:
    """The visual tower must reduce the lower half of ``resolution`` px faces to 1x1 (traced only)."""
    if resolution <= 0 or resolution % 8:
        raise SyncEvalError(f"face resolution must be a positive multiple of 8, got {resolution}")
    images = jax.ShapeDtypeStruct((1, resolution - resolution // 2, resolution,
                                   model.config.visual_encoder.in_channels), np.float32)
    try:
        jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=type(model).embed_visual), params, images)
    except ValueError as error:
        raise SyncEvalError(f"{where}: the SyncNet does not take {resolution} px faces ({error}); "
                            "set --resolution (or the config's data.resolution) to what it was trained on") from None


def load_syncnet(checkpoint: str | None = None, config: Any = None, random_init: bool = False, seed: int = 0,
                 resolution: int | None = None) -> LoadedSyncNet:
    """A StableSyncNet with its params.

    ``checkpoint``: folder written by ``python -m lipsync_jax.convert syncnet`` (params +
    config.json). ``config``: config file (``.py`` / ``.json``) or mapping; default: the
    checkpoint's config.json, else ``configs/syncnet/syncnet_16_pixel_attn.py``.
    ``random_init``: random weights (smoke tests only; scores are meaningless).
    ``resolution``: aligned face size; default the config's ``data.resolution``, else 256.
    """
    from lipsync_jax.checkpoints import restore_params
    from lipsync_jax.models.syncnet import StableSyncNet

    if random_init == (checkpoint is not None):
        raise SyncEvalError("give either a SyncNet checkpoint folder or random_init=True (not both, not neither)")
    params = saved_config = None
    if checkpoint is not None:
        if not os.path.isdir(checkpoint):
            raise SyncEvalError(f"{checkpoint}: SyncNet checkpoint folder not found (convert stable_syncnet.pt "
                                "with `python -m lipsync_jax.convert syncnet --src ... --config ... --dst DIR`)")
        params, saved_config = restore_params(checkpoint)
    if config is None:
        config = saved_config if saved_config is not None else DEFAULT_SYNCNET_CONFIG
    model_config, config_resolution, _ = _model_config(config)
    model = StableSyncNet.from_config(model_config)
    resolution = int(resolution or config_resolution or 256)
    if random_init:
        params = random_params(model, seed)
        source = f"random init (seed {seed})"
    else:
        _check_params_fit(params, model, checkpoint)
        source = os.path.abspath(checkpoint)
    _check_resolution(model, params, resolution, source)
    return LoadedSyncNet(model=model, params=params, resolution=resolution, source=source, random_init=random_init)


@dataclasses.dataclass(frozen=True)
class SyncEvalResult:
    video: str
    audio: str  # the audio file scored (the video itself when its own track is used)
    score: SyncScore
    num_frames: int  # frames read (25 fps)
    frames_without_face: tuple[int, ...]
    audio_seconds: float
    syncnet: str  # LoadedSyncNet.source

    def to_dict(self, per_window: bool = True) -> dict[str, Any]:
        """JSON-ready summary (per-window scores included unless ``per_window`` is False)."""
        s = self.score
        out = {
            "video": self.video, "audio": self.audio, "syncnet": self.syncnet,
            "num_frames": self.num_frames, "num_windows": s.num_windows,
            "frames_without_face": len(self.frames_without_face), "audio_seconds": round(self.audio_seconds, 3),
            "similarity_at_zero": s.similarity_at_zero, "best_offset": s.best_offset,
            "best_similarity": s.best_similarity, "confidence": s.confidence,
            "offsets": [int(o) for o in s.offsets],
            "mean_similarity_per_offset": [None if np.isnan(v) else float(v) for v in s.mean_similarity],
        }
        if per_window:
            out["window_similarity_at_zero"] = _window_column(s, 0)
            out["window_similarity_at_best"] = _window_column(s, s.best_offset)
            out["frames_without_face_indices"] = list(self.frames_without_face)
        return out


def _window_column(score: SyncScore, offset: int) -> list[float | None]:
    """Per visual window similarity at ``offset`` (None where that audio window is missing)."""
    column = score.window_similarity[:, int(offset - score.offsets[0])]
    return [None if np.isnan(v) else float(v) for v in column]


def score_faces(syncnet: LoadedSyncNet, faces: np.ndarray, wav: np.ndarray, max_offset: int = 15,
                batch_size: int = 16) -> SyncScore:
    """Sync score of aligned uint8 faces (n, r, r, 3) at 25 fps against 16 kHz mono ``wav``."""
    if faces.shape[1:3] != (syncnet.resolution, syncnet.resolution):
        raise SyncEvalError(f"faces are {faces.shape[1]}x{faces.shape[2]}, the SyncNet expects "
                            f"{syncnet.resolution}x{syncnet.resolution}")
    mel = syncnet_mel(wav)  # (80, T), 80 columns per second
    return sync_score(syncnet.model, syncnet.params, to_signed(faces), mel, fps=SYNCNET_FPS,
                      max_offset=max_offset, batch_size=batch_size, lower_half=True)


def evaluate_sync(video: str, syncnet: LoadedSyncNet, audio: str | None = None, max_offset: int = 15,
                  batch_size: int = 16, landmarker: Any = None, face_track: FaceTrack | None = None) -> SyncEvalResult:
    """Score ``video`` against ``audio`` (default: the video's own audio track). Pass
    ``face_track`` to reuse faces aligned earlier (e.g. to try several audio files)."""
    audio_path = audio if audio is not None else video
    wav = load_audio(audio_path)  # AudioLoadError naming the file (missing, no audio stream, ...)
    track = face_track or read_face_track(video, syncnet.resolution, fps=SYNCNET_FPS, landmarker=landmarker)
    score = score_faces(syncnet, track.faces, wav, max_offset=max_offset, batch_size=batch_size)
    return SyncEvalResult(video=video, audio=audio_path, score=score, num_frames=track.num_frames,
                          frames_without_face=track.missing_frames, audio_seconds=wav.shape[0] / 16000.0,
                          syncnet=syncnet.source)


def pair_videos_with_audio(video_dir: str, audio_dir: str | None = None) -> list[tuple[str, str | None]]:
    """``(video, audio or None)`` for each video in ``video_dir`` (sorted by name); audio is the
    file with the video's stem in ``audio_dir`` (default ``video_dir``), None: own track."""
    if not os.path.isdir(video_dir):
        raise SyncEvalError(f"{video_dir}: video folder not found")
    if audio_dir is not None and not os.path.isdir(audio_dir):
        raise SyncEvalError(f"{audio_dir}: audio folder not found")
    audio_dir = audio_dir or video_dir
    audio_by_stem: dict[str, str] = {}
    for name in sorted(os.listdir(audio_dir)):
        stem, ext = os.path.splitext(name)
        if ext.lower() in AUDIO_EXTENSIONS:
            audio_by_stem.setdefault(stem, os.path.join(audio_dir, name))
    videos = sorted(n for n in os.listdir(video_dir) if os.path.splitext(n)[1].lower() in VIDEO_EXTENSIONS)
    if not videos:
        raise SyncEvalError(f"{video_dir}: no video files ({', '.join(VIDEO_EXTENSIONS)})")
    return [(os.path.join(video_dir, n), audio_by_stem.get(os.path.splitext(n)[0])) for n in videos]
