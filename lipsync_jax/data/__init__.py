"""Training data: the clip dataset format (records), sample windows, grain loaders."""

from lipsync_jax.data.audio_features import SyncNetMel, WhisperFeatures, load_whisper_params, tiny_random_params
from lipsync_jax.data.loader import (
                                     make_loader,
                                     shard_options,
                                     syncnet_loader,
                                     syncnet_loader_from_config,
                                     unet_loader,
                                     unet_loader_from_config,
)
from lipsync_jax.data.records import ClipDataSource, ClipRecord, DatasetFormatError, decode_frames, write_dataset
from lipsync_jax.data.transforms import SyncNetSample, UNetSample

__all__ = ["ClipDataSource", "ClipRecord", "DatasetFormatError", "SyncNetMel", "SyncNetSample", "UNetSample",
           "WhisperFeatures", "decode_frames", "load_whisper_params", "make_loader", "shard_options", "syncnet_loader",
           "syncnet_loader_from_config", "tiny_random_params", "unet_loader", "unet_loader_from_config",
           "write_dataset"]
