"""SyncNet accuracy of a StableSyncNet on a clip dataset, as LatentSync's eval/eval_syncnet_acc.py
measures it: the fraction of audio-visual pairs classified correctly, where a pair counts as
predicted "in sync" when the cosine similarity of its visual and audio embeddings exceeds the
threshold (0.5, the SyncNet training loss's decision point).

Pairs come from the SyncNet training loader (``lipsync_jax.data.syncnet_loader``) over a clip
dataset written by ``python -m data_prep``: per sampled clip a 16-frame window and the SyncNet
mel of the same window (positive, label 1) or of a window elsewhere in the clip (negative,
label 0), chosen at random (about half each), seeded so the same seed gives the same pairs.
Faces are scaled to [-1, 1], the lower half is taken, frames are stacked on channels, exactly as
in training. Reported: the overall accuracy and separately the accuracy on in-sync and on
off-sync pairs (a SyncNet that calls everything "in sync" shows 1.0 / 0.0 there), and the mean
similarity per label.

    from lipsync_jax.eval.sync_eval import load_syncnet
    from lipsync_jax.eval.syncnet_acc import syncnet_accuracy
    syncnet = load_syncnet("checkpoints/jax/syncnet")
    result = syncnet_accuracy(syncnet, "data/val_clips", num_samples=2048)
    result.accuracy, result.in_sync_accuracy, result.off_sync_accuracy

Latent-space SyncNets (``syncnet_16_latent``) need the VAE encoder first and are not handled here.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.eval.sync_eval import LoadedSyncNet, SyncEvalError

DEFAULT_THRESHOLD = 0.5


@dataclasses.dataclass(frozen=True)
class SyncNetAccuracy:
    accuracy: float  # fraction of pairs classified correctly
    in_sync_accuracy: float  # ... among in-sync pairs (label 1); NaN without any
    off_sync_accuracy: float  # ... among off-sync pairs (label 0); NaN without any
    num_pairs: int
    num_in_sync: int
    num_off_sync: int
    mean_similarity_in_sync: float
    mean_similarity_off_sync: float
    threshold: float
    data_dir: str
    syncnet: str  # LoadedSyncNet.source
    random_init: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@functools.partial(jax.jit, static_argnames=("model", "lower_half"))
def pair_similarity(model: Any, params: Any, frames: jax.Array, mel: jax.Array, lower_half: bool = True) -> jax.Array:
    """Cosine similarity (b,) of (b, f, s, s, 3) faces in [-1, 1] with (b, 80, 52, 1) mels."""
    from lipsync_jax.losses.sync import cosine_similarity
    from lipsync_jax.models.syncnet import stack_frames

    images = stack_frames(frames.astype(jnp.float32), lower_half=lower_half)
    vision, audio = model.apply({"params": params}, images, mel.astype(jnp.float32), True)
    return cosine_similarity(vision, audio)


def syncnet_accuracy(syncnet: LoadedSyncNet, data_dir: str, *, num_samples: int = 1024, batch_size: int = 16,
                     seed: int = 0, threshold: float = DEFAULT_THRESHOLD, lower_half: bool = True,
                     progress: bool = True) -> SyncNetAccuracy:
    """Accuracy of ``syncnet`` on ``num_samples`` pairs drawn from the clip dataset ``data_dir``
    (fewer if the dataset runs out: each clip is sampled at most ``4 * ceil(num_samples / clips) + 1``
    times, clips too short for a pair never). Raises SyncEvalError / DatasetFormatError naming the
    folder on unusable input."""
    from tqdm import tqdm

    from lipsync_jax.data.loader import syncnet_loader
    from lipsync_jax.data.records import ClipDataSource

    if num_samples < 1 or batch_size < 1:
        raise SyncEvalError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    in_channels = int(syncnet.model.config.visual_encoder.in_channels)
    if in_channels % 3:
        raise SyncEvalError(f"{syncnet.source}: the visual encoder takes {in_channels} channels, not RGB frames "
                            "stacked on channels (latent-space SyncNets are not supported here)")
    num_frames = in_channels // 3
    source = ClipDataSource(data_dir)
    if len(source) == 0:
        raise SyncEvalError(f"{data_dir}: the clip dataset has no clips")
    batch_size = min(batch_size, num_samples)
    loader = syncnet_loader(source, batch_size=batch_size, num_frames=num_frames, resolution=syncnet.resolution,
                            seed=seed, shard_index=0, shard_count=1, worker_count=0,
                            num_epochs=4 * math.ceil(num_samples / len(source)) + 1)
    similarities, labels = [], []
    with tqdm(total=num_samples, desc="SyncNet pairs", unit="pair", disable=not progress) as bar:
        for batch in loader:
            keep = min(batch_size, num_samples - len(labels))
            sims = pair_similarity(syncnet.model, syncnet.params, jnp.asarray(batch["frames"]),
                                   jnp.asarray(batch["mel"]), lower_half)
            similarities.extend(np.asarray(sims, np.float64)[:keep].tolist())
            labels.extend(np.asarray(batch["labels"])[:keep].astype(int).tolist())
            bar.update(keep)
            if len(labels) >= num_samples:
                break
    if not labels:
        raise SyncEvalError(f"{data_dir}: no clip is long enough for a SyncNet pair ({num_frames} frames needs clips "
                            f"of at least {2 * num_frames} frames)")
    return accuracy_from_similarities(np.array(similarities), np.array(labels), threshold, data_dir=data_dir,
                                      syncnet=syncnet.source, random_init=syncnet.random_init)


def accuracy_from_similarities(similarities: np.ndarray, labels: np.ndarray, threshold: float = DEFAULT_THRESHOLD,
                               **info: Any) -> SyncNetAccuracy:
    """Accuracy figures of (n,) similarities against (n,) 0/1 labels (predicted in sync: > threshold)."""
    similarities, labels = np.asarray(similarities, np.float64), np.asarray(labels).astype(int)
    correct = (similarities > threshold).astype(int) == labels
    positive, negative = labels == 1, labels == 0

    def mean(values: np.ndarray) -> float:
        return float(np.mean(values)) if values.size else float("nan")

    return SyncNetAccuracy(accuracy=mean(correct), in_sync_accuracy=mean(correct[positive]),
                           off_sync_accuracy=mean(correct[negative]), num_pairs=int(labels.size),
                           num_in_sync=int(positive.sum()), num_off_sync=int(negative.sum()),
                           mean_similarity_in_sync=mean(similarities[positive]),
                           mean_similarity_off_sync=mean(similarities[negative]), threshold=float(threshold),
                           data_dir=str(info.get("data_dir", "")), syncnet=str(info.get("syncnet", "")),
                           random_init=bool(info.get("random_init", False)))
