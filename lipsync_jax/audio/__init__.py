"""Audio front end: loading, Whisper log-mel + encoder features (LatentSync's or sliding 30 s windows),
per-frame windows, SyncNet mel."""

from lipsync_jax.audio.cache import FeatureCache
from lipsync_jax.audio.features import (
                                        DEFAULT_INFERENCE_WINDOWS,
                                        AudioFeatureExtractor,
                                        frame_chunk_indices,
                                        gather_frame_windows,
)
from lipsync_jax.audio.load import AudioLoadError, load_audio
from lipsync_jax.audio.syncnet_mel import mel_window_length, syncnet_mel, syncnet_mel_crop
from lipsync_jax.audio.whisper_encoder import WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.audio.whisper_mel import log_mel_spectrogram, mel_windows
from lipsync_jax.audio.windows import AUDIO_WINDOWS, check_audio_windows

__all__ = ["AUDIO_WINDOWS", "DEFAULT_INFERENCE_WINDOWS", "AudioFeatureExtractor", "AudioLoadError", "FeatureCache",
           "WhisperEncoder", "WhisperEncoderConfig", "check_audio_windows", "frame_chunk_indices",
           "gather_frame_windows", "load_audio", "log_mel_spectrogram", "mel_window_length", "mel_windows",
           "syncnet_mel", "syncnet_mel_crop"]
