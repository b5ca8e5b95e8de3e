"""Fill the loaders' audio caches ahead of training (Whisper embeddings and SyncNet mel).

    python -m lipsync_jax.data.precompute --data_dir data/clips --whisper_params checkpoints/whisper/tiny.pt \
        --audio_embeds_cache_dir cache/audio_embeds --audio_mel_cache_dir cache/audio_mel \
        [--shard_index 0 --shard_count 8]

Without it every clip pays the Whisper encoder the first time a loader worker meets it (seconds
per clip on CPU); with it the loader only reads ``.npy`` files. Entries are keyed by audio
content and encoder params (``lipsync_jax.audio.FeatureCache``), so the caches are the same ones
``unet_loader(..., audio_embeds_cache_dir=..., audio_mel_cache_dir=...)`` reads. Several hosts
can share the work with ``--shard_index/--shard_count`` (record i goes to shard i % count).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from lipsync_jax.data.audio_features import SyncNetMel, WhisperFeatures
from lipsync_jax.data.records import ClipDataSource, record_to_float_audio


def precompute(data_dir: str, whisper_params: str | None, audio_embeds_cache_dir: str | None,
               audio_mel_cache_dir: str | None, shard_index: int = 0, shard_count: int = 1,
               whisper_dims=None) -> int:
    """Compute and cache the features of this shard's records; returns how many records."""
    source = ClipDataSource(data_dir)
    embedder = WhisperFeatures(whisper_params, audio_embeds_cache_dir, dims=whisper_dims) if whisper_params else None
    mel = SyncNetMel(audio_mel_cache_dir) if audio_mel_cache_dir else None
    done = 0
    for index in range(shard_index, len(source), shard_count):
        audio = record_to_float_audio(source[index])
        if embedder is not None:
            embedder(audio)
        if mel is not None:
            mel(audio)
        done += 1
    return done


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lipsync_jax.data.precompute", description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--whisper_params", default=None, help="converted folder, official checkpoint, or tiny_random")
    p.add_argument("--audio_embeds_cache_dir", default=None)
    p.add_argument("--audio_mel_cache_dir", default=None)
    p.add_argument("--shard_index", type=int, default=0)
    p.add_argument("--shard_count", type=int, default=1)
    args = p.parse_args(argv)
    if bool(args.whisper_params) != bool(args.audio_embeds_cache_dir):
        p.error("--whisper_params and --audio_embeds_cache_dir go together")
    if not args.audio_embeds_cache_dir and not args.audio_mel_cache_dir:
        p.error("nothing to do: give --audio_embeds_cache_dir and/or --audio_mel_cache_dir")
    start = time.time()
    count = precompute(args.data_dir, args.whisper_params, args.audio_embeds_cache_dir, args.audio_mel_cache_dir,
                       args.shard_index, args.shard_count)
    print(f"cached audio features of {count} clips in {time.time() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
