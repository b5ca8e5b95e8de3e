"""Evaluation metrics (sync score, ...).

Notebook entry points (imported lazily, so ``import lipsync_jax.eval`` stays light):
``psnr``, ``ssim``, ``mse``, ``lower_half`` (arrays: lipsync_jax.eval.frame_metrics),
``video_metrics`` (two video files: lipsync_jax.eval.video_metrics), ``load_syncnet``,
``evaluate_sync``, ``score_faces``, ``pair_videos_with_audio`` (lipsync_jax.eval.sync_eval),
``read_face_track`` (lipsync_jax.eval.faces), ``sync_score`` and ``SyncScore``
(lipsync_jax.eval.sync_score), ``evaluate_lse``, ``load_lse_syncnet``, ``load_s3fd``,
``LSEResult`` (LSE-C / LSE-D: lipsync_jax.eval.lse), ``load_i3d``, ``fvd_of_folders``, ``fvd_of_videos``,
``frechet_distance`` (FVD: lipsync_jax.eval.fvd), ``load_hyperiqa``, ``clip_quality``, ``video_quality``,
``passes_quality`` (HyperIQA: lipsync_jax.eval.quality), ``load_report_nets``, ``evaluate_folders``,
``write_report`` (the report: lipsync_jax.eval.report), ``mouth_strip`` (lipsync_jax.eval.report_plots),
``syncnet_accuracy`` (lipsync_jax.eval.syncnet_acc).
"""

import importlib

_EXPORTS = {
    "psnr": "frame_metrics", "ssim": "frame_metrics", "mse": "frame_metrics", "lower_half": "frame_metrics",
    "FrameMetricsError": "frame_metrics", "video_metrics": "video_metrics", "VideoMetrics": "video_metrics",
    "load_syncnet": "sync_eval", "evaluate_sync": "sync_eval", "score_faces": "sync_eval",
    "pair_videos_with_audio": "sync_eval", "SyncEvalError": "sync_eval", "SyncEvalResult": "sync_eval",
    "read_face_track": "faces", "FaceTrack": "faces", "sync_score": "sync_score", "SyncScore": "sync_score",
    "evaluate_lse": "lse", "load_lse_syncnet": "lse", "load_s3fd": "lse", "LSEResult": "lse", "LSEEvalError": "lse",
    "load_i3d": "fvd", "fvd_of_folders": "fvd", "fvd_of_videos": "fvd", "frechet_distance": "fvd", "FVDError": "fvd",
    "load_hyperiqa": "quality", "clip_quality": "quality", "video_quality": "quality", "passes_quality": "quality",
    "load_report_nets": "report", "evaluate_folders": "report", "write_report": "report",
    "mouth_strip": "report_plots", "syncnet_accuracy": "syncnet_acc",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"lipsync_jax.eval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lipsync_jax.eval' has no attribute {name!r}")
