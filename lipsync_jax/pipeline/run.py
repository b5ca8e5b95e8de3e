"""End-to-end lip sync of one video with one audio track (the side-effecting edge).

``run_inference(models, options)`` runs one job on a ``LipsyncEngine`` (pipeline/engine.py; the
engine is kept per models + engine options, so repeated calls reuse its compiled program):

1. check both inputs and the output path (``inputs.check_inputs``), start the face backend and
   the compilation of the device program (persistent cache: a warm start loads it);
2. load the audio (16 kHz mono), Whisper embeddings for the whole clip (small: 50 rows/s), and
   the per-frame window rows; the output has round(audio seconds x fps) frames;
3. stream (pipeline/stream.py): decode the video once at ``fps``, align each frame's face, cut
   the output into 16-frame chunks (frames without a face borrow the nearest face as UNet input
   and are written unchanged), run ONE device program per batch of chunks (VAE encode, DDIM,
   decode, paste-back), restore into the full frames and H.264 encode, all overlapped; when the
   audio is longer the video loops ping-pong from a compressed (PNG) frame store;
4. mux the audio (AAC), cut to the audio's duration, into the output path.
Nothing appears at the output path unless every step succeeded; temp files are removed, also on
Ctrl-C/SIGTERM. Memory: a few chunk batches of frames, whatever the video or audio length.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np

from lipsync_jax.audio import frame_chunk_indices, gather_frame_windows, load_audio
from lipsync_jax.audio.load import TARGET_RATE
from lipsync_jax.pipeline.engine import EngineOptions, InferenceJob, InferenceResult, LipsyncEngine
from lipsync_jax.pipeline.errors import InputError
from lipsync_jax.pipeline.inputs import CheckedInputs
from lipsync_jax.pipeline.models import LipsyncModels
from lipsync_jax.pipeline.timeline import output_frame_count
from lipsync_jax.pipeline.timing import StageTimer

InferenceOptions = InferenceJob  # the job description's former name


@dataclasses.dataclass
class AudioPlan:
    samples: np.ndarray  # (n,) float32, 16 kHz
    embeddings: np.ndarray  # (T, layers, d) Whisper rows, 50 per second
    window_rows: np.ndarray  # (N, 10) rows of each video frame's window
    num_frames: int  # output frames

    def windows(self, frame_indices: np.ndarray) -> np.ndarray:
        """(k, 10 * layers, d) audio windows of these output frames."""
        return gather_frame_windows(self.embeddings, self.window_rows[frame_indices])


def prepare_audio(models: LipsyncModels, path: str, fps: float, max_seconds: float | None) -> AudioPlan:
    return audio_plan(models, load_job_audio(path, fps, max_seconds), fps)


def load_job_audio(path: str, fps: float, max_seconds: float | None) -> np.ndarray:
    """The job's 16 kHz samples, cut to ``max_seconds``; ``InputError`` when shorter than a frame."""
    samples = load_audio(path)
    if max_seconds is not None:
        samples = samples[:int(round(max_seconds * TARGET_RATE))]
    if len(samples) < TARGET_RATE / fps:
        raise InputError(f"audio {path}: shorter than one video frame ({len(samples) / TARGET_RATE:.3f} s)")
    return samples


def audio_plan(models: LipsyncModels, samples: np.ndarray, fps: float) -> AudioPlan:
    """Whisper embeddings of the whole clip and each output frame's window rows."""
    embeddings = models.audio.clip_embeddings(samples)
    window_rows = frame_chunk_indices(len(embeddings), fps, models.audio_feat_length)
    num_frames = output_frame_count(len(samples), TARGET_RATE, fps, len(window_rows))
    return AudioPlan(samples, embeddings, window_rows, num_frames)


_ENGINES: list[tuple[LipsyncModels, EngineOptions, LipsyncEngine]] = []
_ENGINES_LOCK = threading.Lock()
MAX_ENGINES = 1  # an engine holds its models' weights: keep only the last one


def engine_for(models: LipsyncModels, options: EngineOptions | None = None) -> LipsyncEngine:
    """The engine of these models and options, made once and reused (its programs stay compiled)."""
    options = options or EngineOptions()
    with _ENGINES_LOCK:
        for cached_models, cached_options, engine in _ENGINES:
            if cached_models is models and cached_options == options:
                return engine
        engine = LipsyncEngine(models, options)
        _ENGINES.append((models, options, engine))
        del _ENGINES[:-MAX_ENGINES]
        return engine


def run_inference(models: LipsyncModels, options: InferenceJob, *, checked: CheckedInputs | None = None,
                  timer: StageTimer | None = None, engine_options: EngineOptions | None = None) -> InferenceResult:
    """Lip-sync ``options.video_path`` to ``options.audio_path`` into ``options.output_path``."""
    return engine_for(models, engine_options).run(options, checked=checked, timer=timer)
