"""Face pipeline: landmarks, alignment to LatentSync's template, the mouth mask, restore, and face
tracks for multi-person videos (tracks.py; list_faces.py lists them)."""

from lipsync_jax.face.align import (
                                    AlignedFace,
                                    AlignTemplate,
                                    FaceAligner,
                                    TranslationSmoother,
                                    resize_face,
                                    similarity_transform,
                                    warp_face,
)
from lipsync_jax.face.errors import FaceBackendError, FaceError, FaceInputError, NoFaceError
from lipsync_jax.face.landmarks import (
                                    FaceDetection,
                                    FaceLandmarker,
                                    InsightFaceLandmarker,
                                    MediaPipeLandmarker,
                                    detect_faces,
                                    make_landmarker,
)
from lipsync_jax.face.mask import load_fixed_mask
from lipsync_jax.face.restore import paste_back, resize_to_crop, restore_face
from lipsync_jax.face.track_align import MultiTrackAligner, TrackFacePass, face_pass_for_tracks
from lipsync_jax.face.tracker import FaceTracker, align_video
from lipsync_jax.face.tracks import (
                                    FaceSelectionError,
                                    PersonTrack,
                                    TrackAnchorSelector,
                                    TrackBuilder,
                                    TrackLandmarker,
                                    VideoFaceTracks,
                                    build_tracks,
                                    choose_track,
                                    find_face_tracks,
                                    select_track_anchors,
)

__all__ = [
    "AlignedFace", "AlignTemplate", "FaceAligner", "TranslationSmoother", "resize_face", "similarity_transform",
    "warp_face", "FaceBackendError", "FaceError", "FaceInputError", "NoFaceError", "FaceLandmarker",
    "InsightFaceLandmarker", "MediaPipeLandmarker", "make_landmarker", "load_fixed_mask", "paste_back",
    "resize_to_crop", "restore_face", "FaceTracker", "align_video", "FaceDetection", "detect_faces",
    "FaceSelectionError", "PersonTrack", "TrackAnchorSelector", "TrackBuilder", "TrackLandmarker", "VideoFaceTracks",
    "build_tracks", "choose_track", "find_face_tracks", "select_track_anchors", "MultiTrackAligner",
    "TrackFacePass", "face_pass_for_tracks",
]
