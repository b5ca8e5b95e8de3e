"""FVD (Frechet Video Distance) of face clips as LatentSync's eval/eval_fvd.py measures it.

Clip preparation (``read_fvd_clip``), per video: frames 20..35 (16 frames, the video's own frame
rate, no resampling); in each frame the FIRST face MediaPipe's short-range face detector finds
(``model_selection=0``, ``min_detection_confidence=0.5``) is cut out with its box (pixel
coordinates truncated to int, clamped to the frame) and resized to 224 x 224 with OpenCV's
``INTER_AREA``. A frame without a face makes the video fail (LatentSync raises too).

Features (``I3DFeatures``): the Kinetics-400 I3D (pytorch-i3d's ``InceptionI3d``,
``rgb_imagenet.pt``) on ``x = u8 / 127.5 - 1``; the 400-d LOGITS (pre-softmax) of each 16-frame
clip are the FVD features, as LatentSync's "raw features before the softmax layer" (400-d)
are. The 1024-d pooled features are available (``I3DFeatures.pooled``) but not used for FVD.

Distance (``frechet_distance``): LatentSync's ``compute_fvd`` in float64, ``||mu_g - mu_r||^2 +
tr(S_g + S_r - 2 sqrtm(S_g S_r))`` with ``np.cov`` (unbiased) covariances and the real part of
``scipy.linalg.sqrtm``.

FVD values are only comparable within one implementation: LatentSync's own eval uses the
StyleGAN-V TorchScript export of the TF-Hub I3D, other papers use the TF original, other clip
lengths, frame sampling, crops and sample counts; with few clips the covariances are
rank-deficient and the number is dominated by noise. Use it to compare systems evaluated here.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from lipsync_jax.eval.nets import load_net_params, padded_batches

FVD_START_FRAME = 20  # LatentSync reads vr[20:36]
FVD_NUM_FRAMES = 16
FVD_SIZE = 224
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm")


class FVDError(ValueError):
    """A video or feature set FVD cannot use (the message names the file)."""


# ---------------------------------------------------------------- distance (float64, host)

def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and unbiased covariance (d, d) of (n, d) features, in float64."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise FVDError(f"FVD needs at least 2 feature vectors of one size per set, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(features_generated: np.ndarray, features_reference: np.ndarray) -> float:
    """LatentSync's ``compute_fvd(feats_fake, feats_real)``: Frechet distance of two (n, d)
    feature sets in float64 (``scipy.linalg.sqrtm``; its imaginary roundoff is dropped)."""
    import scipy.linalg

    mu_g, sigma_g = feature_statistics(features_generated)
    mu_r, sigma_r = feature_statistics(features_reference)
    if mu_g.shape != mu_r.shape:
        raise FVDError(f"feature sizes differ: {mu_g.shape[0]} vs {mu_r.shape[0]}")
    root = scipy.linalg.sqrtm(sigma_g @ sigma_r)  # LatentSync passes disp=False: same matrix, no estimate
    root = root[0] if isinstance(root, tuple) else root
    return float(np.real(np.square(mu_g - mu_r).sum() + np.trace(sigma_g + sigma_r - 2.0 * root)))


# ---------------------------------------------------------------- clip preparation (host)

class FaceBoxCropper:
    """The first face MediaPipe's short-range detector finds, cropped and resized (INTER_AREA)."""

    def __init__(self, size: int = FVD_SIZE, min_confidence: float = 0.5):
        import mediapipe as mp

        self.size = size
        self._detector = mp.solutions.face_detection.FaceDetection(model_selection=0,
                                                                   min_detection_confidence=min_confidence)

    def __call__(self, frame: np.ndarray) -> np.ndarray | None:
        """RGB uint8 (h, w, 3) -> (size, size, 3) face crop, or None when no face is found."""
        import cv2

        height, width = frame.shape[:2]
        result = self._detector.process(np.ascontiguousarray(frame))
        if not result.detections:
            return None
        box = result.detections[0].location_data.relative_bounding_box
        x1, y1 = max(0, int(box.xmin * width)), max(0, int(box.ymin * height))
        x2, y2 = min(width, x1 + int(box.width * width)), min(height, y1 + int(box.height * height))
        if x2 <= x1 or y2 <= y1:
            return None
        return cv2.resize(frame[y1:y2, x1:x2], (self.size, self.size), interpolation=cv2.INTER_AREA)

    def close(self) -> None:
        self._detector.close()

    def __enter__(self) -> FaceBoxCropper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_fvd_clip(video_path: str, cropper: FaceBoxCropper | None = None, *, start_frame: int = FVD_START_FRAME,
                  num_frames: int = FVD_NUM_FRAMES) -> np.ndarray:
    """The (16, 224, 224, 3) uint8 face clip LatentSync's eval_fvd takes from ``video_path``.
    Raises FVDError (too short, a frame without a face) or MediaError (unreadable)."""
    from lipsync_jax.media import read_frames

    if not os.path.isfile(video_path):
        raise FVDError(f"{video_path}: no such video file")
    own_cropper = cropper is None
    cropper = cropper or FaceBoxCropper()
    try:
        faces = []
        for index, frame in enumerate(read_frames(video_path, None, max_frames=start_frame + num_frames)):
            if index < start_frame:
                continue
            face = cropper(frame)
            if face is None:
                raise FVDError(f"{video_path}: no face found in frame {index} (FVD uses frames "
                               f"{start_frame}..{start_frame + num_frames - 1})")
            faces.append(face)
    finally:
        if own_cropper:
            cropper.close()
    if len(faces) < num_frames:
        raise FVDError(f"{video_path}: too short for FVD: needs {start_frame + num_frames} frames, "
                       f"has {start_frame + len(faces)}")
    return np.stack(faces)


def list_videos(folder: str) -> list[str]:
    """Video files directly in ``folder`` (sorted), or ``[folder]`` when it is a video file."""
    if os.path.isfile(folder):
        return [folder]
    if not os.path.isdir(folder):
        raise FVDError(f"{folder}: no such folder or video file")
    videos = sorted(os.path.join(folder, name) for name in os.listdir(folder)
                    if name.lower().endswith(VIDEO_SUFFIXES))
    if not videos:
        raise FVDError(f"{folder}: no videos ({', '.join(VIDEO_SUFFIXES)}) in this folder")
    return videos


# ---------------------------------------------------------------- I3D features (device)

@dataclasses.dataclass
class I3DFeatures:
    """An I3D with its params and a jitted, fixed-batch feature function.

    ``logits(clips)``: (n, 16, 224, 224, 3) uint8 -> (n, num_classes) float64 (the FVD features);
    ``pooled(clips)``: (n, 1024) pooled features. Clips go through in batches of exactly
    ``batch_size`` (the last one padded), so one compilation serves every call.
    """

    model: Any
    params: Any
    batch_size: int = 8
    source: str = ""
    random_init: bool = False

    @functools.cached_property
    def _forward(self):
        import jax
        import jax.numpy as jnp

        def forward(params, clips_u8):
            x = clips_u8.astype(jnp.float32) / 127.5 - 1.0
            logits, features = self.model.apply({"params": params}, x)
            # 16 frames give one temporal position; average if longer clips are given
            return jnp.mean(logits, axis=1), jnp.mean(features, axis=(1, 2, 3))

        return jax.jit(forward)

    def _run(self, clips: np.ndarray, which: int) -> np.ndarray:
        clips = np.asarray(clips)
        if clips.ndim != 5 or clips.shape[-1] != 3 or clips.dtype != np.uint8:
            raise FVDError(f"I3D takes uint8 clips (n, frames, h, w, 3), got {clips.dtype} {clips.shape}")
        out = [np.asarray(self._forward(self.params, batch)[which], np.float64)[:valid]
               for batch, valid in padded_batches(clips, self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0))

    def logits(self, clips: np.ndarray) -> np.ndarray:
        return self._run(clips, 0)

    def pooled(self, clips: np.ndarray) -> np.ndarray:
        return self._run(clips, 1)


def load_i3d(checkpoint: str | None = None, *, random_init: bool = False, seed: int = 0, batch_size: int = 8,
             config: dict | None = None, dtype: Any = "float32") -> I3DFeatures:
    """The FVD network: ``checkpoint`` is a folder from ``python -m lipsync_jax.convert i3d`` or
    pytorch-i3d's ``rgb_imagenet.pt`` itself (converted on the fly); ``random_init`` gives random
    weights (smoke tests: the FVD is then meaningless). ``config``: I3DConfig fields (default
    Kinetics-400: 400 classes). ``dtype``: compute dtype (float32 reproduces the reference;
    bfloat16 is faster on GPU/TPU but changes the FVD slightly)."""
    from lipsync_jax.models.i3d import build, init_params

    if random_init == (checkpoint is not None):
        raise FVDError("give either an I3D checkpoint (converted folder or rgb_imagenet.pt) or random_init=True")
    loaded = load_net_params(checkpoint, config, random_init=random_init, seed=seed, init_params=init_params,
                             convert="i3d")
    if loaded is None:
        raise FVDError(f"{checkpoint}: I3D checkpoint not found (a folder from `python -m lipsync_jax.convert i3d` "
                       "or pytorch-i3d's rgb_imagenet.pt)")
    params, config, source = loaded
    return I3DFeatures(build(config, dtype=dtype), params, batch_size=batch_size, source=source,
                       random_init=random_init)


# ---------------------------------------------------------------- folders -> FVD

@dataclasses.dataclass
class FVDResult:
    fvd: float
    generated: list[str]  # videos whose clips were used
    reference: list[str]
    errors: dict[str, str]  # video -> why it was left out
    features_generated: np.ndarray  # (n_g, 400) float64
    features_reference: np.ndarray  # (n_r, 400)

    def to_dict(self) -> dict[str, Any]:
        return {"fvd": self.fvd, "features": "i3d_logits", "num_generated": len(self.generated),
                "num_reference": len(self.reference), "generated": self.generated, "reference": self.reference,
                "errors": self.errors}


def read_fvd_clips(videos: Sequence[str], progress: bool = True, desc: str = "clips"
                   ) -> tuple[np.ndarray, list[str], dict[str, str]]:
    """Face clips of many videos: (clips (n, 16, 224, 224, 3) uint8, videos used, {video: error})."""
    from tqdm import tqdm

    from lipsync_jax.media import MediaError

    clips, used, errors = [], [], {}
    with FaceBoxCropper() as cropper:
        for video in tqdm(videos, desc=desc, disable=not progress, unit="video"):
            try:
                clips.append(read_fvd_clip(video, cropper))
                used.append(video)
            except (FVDError, MediaError, OSError) as error:
                errors[video] = str(error)
    shape = (0, FVD_NUM_FRAMES, FVD_SIZE, FVD_SIZE, 3)
    return (np.stack(clips) if clips else np.zeros(shape, np.uint8)), used, errors


def fvd_of_videos(generated: Iterable[str], reference: Iterable[str], i3d: I3DFeatures,
                  progress: bool = True) -> FVDResult:
    """FVD between two lists of videos; videos that cannot be used are reported in ``errors``
    (FVDError if fewer than 2 remain on a side)."""
    gen_clips, gen_used, errors = read_fvd_clips(list(generated), progress, "generated")
    ref_clips, ref_used, ref_errors = read_fvd_clips(list(reference), progress, "reference")
    errors.update(ref_errors)
    for side, used in (("generated", gen_used), ("reference", ref_used)):
        if len(used) < 2:
            detail = "; ".join(f"{v}: {e}" for v, e in errors.items()) or "none given"
            raise FVDError(f"FVD needs at least 2 usable {side} videos, got {len(used)} (problems: {detail})")
    features_g, features_r = i3d.logits(gen_clips), i3d.logits(ref_clips)
    return FVDResult(frechet_distance(features_g, features_r), gen_used, ref_used, errors, features_g, features_r)


def fvd_of_folders(generated_dir: str, reference_dir: str, i3d: I3DFeatures, progress: bool = True) -> FVDResult:
    """FVD between the videos of two folders (LatentSync's ``eval_fvd(real_dir, fake_dir)``)."""
    return fvd_of_videos(list_videos(generated_dir), list_videos(reference_dir), i3d, progress)
