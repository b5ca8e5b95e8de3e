"""Audio front end: loading, Whisper log-mel + encoder features, per-frame windows, SyncNet mel."""

from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.audio.features import AudioFeatureExtractor, frame_chunk_indices, gather_frame_windows
from lipsync_jax.audio.load import AudioLoadError, load_audio
from lipsync_jax.audio.syncnet_mel import mel_window_length, syncnet_mel, syncnet_mel_crop
from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram, mel_windows

__all__ = ["AudioFeatureExtractor", "AudioLoadError", "FeatureCache", "WhisperEncoder", "WhisperEncoderConfig",
           "frame_chunk_indices", "gather_frame_windows", "load_audio", "log_mel_spectrogram", "mel_window_length",
           "mel_windows", "syncnet_mel", "syncnet_mel_crop"]
