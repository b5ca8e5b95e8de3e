"""PNG plots of the evaluation report (``lipsync_jax.eval.report``) and a mouth-region frame strip.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend switch), so
the functions work the same in scripts, tests and notebooks (where the inline backend stays on).

- ``plot_distance_vs_offset``: per video (and face track) the classic SyncNet's mean distance
  per audio offset; the minimum is LSE-D, its depth below the median is LSE-C.
- ``plot_confidence_over_time``: per video the framewise confidence (median distance minus the
  distance at the best offset, 9-tap median filtered, syncnet_python's framewise conf) against
  time; dips show the badly synced seconds.
- ``plot_metric_distributions``: histograms of LSE-C, LSE-D, SSIM and PSNR over the videos.
- ``mouth_strip``: a few frames of the mouth region, reference (input) above generated (output).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

LSE_FPS = 25.0
DISTRIBUTION_METRICS = (("lse_c", "LSE-C (higher is better)"), ("lse_d", "LSE-D (lower is better)"),
                        ("ssim", "SSIM"), ("psnr", "PSNR (dB)"))


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _no_data(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="gray")
    ax.set_xticks([])
    ax.set_yticks([])


def _track_label(name: str, track_index: int, num_tracks: int) -> str:
    return name if num_tracks == 1 else f"{name} (face {track_index})"


def _per_track_plot(results: Sequence[tuple[str, Any]], draw_track, path: str | None, *, zero_line: str,
                    xlabel: str, ylabel: str, title: str):
    """One figure with ``draw_track(ax, track, label)`` for every face track of every (label,
    LSEResult) pair, a dashed line at 0 (``zero_line``: "x" vertical, "y" horizontal), labels and
    a legend; "no video could be scored" when there is no track."""
    fig = _figure(7.5, 4.2)
    ax = fig.subplots()
    lines = 0
    for name, result in results:
        for track in result.tracks:
            draw_track(ax, track, _track_label(name, track.index, len(result.tracks)))
            lines += 1
    if lines:
        (ax.axvline if zero_line == "x" else ax.axhline)(0, color="gray", linewidth=0.8, linestyle="--")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize="small", loc="best")
    else:
        _no_data(ax, "no video could be scored")
    if path:
        fig.savefig(path)
    return fig


def plot_distance_vs_offset(results: Sequence[tuple[str, Any]], path: str | None = None):
    """``results``: (label, LSEResult) pairs. One line per face track, the minimum marked."""
    def draw(ax, track, label):
        offsets, dists = track.score.dists_by_offset()
        line, = ax.plot(offsets, dists, marker=".", label=label)
        best = int(np.argmin(dists))
        ax.plot([offsets[best]], [dists[best]], "o", color=line.get_color(), markersize=8, fillstyle="none")

    return _per_track_plot(results, draw, path, zero_line="x", xlabel="audio offset (frames)",
                           ylabel="mean SyncNet distance",
                           title="Distance vs offset (circle: minimum = LSE-D; offset 0 = in sync)")


def plot_confidence_over_time(results: Sequence[tuple[str, Any]], path: str | None = None):
    """``results``: (label, LSEResult) pairs. Framewise confidence against seconds (25 fps)."""
    def draw(ax, track, label):
        conf = np.asarray(track.score.window_conf_smoothed)
        seconds = (track.track.start + np.arange(conf.shape[0])) / LSE_FPS
        ax.plot(seconds, conf, label=label)

    return _per_track_plot(results, draw, path, zero_line="y", xlabel="time (s, start of the 5-frame window)",
                           ylabel="confidence (median - distance)",
                           title="Framewise sync confidence (9-tap median filtered)")


def plot_metric_distributions(rows: Iterable[Mapping[str, Any]], path: str | None = None):
    """Histograms of the per-video metrics (``rows``: dicts with lse_c, lse_d, ssim, psnr;
    missing or non-finite values are left out and counted in the title)."""
    rows = list(rows)
    fig = _figure(9.0, 5.5)
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, title) in zip(axes, DISTRIBUTION_METRICS):
        values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        left_out = len(rows) - len(values)
        ax.set_title(title + (f" ({left_out} left out)" if left_out else ""), fontsize="medium")
        if not values:
            _no_data(ax, "no values")
            continue
        ax.hist(values, bins=min(20, max(3, len(values))), color="tab:blue", alpha=0.75)
        ax.plot(values, np.zeros(len(values)), "|", color="black", markersize=12)
        ax.axvline(float(np.mean(values)), color="tab:red", linewidth=1.2, label=f"mean {np.mean(values):.3g}")
        ax.set_ylabel("videos")
        ax.legend(fontsize="small")
    if path:
        fig.savefig(path)
    return fig


# ---------------------------------------------------------------- mouth-region strip

def _mouth_box(face_box: tuple[int, int, int, int] | None, height: int, width: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the lower half of the face box (no face: the lower middle of the frame)."""
    if face_box is None:
        return height // 2, height * 3 // 4, width // 4, width * 3 // 4
    x1, y1, x2, y2 = face_box
    return (y1 + y2) // 2, y2, x1, x2


def mouth_strip(generated: str, reference: str, num_frames: int = 6, max_frames: int | None = None,
                size: int = 96) -> np.ndarray:
    """(2 * size, num_frames * size, 3) uint8: ``num_frames`` evenly spaced frames of the mouth
    region, the reference (input) in the top row, the generated video (output) below, both cut
    with the face box MediaPipe finds in the reference frame."""
    import cv2

    from lipsync_jax.eval.fvd import FaceBoxCropper
    from lipsync_jax.media import probe_video, read_frames

    info = probe_video(reference, count=True)
    total = info.num_frames if max_frames is None else min(info.num_frames, max_frames)
    wanted = set(np.linspace(0, max(0, total - 1), num_frames).round().astype(int).tolist())
    tiles: list[tuple[np.ndarray, np.ndarray]] = []
    cropper = FaceBoxCropper()
    detector = cropper._detector
    try:
        pairs = zip(read_frames(reference, None, max_frames=total), read_frames(generated, info.fps, max_frames=total))
        for index, (ref, gen) in enumerate(pairs):
            if index not in wanted:
                continue
            height, width = ref.shape[:2]
            found = detector.process(np.ascontiguousarray(ref)).detections
            box = None
            if found:
                rel = found[0].location_data.relative_bounding_box
                x1, y1 = max(0, int(rel.xmin * width)), max(0, int(rel.ymin * height))
                box = (x1, y1, min(width, x1 + int(rel.width * width)), min(height, y1 + int(rel.height * height)))
            y0, y1, x0, x1 = _mouth_box(box, height, width)
            if gen.shape[:2] != ref.shape[:2]:
                gen = cv2.resize(gen, (width, height), interpolation=cv2.INTER_AREA)
            tiles.append(tuple(cv2.resize(f[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
                               for f in (ref, gen)))
    finally:
        cropper.close()
    if not tiles:
        raise ValueError(f"{generated} / {reference}: no frames to show")
    return np.concatenate([np.concatenate([t[0] for t in tiles], axis=1),
                           np.concatenate([t[1] for t in tiles], axis=1)], axis=0)


def plot_mouth_strip(strip: np.ndarray, title: str = "", path: str | None = None):
    """The strip from ``mouth_strip`` with row labels (top: input, bottom: output)."""
    height, width = strip.shape[:2]
    fig = _figure(max(4.0, width / 80), max(2.0, height / 80 + 0.4))
    ax = fig.subplots()
    ax.imshow(strip)
    ax.set_yticks([height / 4, 3 * height / 4], ["input", "output"])
    ax.set_xticks([])
    if title:
        ax.set_title(title, fontsize="medium")
    if path:
        fig.savefig(path)
    return fig
