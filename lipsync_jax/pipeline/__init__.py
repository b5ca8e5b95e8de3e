"""LatentSync inference: stages (input checks, face pass, audio windows, the device program per
batch of chunks, restore), the streaming ``LipsyncEngine`` tying them together and
``run_inference`` (one job); ``infer.py`` is the command line."""

from lipsync_jax.pipeline.chunk import ChunkGenerator, decode_and_paste, encode_faces
from lipsync_jax.pipeline.compile_cache import default_compile_cache_dir, enable_compile_cache
from lipsync_jax.pipeline.engine import (EngineOptions, FacePass, InferenceJob, InferenceResult, LipsyncEngine,
                                         default_chunk_batch, default_face_pass)
from lipsync_jax.pipeline.errors import CheckpointMismatchError, InferenceError, InputError
from lipsync_jax.pipeline.faces import FaceTrack, nearest_face_indices, track_faces
from lipsync_jax.pipeline.frames import ForwardFrames, FrameSpill
from lipsync_jax.pipeline.inputs import CheckedInputs, check_inputs
from lipsync_jax.pipeline.models import LipsyncModels, build_models, check_param_tree
from lipsync_jax.pipeline.program import ChunkProgram, data_mesh, replicate, start_noise
from lipsync_jax.pipeline.restore import paste_generated_face
from lipsync_jax.pipeline.run import InferenceOptions, engine_for, prepare_audio, run_inference
from lipsync_jax.pipeline.store import FrameStore, SourceRecord
from lipsync_jax.pipeline.timeline import chunk_bounds, output_frame_count, pad_to_chunk, pingpong_indices
from lipsync_jax.pipeline.timing import StageTimer

__all__ = [
    "ChunkGenerator", "decode_and_paste", "encode_faces", "default_compile_cache_dir", "enable_compile_cache",
    "EngineOptions", "FacePass", "InferenceJob", "InferenceResult", "LipsyncEngine", "default_chunk_batch",
    "default_face_pass", "CheckpointMismatchError", "InferenceError", "InputError", "FaceTrack",
    "nearest_face_indices", "track_faces", "ForwardFrames", "FrameSpill", "CheckedInputs", "check_inputs",
    "LipsyncModels", "build_models", "check_param_tree", "ChunkProgram", "data_mesh", "replicate", "start_noise",
    "paste_generated_face", "InferenceOptions", "engine_for", "prepare_audio", "run_inference", "FrameStore",
    "SourceRecord", "chunk_bounds", "output_frame_count", "pad_to_chunk", "pingpong_indices", "StageTimer",
]
