"""PSNR / SSIM between a generated video and a reference video (e.g. a self-reconstruction
with the original audio against the original), frame by frame, streaming.

Regions:
- ``"frame"``: whole frames (both videos must have the same size).
- ``"mouth"``: the lower half of the aligned face (what the SyncNet sees). Faces are found in
  the REFERENCE video and the same per-frame transform crops both videos, so alignment
  noise does not count as an error; frames where the reference has no face are skipped
  (and counted).

Frames are paired in order; when the frame counts differ the shorter length is compared and
both counts are reported. A generated video at another frame rate is resampled to the
reference's rate when read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from lipsync_jax.eval.frame_metrics import FrameMetricsError, lower_half, mse, psnr_from_mse, ssim
from lipsync_jax.face import FaceTracker, resize_face, warp_face
from lipsync_jax.media import probe_video, read_frames

REGIONS = ("frame", "mouth")
MAX_BATCH_PIXELS = 4_000_000


@dataclasses.dataclass(frozen=True)
class VideoMetrics:
    generated: str
    reference: str
    region: str
    psnr: float  # dB, PSNR of the MSE pooled over all compared frames (inf: identical)
    psnr_frame_mean: float  # mean of per-frame PSNRs (inf if any frame is identical)
    ssim: float  # mean of per-frame SSIMs
    psnr_per_frame: np.ndarray  # (k,) for the compared frames
    ssim_per_frame: np.ndarray  # (k,)
    compared_frames: np.ndarray  # (k,) frame indices compared
    frame_counts: tuple[int, int]  # frames read from (generated, reference)
    frames_without_face: tuple[int, ...]  # mouth region: reference frames skipped

    def to_dict(self, per_frame: bool = True) -> dict[str, Any]:
        out = {"generated": self.generated, "reference": self.reference, "region": self.region,
               "psnr": self.psnr, "psnr_frame_mean": self.psnr_frame_mean, "ssim": self.ssim,
               "num_compared": int(self.compared_frames.size), "frames_generated": self.frame_counts[0],
               "frames_reference": self.frame_counts[1], "frames_without_face": len(self.frames_without_face)}
        if per_frame:
            out["psnr_per_frame"] = [float(v) for v in self.psnr_per_frame]
            out["ssim_per_frame"] = [float(v) for v in self.ssim_per_frame]
            out["compared_frames"] = [int(i) for i in self.compared_frames]
        return out


class _MouthCropper:
    """Aligned lower-half crops of (generated, reference) with the reference's transform."""

    def __init__(self, resolution: int, landmarker: Any, backend: str, source: str):
        self.tracker = FaceTracker(resolution, landmarker=landmarker, backend=backend, source=source)
        self.resolution = resolution

    def __call__(self, generated: np.ndarray, reference: np.ndarray):
        aligned = self.tracker(reference)
        if aligned is None:
            return None
        crop = warp_face(generated, aligned.affine, self.tracker.aligner.template.face_size)
        return lower_half(resize_face(crop, self.resolution)), lower_half(aligned.face)

    def close(self) -> None:
        self.tracker.close()


def _pairs(generated: str, reference: str, max_frames: int | None) -> tuple[Iterator, tuple[Any, Any]]:
    gen_info, ref_info = probe_video(generated, count=False), probe_video(reference, count=False)
    if (gen_info.width, gen_info.height) != (ref_info.width, ref_info.height):
        raise FrameMetricsError(f"{generated} is {gen_info.width}x{gen_info.height} but {reference} is "
                                f"{ref_info.width}x{ref_info.height}; frame metrics need the same size")
    gen = read_frames(generated, ref_info.fps, max_frames=max_frames, info=gen_info)
    ref = read_frames(reference, None, max_frames=max_frames, info=ref_info)
    return gen, ref


def video_metrics(generated: str, reference: str, region: str = "frame", resolution: int = 256,
                  max_frames: int | None = None, batch_size: int = 8, landmarker: Any = None,
                  backend: str = "mediapipe") -> VideoMetrics:
    """PSNR / SSIM of ``generated`` against ``reference`` over ``region`` ("frame" or "mouth";
    ``resolution``: aligned face size for "mouth")."""
    if region not in REGIONS:
        raise FrameMetricsError(f"region must be one of {REGIONS}, got {region!r}")
    gen_frames, ref_frames = _pairs(generated, reference, max_frames)
    cropper = _MouthCropper(resolution, landmarker, backend, reference) if region == "mouth" else None
    errors, ssims, indices, skipped, batch = [], [], [], [], []
    counts = [0, 0]

    def flush():
        if batch:
            gen, ref = np.stack([b[0] for b in batch]), np.stack([b[1] for b in batch])
            errors.append(mse(gen, ref))
            ssims.append(ssim(gen, ref))
            batch.clear()

    try:
        ref_iter = iter(ref_frames)
        for index, gen in enumerate(gen_frames):
            counts[0] += 1
            ref = next(ref_iter, None)
            if ref is None:
                continue  # keep counting the generated frames
            counts[1] += 1
            pair = (gen, ref) if cropper is None else cropper(gen, ref)
            if pair is None:
                skipped.append(index)
                continue
            indices.append(index)
            batch.append(pair)
            # bound the SSIM working set: at most ~4 M pixels per batch (2 full-HD frames)
            if len(batch) >= max(1, min(batch_size, MAX_BATCH_PIXELS // (pair[0].shape[0] * pair[0].shape[1]))):
                flush()
        flush()
        counts[1] += sum(1 for _ in ref_iter)
    finally:
        if cropper is not None:
            cropper.close()
    if not indices:
        what = "no frame of the reference has a face" if skipped else "no frames to compare"
        raise FrameMetricsError(f"{generated} vs {reference}: {what}")
    frame_mse = np.concatenate(errors)
    frame_psnr = np.array([psnr_from_mse(e) for e in frame_mse])
    frame_ssim = np.concatenate(ssims)
    return VideoMetrics(generated=generated, reference=reference, region=region,
                        psnr=psnr_from_mse(float(frame_mse.mean())), psnr_frame_mean=float(frame_psnr.mean()),
                        ssim=float(frame_ssim.mean()), psnr_per_frame=frame_psnr, ssim_per_frame=frame_ssim,
                        compared_frames=np.array(indices), frame_counts=(counts[0], counts[1]),
                        frames_without_face=tuple(skipped))
