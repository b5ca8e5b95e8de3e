"""A job's audio: 16 kHz samples, Whisper embeddings of the whole clip, each output frame's window.

``load_job_audio`` reads the samples (cut to ``max_seconds``); ``audio_plan`` computes the
embeddings (50 rows per second) and each output frame's window rows; the output has round(audio
seconds x fps) frames. ``predicted_frames`` gives that count from the audio's length alone, so
the engine can start the face pre-pass while Whisper runs. ``lane_audio_plans``: with several
faces (``SyncJob.face_audio``), each lane's own audio cut to / padded with silence to the
soundtrack's length.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from lipsync_jax.audio import frame_chunk_indices, gather_frame_windows, load_audio
from lipsync_jax.audio.features import DEFAULT_INFERENCE_WINDOWS, AudioFeatureExtractor
from lipsync_jax.audio.load import TARGET_RATE
from lipsync_jax.audio.whisper_mel import FRAMES_PER_EMBEDDING, HOP_LENGTH
from lipsync_jax.pipeline.errors import InputError
from lipsync_jax.pipeline.timeline import output_frame_count


@dataclasses.dataclass
class AudioPlan:
    samples: np.ndarray  # (n,) float32, 16 kHz
    embeddings: np.ndarray  # (T, layers, d) Whisper rows, 50 per second
    window_rows: np.ndarray  # (N, 10) rows of each video frame's window
    num_frames: int  # output frames

    def windows(self, frame_indices: np.ndarray) -> np.ndarray:
        """(k, 10 * layers, d) audio windows of these output frames."""
        return gather_frame_windows(self.embeddings, self.window_rows[frame_indices])


def load_job_audio(path: str, fps: float, max_seconds: float | None) -> np.ndarray:
    """The job's 16 kHz samples, cut to ``max_seconds``; ``InputError`` when shorter than a frame."""
    samples = load_audio(path)
    if max_seconds is not None:
        samples = samples[:int(round(max_seconds * TARGET_RATE))]
    if len(samples) < TARGET_RATE / fps:
        cut = f" (cut to max_seconds {max_seconds:g})" if max_seconds is not None else ""
        raise InputError(f"audio {path}: shorter than one video frame ({len(samples) / TARGET_RATE:.3f} s{cut})")
    return samples


def audio_plan(models, samples: np.ndarray, fps: float, windows: str = DEFAULT_INFERENCE_WINDOWS) -> AudioPlan:
    """Whisper embeddings of the whole clip (cut into Whisper windows the ``windows`` way: ``sliding``
    or ``latentsync``, audio/windows.py) and each output frame's window rows."""
    embeddings = models.audio.clip_embeddings(samples, windows)
    window_rows = frame_chunk_indices(len(embeddings), fps, models.audio_feat_length)
    num_frames = output_frame_count(len(samples), TARGET_RATE, fps, len(window_rows))
    return AudioPlan(samples, embeddings, window_rows, num_frames)


def prepare_audio(models, path: str, fps: float, max_seconds: float | None = None,
                  windows: str = DEFAULT_INFERENCE_WINDOWS) -> AudioPlan:
    return audio_plan(models, load_job_audio(path, fps, max_seconds), fps, windows)


def predicted_frames(models, samples: np.ndarray, fps: float) -> int | None:
    """The job's output frame count from the audio's length alone (Whisper keeps n // 160 mel
    frames, // 2 rows per 30 s window: ``audio.features``), or None for another audio model."""
    audio = models.audio
    if not isinstance(audio, AudioFeatureExtractor):
        return None
    total, window = len(samples) // HOP_LENGTH, int(audio.config.n_frames)
    rows = sum(min(window, total - start) // FRAMES_PER_EMBEDDING for start in range(0, total, window))
    if rows < 1:
        return None
    windows = frame_chunk_indices(rows, fps, models.audio_feat_length)
    return output_frame_count(len(samples), TARGET_RATE, fps, len(windows))


def lane_audio_plans(models, lane_audio: list[str | None], main: AudioPlan, fps: float,
                     windows: str = DEFAULT_INFERENCE_WINDOWS) -> list[AudioPlan]:
    """One ``AudioPlan`` per lane: the job's (``main``, for a lane without its own audio) or the
    lane's own audio, cut to / padded with silence to the soundtrack's length, so every lane has a
    window for every output frame."""
    plans = []
    for path in lane_audio:
        if path is None:
            plans.append(main)
            continue
        samples = load_audio(path)
        samples = np.pad(samples[:len(main.samples)], (0, max(0, len(main.samples) - len(samples))))
        embeddings = models.audio.clip_embeddings(samples, windows)
        rows = frame_chunk_indices(len(embeddings), fps, models.audio_feat_length)
        if len(rows) < main.num_frames:
            raise InputError(f"audio {path}: gives {len(rows)} windows for {main.num_frames} frames")
        plans.append(AudioPlan(samples, embeddings, rows, main.num_frames))
    return plans
