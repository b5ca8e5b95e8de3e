"""Benchmark: UNet training batches per second from a clip dataset, for several worker counts.

    python bench/bench_loader.py [--workers 0 1 2] [--batch_size 4] [--resolution 256] [--batches 20]

Builds a synthetic dataset (``--clips`` clips of 250 frames, smooth random images JPEG-encoded
at quality 95 like data_prep's, 10 s of audio each) in a temp folder, and pre-fills the audio
caches, so the loader does what it does in steady-state training: read a record, decode 32
JPEGs, mask and normalise, load the cached Whisper embeddings (real Whisper-tiny size:
(500, 5, 384) per clip) and SyncNet mel, gather the per-frame windows, batch. The first
``--warmup`` batches (worker start-up) are not timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np

from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.data import records
from lipsync_jax.data.audio_features import MEL_IDENTITY, SyncNetMel
from lipsync_jax.data.loader import make_loader
from lipsync_jax.data.transforms import UNetSample

EMBED_IDENTITY = "bench-whisper-tiny-shape"


class CachedEmbeddings:
    """Whisper embeddings from the cache only (what a warm ``WhisperFeatures`` cache costs)."""

    def __init__(self, cache_dir: str):
        self.cache = FeatureCache(cache_dir)

    def __call__(self, audio):
        def missing():
            raise RuntimeError("bench: embeddings cache was not pre-filled")
        return self.cache.get_or_compute(audio, EMBED_IDENTITY, missing)


def build(root: str, clips: int, frames: int, resolution: int) -> None:
    rng = np.random.default_rng(0)
    feature_dict = records.features()
    embed_cache, mel_cache = FeatureCache(os.path.join(root, "embeds")), FeatureCache(os.path.join(root, "mel"))
    serialized = []
    for c in range(clips):
        base = rng.integers(0, 256, (frames // 25 + 2, resolution // 16, resolution // 16, 3)).astype(np.float32)
        jpegs = []
        for i in range(frames):
            a, t = divmod(i, 25)
            img = base[a] * (1 - t / 25) + base[a + 1] * (t / 25)
            img = np.repeat(np.repeat(img, 16, axis=0), 16, axis=1)
            jpegs.append(records.encode_jpeg(img.astype(np.uint8)))
        audio = records.audio_to_int16(0.1 * rng.standard_normal(frames * 640))
        float_audio = records.audio_to_float(audio)
        embed_cache.get_or_compute(float_audio, EMBED_IDENTITY,
                                   lambda: rng.standard_normal((frames * 2, 5, 384)).astype(np.float32))
        mel_cache.get_or_compute(float_audio, MEL_IDENTITY, lambda audio=float_audio: SyncNetMel()(audio))
        record = records.ClipRecord(f"bench{c}", jpegs, audio, 25.0, resolution, "synthetic", resolution,
                                    resolution, 0.0)
        serialized.append(records.serialize(record, feature_dict))
    records.write_dataset(root, [serialized])


def run(root: str, workers: int, batch_size: int, resolution: int, batches: int, warmup: int) -> float:
    transform = UNetSample(16, resolution, embedder=CachedEmbeddings(os.path.join(root, "embeds")),
                           mel=SyncNetMel(os.path.join(root, "mel")))
    loader = make_loader(root, transform, batch_size, seed=0, shard_index=0, shard_count=1, worker_count=workers)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        batch = next(it)
    elapsed = time.perf_counter() - start
    assert batch["gt_frames"].shape == (batch_size, 16, resolution, resolution, 3)
    return batches / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cpus, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        build(root, args.clips, 250, args.resolution)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(root) for f in fs
                   if "array_record" in f) / args.clips / 2**20
        print(f"dataset: {args.clips} clips x 250 frames at {args.resolution} px, {size:.1f} MiB per record, "
              f"built in {time.perf_counter() - start:.1f} s")
        print("| workers | batch | batches/s | samples/s |\n|---|---|---|---|")
        for workers in args.workers:
            rate = run(root, workers, args.batch_size, args.resolution, args.batches, args.warmup)
            print(f"| {workers} | {args.batch_size} | {rate:.2f} | {rate * args.batch_size:.1f} |", flush=True)


if __name__ == "__main__":
    main()
