"""Deterministic synthetic batch sources with the fields of the real loaders, for tests and
smoke runs where the data pipeline is not the subject.

UNet batches (``data.batch_size`` clips per process; f = ``data.num_frames``, s = ``data.resolution``):
  gt_frames      (b, f, s, s, 3)  float32 in [-1, 1]  target window
  ref_frames     (b, f, s, s, 3)  float32 in [-1, 1]  reference window of the same clip
  masked_frames  (b, f, s, s, 3)  float32             target with the mouth region zeroed
  masks          (b, f, s, s, 1)  float32, 1 = keep, 0 = inpaint (the lower face)
  audio_embeds   (b, f, 50, d)    float32             per-frame Whisper windows (d = cross_attention_dim)
  mel            (b, 80, 52, 1)   float32             SyncNet mel crop of the window
SyncNet batches:
  frames (b, f, s, s, 3) in [-1, 1], mel (b, 80, 52, 1), labels (b,) float32 (1 = in sync).

Sample i of the global stream depends only on (seed, i); process p of n takes the samples
``[step * B + p * b, step * B + (p + 1) * b)`` of global batch ``step`` (B = n * b), so any
process layout sees the same global batches. The iterator state is ``{"next_step": int}``
(``get_state``/``set_state``, like grain's iterators). ``fixed=True`` repeats batch 0 forever
(for overfitting tests).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MEL_SHAPE = (80, 52)
AUDIO_WINDOW = 50


def _smooth_frames(rng: np.random.Generator, f: int, s: int) -> np.ndarray:
    """A clip that looks a little like video: a random low-frequency image drifting over frames."""
    base = rng.standard_normal((f + 3, s // 8 + 2, s // 8 + 2, 3)).astype(np.float32)
    frames = base[:f] * 0.6 + base[1:f + 1] * 0.4  # temporal correlation
    frames = np.repeat(np.repeat(frames, 8, axis=1), 8, axis=2)[:, :s, :s]
    return np.tanh(frames).astype(np.float32)


class SyntheticUNetSource:
    """Iterator of per-process UNet batches (see module docstring)."""

    def __init__(self, config: Mapping[str, Any], process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, fixed: bool = False, offset: int = 0):
        data = config["data"]
        self.batch_size = int(data["batch_size"])
        self.num_frames = int(data["num_frames"])
        self.resolution = int(data["resolution"])
        self.audio_dim = int(config["model"]["cross_attention_dim"])
        self.seed = int(config["run"]["seed"] if seed is None else seed)
        self.process_index, self.process_count = process_index, process_count
        self.fixed = fixed
        self.offset = offset  # shifts the sample ids (e.g. a held-out validation stream)
        self.next_step = 0

    def sample(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index + self.offset])
        f, s = self.num_frames, self.resolution
        clip = _smooth_frames(rng, 2 * f, s)
        gt, ref = clip[:f], clip[f:]
        masks = np.ones((f, s, s, 1), np.float32)
        masks[:, s // 2:] = 0.0
        return dict(gt_frames=gt, ref_frames=ref, masked_frames=gt * masks, masks=masks,
                    audio_embeds=rng.standard_normal((f, AUDIO_WINDOW, self.audio_dim)).astype(np.float32),
                    mel=rng.standard_normal(MEL_SHAPE + (1,)).astype(np.float32))

    def batch(self, step: int) -> dict[str, np.ndarray]:
        step = 0 if self.fixed else step
        first = step * self.batch_size * self.process_count + self.process_index * self.batch_size
        samples = [self.sample(first + i) for i in range(self.batch_size)]
        return {k: np.stack([smp[k] for smp in samples]) for k in samples[0]}

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        out = self.batch(self.next_step)
        self.next_step += 1
        return out

    def get_state(self) -> dict[str, int]:
        return {"next_step": self.next_step}

    def set_state(self, state: Mapping[str, Any]) -> None:
        self.next_step = int(state["next_step"])


class SyntheticSyncNetSource(SyntheticUNetSource):
    """SyncNet batches: ``frames`` (b, f, s, s, 3), ``mel`` (b, 80, 52, 1), ``labels`` (b,);
    every other sample is in sync (label 1), the rest shifted (label 0)."""

    def __init__(self, config: Mapping[str, Any], process_index: int = 0, process_count: int = 1,
                 seed: int | None = None, fixed: bool = False, offset: int = 0):
        data = config["data"]
        self.batch_size = int(data["batch_size"])
        self.num_frames = int(data["num_frames"])
        self.resolution = int(data["resolution"])
        self.seed = int(config["run"]["seed"] if seed is None else seed)
        self.process_index, self.process_count = process_index, process_count
        self.fixed, self.offset, self.next_step = fixed, offset, 0

    def sample(self, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([self.seed, index + self.offset])
        return dict(frames=_smooth_frames(rng, self.num_frames, self.resolution),
                    mel=rng.standard_normal(MEL_SHAPE + (1,)).astype(np.float32),
                    labels=np.float32(index % 2 == 0))
