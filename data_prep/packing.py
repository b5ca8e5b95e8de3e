"""Packing the per-source clip files into the dataset's shards, one shard at a time.

The local path packs sequentially (``records.write_dataset``); the Beam runner writes shards
in parallel from the plan below. Both give the same shards: sources in ``source key`` order,
each source's clips in their file's order, cut every ``records_per_shard`` records.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

Slice = tuple[str, int, int]  # (path of a source's clips file, first record, end record)


def shard_plan(files: Sequence[tuple[str, int]], records_per_shard: int) -> list[list[Slice]]:
    """``files``: (clips file, record count) in dataset order -> per shard, the slices it holds."""
    if records_per_shard < 1:
        raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    shards: list[list[Slice]] = []
    current: list[Slice] = []
    room = records_per_shard
    for path, count in files:
        begin = 0
        while begin < count:
            take = min(room, count - begin)
            current.append((path, begin, begin + take))
            begin += take
            room -= take
            if room == 0:
                shards.append(current)
                current, room = [], records_per_shard
    if current or not shards:
        shards.append(current)
    return shards


def read_slice(path: str, begin: int, end: int) -> list[bytes]:
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path)
    try:
        return list(reader.read(begin, end)) if end > begin else []
    finally:
        reader.close()


def write_shard(folder: str, name: str, index: int, num_shards: int, slices: Sequence[Slice]) -> tuple[int, int, int]:
    """Write one shard of the plan into ``folder``; returns (index, records, bytes)."""
    from lipsync_jax.data import records

    items = [item for path, begin, end in slices for item in read_slice(path, begin, end)]
    records.write_records(records.shard_file(folder, name, index, num_shards), items)
    return index, len(items), sum(len(b) for b in items)


def staging_dir(final: str, tag: str) -> str:
    return f"{final}.staging-{tag}"


def finish_dataset(staging: str, final: str, name: str, version: str, written: Sequence[tuple[int, int, int]]) -> int:
    """dataset_info for the written shards (any order), then swap the folder in; returns records."""
    from lipsync_jax.data import records

    written = sorted(written)
    records.write_dataset_info(staging, final, name=name, version=version,
                               shard_lengths=[n for _, n, _ in written], num_bytes=sum(b for _, _, b in written))
    records.swap_in(staging, final)
    return sum(n for _, n, _ in written)


def clips_files(work_dir: str, markers: Sequence[dict], clips_file: str) -> list[tuple[str, int]]:
    """(clips file, count) of the finished sources with clips, in dataset (source key) order."""
    kept = sorted((m for m in markers if m and m.get("status") == "done" and m.get("num_clips")),
                  key=lambda m: m["key"])
    return [(os.path.join(work_dir, m["key"], clips_file), int(m["num_clips"])) for m in kept]
