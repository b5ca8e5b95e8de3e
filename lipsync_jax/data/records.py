"""The clip dataset format: ArrayRecord shards registered as a tensorflow-datasets dataset.

One record = one aligned talking-face clip (5-10 s at 25 fps, written by ``python -m data_prep``):

    clip_id          text     "<source key>-<start frame>", unique in the dataset
    frames           sequence of bytes, one JPEG (quality 95) per frame, RGB, resolution^2 px
    audio            int16 (n,), 16 kHz mono PCM covering the frames (640 samples per frame)
    audio_sample_rate, fps, resolution, num_frames, source_width, source_height
    source           text     path of the source video
    start_time       float    seconds into the source video of frame 0
    sync_score       float    SyncNet cosine similarity at the chosen offset (NaN: not scored)
    sync_confidence  float    that minus the median over offsets (NaN: not scored)
    sync_offset      int      audio shift applied, in frames (0 when not scored)

Why per-frame JPEG: a training sample needs 32 of a clip's ~250 frames, so frames must be
readable without decoding the clip; JPEG at quality 95 is visually lossless for faces at
~10x less space than raw or PNG, and decodes in ~1 ms per 256 px frame (PNG is 3-5x larger
and slower). Audio is int16 (half of float32, and the sources are 16-bit anyway).

Layout (what ``tfds.builder_from_directory(dir)`` and ``tfds.data_source(name,
data_dir=root)`` expect, no TensorFlow needed)::

    root/<name>/<version>/dataset_info.json
    root/<name>/<version>/features.json
    root/<name>/<version>/<name>-train.array_record-00000-of-0000N

Records are written with ``group_size:1`` so every record is individually seekable. The
serialisation is tfds' own (``FeaturesDict.serialize_example``), so tfds decodes it.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np

DEFAULT_NAME = "lipsync_clips"
DEFAULT_VERSION = "1.0.0"
SPLIT = "train"
WRITER_OPTIONS = "group_size:1"
JPEG_QUALITY = 95
AUDIO_SAMPLE_RATE = 16000


class DatasetFormatError(ValueError):
    """A dataset folder or record that does not follow the clip format."""


def features():
    """The tfds FeaturesDict of one clip record (import of tfds deferred: it is slow)."""
    import tensorflow_datasets as tfds

    f = tfds.features
    return f.FeaturesDict({
        "clip_id": f.Text(),
        "frames": f.Sequence(f.Tensor(shape=(), dtype=np.object_)),
        "audio": f.Tensor(shape=(None,), dtype=np.int16),
        "audio_sample_rate": f.Scalar(dtype=np.int32),
        "fps": f.Scalar(dtype=np.float32),
        "resolution": f.Scalar(dtype=np.int32),
        "num_frames": f.Scalar(dtype=np.int32),
        "source": f.Text(),
        "source_width": f.Scalar(dtype=np.int32),
        "source_height": f.Scalar(dtype=np.int32),
        "start_time": f.Scalar(dtype=np.float32),
        "sync_score": f.Scalar(dtype=np.float32),
        "sync_confidence": f.Scalar(dtype=np.float32),
        "sync_offset": f.Scalar(dtype=np.int32),
    })


@dataclasses.dataclass
class ClipRecord:
    """One clip before serialisation."""

    clip_id: str
    frames: list[bytes]  # JPEG per frame
    audio: np.ndarray  # (n,) int16
    fps: float
    resolution: int
    source: str
    source_width: int
    source_height: int
    start_time: float
    sync_score: float = math.nan
    sync_confidence: float = math.nan
    sync_offset: int = 0
    audio_sample_rate: int = AUDIO_SAMPLE_RATE

    def to_example(self) -> dict[str, Any]:
        return {
            "clip_id": self.clip_id, "frames": list(self.frames), "audio": np.asarray(self.audio, np.int16),
            "audio_sample_rate": self.audio_sample_rate, "fps": self.fps, "resolution": self.resolution,
            "num_frames": len(self.frames), "source": self.source, "source_width": self.source_width,
            "source_height": self.source_height, "start_time": self.start_time, "sync_score": self.sync_score,
            "sync_confidence": self.sync_confidence, "sync_offset": self.sync_offset,
        }


# ---- pixels and audio <-> bytes -------------------------------------------------------------

def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """RGB uint8 (h, w, 3) -> JPEG bytes."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise DatasetFormatError(f"JPEG encoding failed for a frame of shape {frame.shape}")
    return buf.tobytes()


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes -> RGB uint8 (h, w, 3)."""
    import cv2

    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise DatasetFormatError(f"a frame of {len(data)} bytes is not a decodable JPEG")
    return bgr[..., ::-1]


def decode_frames(frames: list[bytes], indices: Iterable[int]) -> np.ndarray:
    """Decode only the frames at ``indices`` -> (len, h, w, 3) uint8."""
    return np.stack([decode_jpeg(frames[int(i)]) for i in indices])


def audio_to_int16(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 PCM (full scale 32768, clipped)."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def audio_to_float(audio: np.ndarray) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1)."""
    return np.asarray(audio, np.float32) / 32768.0


# ---- writing --------------------------------------------------------------------------------

def serialize(record: ClipRecord, feature_dict=None) -> bytes:
    return (feature_dict or features()).serialize_example(record.to_example())


def write_records(path: str, serialized: Iterable[bytes]) -> int:
    """Write serialised records to one ArrayRecord file (atomically: temp + rename). Returns
    the number written."""
    from array_record.python import array_record_module

    tmp = f"{path}.tmp-{os.getpid()}"
    writer = array_record_module.ArrayRecordWriter(tmp, WRITER_OPTIONS)
    count = 0
    try:
        for item in serialized:
            writer.write(item)
            count += 1
    finally:
        writer.close()
    os.replace(tmp, path)
    return count


def read_records(path: str) -> Iterator[bytes]:
    """Serialised records of one ArrayRecord file, in order."""
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(path)
    try:
        n = reader.num_records()
        for start in range(0, n, 64):
            yield from reader.read(start, min(start + 64, n))
    finally:
        reader.close()


def dataset_dir(root: str, name: str = DEFAULT_NAME, version: str = DEFAULT_VERSION) -> str:
    return os.path.join(root, name, version)


def write_dataset(root: str, serialized_groups: Iterable[Iterable[bytes]], *, name: str = DEFAULT_NAME,
                  version: str = DEFAULT_VERSION, records_per_shard: int = 256,
                  description: str = "Aligned talking-face clips for lipsync-jax") -> tuple[str, int]:
    """Pack serialised records into ``records_per_shard``-sized train shards and register them
    (dataset_info.json + features.json) under ``root/name/version``. The folder is rebuilt in a
    temp folder and swapped in, so readers never see a half-written dataset. Returns
    (dataset folder, number of records)."""
    final = dataset_dir(root, name, version)
    staging = f"{final}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    # The shard count is part of the file names: stage numbered shards, rename them at the end.
    shard_paths, shard_lengths, num_bytes = [], [], 0

    def flush(batch: list[bytes]) -> None:
        nonlocal num_bytes
        path = os.path.join(staging, f"shard-{len(shard_paths):05d}")
        write_records(path, batch)
        shard_paths.append(path)
        shard_lengths.append(len(batch))
        num_bytes += sum(len(b) for b in batch)

    pending: list[bytes] = []
    for group in serialized_groups:
        for item in group:
            pending.append(item)
            if len(pending) >= records_per_shard:
                flush(pending)
                pending = []
    if pending or not shard_paths:
        flush(pending)
    total = sum(shard_lengths)
    for index, path in enumerate(shard_paths):
        os.replace(path, shard_file(staging, name, index, len(shard_paths)))
    write_dataset_info(staging, final, name=name, version=version, shard_lengths=shard_lengths,
                       num_bytes=num_bytes, description=description)
    swap_in(staging, final)
    return final, total


def shard_file(folder: str, name: str, index: int, num_shards: int) -> str:
    """Path of train shard ``index`` of ``num_shards`` in a dataset folder (tfds' naming)."""
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(data_dir=folder, dataset_name=name, split=SPLIT,
                                             filetype_suffix="array_record")
    return os.fspath(template.sharded_filepath(shard_index=index, num_shards=num_shards))


def write_dataset_info(folder: str, final: str, *, name: str, version: str, shard_lengths: list[int],
                       num_bytes: int, description: str = "Aligned talking-face clips for lipsync-jax") -> None:
    """dataset_info.json + features.json for the train shards in ``folder`` (which will be
    moved to ``final``)."""
    import tensorflow_datasets as tfds

    template = tfds.core.ShardedFileTemplate(data_dir=folder, dataset_name=name, split=SPLIT,
                                             filetype_suffix="array_record")
    info = tfds.core.DatasetInfo(
        builder=tfds.core.DatasetIdentity(name=name, version=version, data_dir=final, module_name=""),
        features=features(), description=description)
    info.set_file_format("array_record")
    info.set_splits(tfds.core.SplitDict([tfds.core.SplitInfo(
        name=SPLIT, shard_lengths=shard_lengths, num_bytes=num_bytes, filename_template=template)]))
    info.write_to_directory(folder)


def swap_in(staging: str, final: str) -> None:
    """Replace the dataset folder ``final`` by ``staging`` (readers never see a half-written one)."""
    old = f"{final}.old-{os.getpid()}"
    if os.path.exists(final):
        os.replace(final, old)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


# ---- reading --------------------------------------------------------------------------------

_OPEN_LOCK = threading.Lock()  # one opening of a ClipDataSource at a time in a process

class ClipDataSource:
    """Random access to decoded clip records of a dataset folder (``root/name/version`` or a
    folder containing exactly one such dataset). Picklable (re-opens lazily in grain workers).
    Items are dicts of numpy values plus ``record_index`` (the index asked for); ``frames``
    stays a list of JPEG bytes (decode what you use with ``decode_frames``)."""

    def __init__(self, path: str, split: str = SPLIT):
        self.path = _find_dataset_dir(os.fspath(path))
        self.split = split
        self._source = None
        self._len = None

    def _open(self):
        # A loader's reader threads ask for their first items at once: one of them opens the
        # source (and imports tfds: concurrent first imports of its lazy modules deadlock).
        with _OPEN_LOCK:
            if self._source is None:
                import tensorflow_datasets as tfds

                try:
                    self._source = tfds.builder_from_directory(self.path).as_data_source(split=self.split)
                except Exception as e:  # noqa: BLE001 - tfds raises many types; name the folder
                    raise DatasetFormatError(f"{self.path}: cannot open as a clip dataset: {e}") from e
        return self._source

    def __len__(self) -> int:
        if self._len is None:
            self._len = len(self._open())
        return self._len

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self._open()[int(index)])
        item["record_index"] = int(index)
        return item

    def __getstate__(self):
        return {"path": self.path, "split": self.split, "_source": None, "_len": self._len}

    def __repr__(self) -> str:
        return f"ClipDataSource({self.path!r}, split={self.split!r})"


def _find_dataset_dir(path: str) -> str:
    if os.path.isfile(os.path.join(path, "dataset_info.json")):
        return path
    found = []
    for root, _, files in os.walk(path):
        if "dataset_info.json" in files and ".staging-" not in root and ".old-" not in root:
            found.append(root)
    if len(found) != 1:
        what = "no dataset_info.json" if not found else f"several datasets ({', '.join(sorted(found))})"
        raise DatasetFormatError(f"{path}: expected one clip dataset folder, found {what}")
    return found[0]


def record_to_float_audio(record: Mapping[str, Any]) -> np.ndarray:
    """The record's audio as float32 16 kHz samples."""
    rate = int(record.get("audio_sample_rate", AUDIO_SAMPLE_RATE))
    if rate != AUDIO_SAMPLE_RATE:
        raise DatasetFormatError(f"clip {record.get('clip_id')!r}: audio at {rate} Hz, expected {AUDIO_SAMPLE_RATE}")
    return audio_to_float(record["audio"])
