"""LatentSync inference: stages (input checks, face pass, audio windows, chunked VAE/UNet work,
restore) and ``run_inference`` tying them together; ``infer.py`` is the command line."""

from lipsync_jax.pipeline.chunk import ChunkGenerator, decode_and_paste, encode_faces
from lipsync_jax.pipeline.errors import CheckpointMismatchError, InferenceError, InputError
from lipsync_jax.pipeline.faces import FaceTrack, nearest_face_indices, track_faces
from lipsync_jax.pipeline.frames import ForwardFrames, FrameSpill
from lipsync_jax.pipeline.inputs import CheckedInputs, check_inputs
from lipsync_jax.pipeline.models import LipsyncModels, build_models, check_param_tree
from lipsync_jax.pipeline.restore import paste_generated_face
from lipsync_jax.pipeline.run import InferenceOptions, InferenceResult, prepare_audio, run_inference
from lipsync_jax.pipeline.timeline import chunk_bounds, output_frame_count, pad_to_chunk, pingpong_indices
from lipsync_jax.pipeline.timing import StageTimer

__all__ = [
    "ChunkGenerator", "decode_and_paste", "encode_faces", "CheckpointMismatchError", "InferenceError", "InputError",
    "FaceTrack", "nearest_face_indices", "track_faces", "ForwardFrames", "FrameSpill", "CheckedInputs",
    "check_inputs", "LipsyncModels", "build_models", "check_param_tree", "paste_generated_face",
    "InferenceOptions", "InferenceResult", "prepare_audio", "run_inference", "chunk_bounds", "output_frame_count",
    "pad_to_chunk", "pingpong_indices", "StageTimer",
]
