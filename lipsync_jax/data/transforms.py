"""grain transforms turning a clip record into one UNet or SyncNet training sample.

Output fields (channels-last; f = num_frames, s = resolution), the names the trainer uses:

UNet sample (``UNetSample``):
  gt_frames      (f, s, s, 3) float32 in [-1, 1]   target window
  masked_frames  (f, s, s, 3) float32              gt_frames * mask (lower face zeroed)
  masks          (f, s, s, 1) float32              mask.png's first channel (1 keep, 0 inpaint)
  ref_frames     (f, s, s, 3) float32 in [-1, 1]   reference window, never overlapping the target
  audio_embeds   (f, 10 * layers, d) float32      Whisper rows 2i-4..2i+5 of each target frame i
  mel            (80, 52, 1) float32               SyncNet mel crop of the target window
  start_index, ref_start_index, record_index  int32
SyncNet sample (``SyncNetSample``):
  frames (f, s, s, 3) float32 in [-1, 1] (whole faces; the model takes the lower half),
  mel (80, 52, 1), labels () float32 (1 = in sync), start_index, frames_start_index, record_index.

Randomness comes only from the ``rng`` grain derives from (seed, record position), so a
sample is reproducible. Clips too short for a sample give ``{"skip": True}`` and are removed by
``DropSkipped``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import cv2
import grain.python as grain
import numpy as np

from lipsync_jax.audio.features import DEFAULT_FEAT_LENGTH, gather_frame_windows
from lipsync_jax.audio.syncnet_mel import syncnet_mel_crop
from lipsync_jax.data.audio_features import ClipEmbedder, SyncNetMel
from lipsync_jax.data.records import decode_frames, record_to_float_audio
from lipsync_jax.data.windows import (
    ClipTooShortError,
    apply_mask,
    audio_row_indices,
    max_mel_start,
    sample_syncnet_windows,
    sample_target_and_reference,
    to_pixels,
)
from lipsync_jax.face.mask import load_fixed_mask

SKIP = {"skip": True}


def _frames(record: Mapping[str, Any], start: int, count: int, resolution: int) -> np.ndarray:
    """Decoded frames start..start+count-1 as uint8 (count, resolution, resolution, 3)."""
    frames = decode_frames(record["frames"], range(start, start + count))
    if frames.shape[1:3] != (resolution, resolution):
        shrink = frames.shape[1] > resolution
        frames = np.stack([cv2.resize(f, (resolution, resolution),
                                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC) for f in frames])
    return frames


def _mel_crop(mel: np.ndarray, start: int, num_frames: int, fps: float) -> np.ndarray:
    return syncnet_mel_crop(mel, start, num_frames, fps)[0][..., None]  # (80, 52, 1)


class UNetSample(grain.RandomMapTransform):
    def __init__(self, num_frames: int = 16, resolution: int = 256, mask_image_path: str | None = None,
                 embedder: ClipEmbedder | None = None, mel: SyncNetMel | None = None, fps: float = 25.0,
                 audio_feat_length: Sequence[int] = DEFAULT_FEAT_LENGTH):
        self.num_frames, self.resolution, self.fps = int(num_frames), int(resolution), float(fps)
        self.mask_image_path = mask_image_path
        self.embedder = embedder
        self.mel = mel or SyncNetMel()
        self.audio_feat_length = tuple(audio_feat_length)

    def random_map(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        f = self.num_frames
        audio = record_to_float_audio(record)
        mel = self.mel(audio)
        try:
            start, ref_start = sample_target_and_reference(rng, len(record["frames"]), f,
                                                           max_mel_start(mel.shape[1], f, self.fps))
        except ClipTooShortError:
            return dict(SKIP)
        gt = to_pixels(_frames(record, start, f, self.resolution))
        ref = to_pixels(_frames(record, ref_start, f, self.resolution))
        masked, masks = apply_mask(gt, load_fixed_mask(self.resolution, self.mask_image_path))
        sample = dict(gt_frames=gt, masked_frames=masked, masks=masks, ref_frames=ref,
                      mel=_mel_crop(mel, start, f, self.fps), start_index=np.int32(start),
                      ref_start_index=np.int32(ref_start), record_index=np.int32(record.get("record_index", -1)))
        if self.embedder is not None:
            embeddings = self.embedder(audio)  # (T, layers, d)
            rows = audio_row_indices(range(start, start + f), len(embeddings), self.fps, self.audio_feat_length)
            sample["audio_embeds"] = gather_frame_windows(np.asarray(embeddings, np.float32), rows)
        return sample


class SyncNetSample(grain.RandomMapTransform):
    def __init__(self, num_frames: int = 16, resolution: int = 256, mel: SyncNetMel | None = None,
                 fps: float = 25.0):
        self.num_frames, self.resolution, self.fps = int(num_frames), int(resolution), float(fps)
        self.mel = mel or SyncNetMel()

    def random_map(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        f = self.num_frames
        mel = self.mel(record_to_float_audio(record))
        try:
            start, frames_start, in_sync = sample_syncnet_windows(rng, len(record["frames"]), f,
                                                                  max_mel_start(mel.shape[1], f, self.fps))
        except ClipTooShortError:
            return dict(SKIP)
        return dict(frames=to_pixels(_frames(record, frames_start, f, self.resolution)),
                    mel=_mel_crop(mel, start, f, self.fps), labels=np.float32(in_sync),
                    start_index=np.int32(start), frames_start_index=np.int32(frames_start),
                    record_index=np.int32(record.get("record_index", -1)))


class DropSkipped(grain.FilterTransform):
    def filter(self, element: Mapping[str, Any]) -> bool:
        return "skip" not in element
