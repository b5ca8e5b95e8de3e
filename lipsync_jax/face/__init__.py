"""Face pipeline: landmarks, alignment to LatentSync's template, the mouth mask, restore."""

from lipsync_jax.face.align import (AlignedFace, AlignTemplate, FaceAligner, TranslationSmoother, resize_face,
                                    similarity_transform, warp_face)
from lipsync_jax.face.errors import FaceBackendError, FaceError, FaceInputError, NoFaceError
from lipsync_jax.face.landmarks import (FaceLandmarker, InsightFaceLandmarker, MediaPipeLandmarker,
                                        make_landmarker)
from lipsync_jax.face.mask import load_fixed_mask
from lipsync_jax.face.restore import paste_back, resize_to_crop, restore_face
from lipsync_jax.face.tracker import FaceTracker, align_video

__all__ = [
    "AlignedFace", "AlignTemplate", "FaceAligner", "TranslationSmoother", "resize_face", "similarity_transform",
    "warp_face", "FaceBackendError", "FaceError", "FaceInputError", "NoFaceError", "FaceLandmarker",
    "InsightFaceLandmarker", "MediaPipeLandmarker", "make_landmarker", "load_fixed_mask", "paste_back",
    "resize_to_crop", "restore_face", "FaceTracker", "align_video",
]
