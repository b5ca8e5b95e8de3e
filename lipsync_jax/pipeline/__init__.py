"""LatentSync inference: the job description (job.py), the engine (engine.py) and its stages
(input checks, face pass, audio plan, the device program per batch of chunks, restore).

    from lipsync_jax.pipeline import LipsyncEngine, RunOptions, Sampling, SyncJob, build_models
    engine = LipsyncEngine(build_models(config, ...), RunOptions())
    engine.run(SyncJob("in.mp4", "speech.wav", "out.mp4"), Sampling(steps=20))

The serving edges (infer.py, the web app, batch, live mode) go through
``lipsync_jax.serving.LipsyncService``, which builds the engine from the same descriptions.
"""

from lipsync_jax.pipeline.audio_plan import AudioPlan, prepare_audio
from lipsync_jax.pipeline.chunk import ChunkGenerator, decode_and_paste, encode_faces
from lipsync_jax.pipeline.compile_cache import CompileMonitor, default_compile_cache_dir, enable_compile_cache
from lipsync_jax.pipeline.engine import LipsyncEngine
from lipsync_jax.pipeline.errors import CheckpointMismatchError, InferenceError, InputError
from lipsync_jax.pipeline.inputs import CheckedInputs, check_inputs
from lipsync_jax.pipeline.job import InferenceResult, JobDefaults, OptionError, Request, RunOptions, Sampling, SyncJob
from lipsync_jax.pipeline.job_runner import JobHooks
from lipsync_jax.pipeline.models import LipsyncModels, abstract_models, build_models
from lipsync_jax.pipeline.timing import StageTimer

__all__ = [
    "AudioPlan", "prepare_audio", "ChunkGenerator", "decode_and_paste", "encode_faces", "CompileMonitor",
    "default_compile_cache_dir", "enable_compile_cache", "LipsyncEngine", "CheckpointMismatchError", "InferenceError",
    "InputError", "CheckedInputs", "check_inputs", "InferenceResult", "JobDefaults", "OptionError", "Request",
    "RunOptions", "Sampling", "SyncJob", "JobHooks", "LipsyncModels", "abstract_models", "build_models", "StageTimer",
]
