"""Statistics of a data_prep run: what each filter kept and dropped, and what a threshold costs.

Written at the end of every run (local or Beam) from the per-source markers:

- ``output_dir/clips.csv``: one row per candidate clip (``COLUMNS``): source, clip id, segment
  (start frame, frames), face track, ``status`` kept/dropped, the ``stage`` that dropped it
  (``filters.STAGES``) and ``reason``, face size, faces detected, sync confidence / offset /
  score, quality. Empty cells: not measured (a clip dropped before that stage, or no model).
- ``output_dir/stats/``: ``sync_confidence.png`` and ``quality.png`` (histograms of every
  measured clip, kept and dropped stacked, threshold drawn), ``clips_per_stage.png`` (clips
  left after each stage), ``summary.json`` (the same numbers as text).

Histograms hold the clips that reached that filter: a clip dropped by an earlier one has no
score (LatentSync's order; scoring every clip would cost the models' time on clips already out).
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from data_prep.filters import STAGES

COLUMNS = ("source", "clip_id", "start_frame", "num_frames", "track", "status", "stage", "reason", "detail",
           "face_size", "max_faces", "sync_confidence", "sync_offset", "sync_score", "quality")
STATS_DIR = "stats"
TABLE = "clips.csv"


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else round(value, 4)
    return value


def write_table(path: str, rows: Iterable[Mapping[str, Any]]) -> int:
    """The per-clip table as CSV (atomically). Returns the number of rows."""
    tmp = f"{path}.tmp-{os.getpid()}"
    count = 0
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(COLUMNS), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k, "")) for k in COLUMNS})
            count += 1
    os.replace(tmp, path)
    return count


def read_table(path: str) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def _finite(rows: Sequence[Mapping[str, Any]], key: str) -> list[tuple[float, bool]]:
    out = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            out.append((float(value), row["status"] == "kept"))
    return out


def kept_per_stage(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, int]]:
    """("candidates", n) then (stage, clips left after it) for every filter stage."""
    dropped = collections.Counter(row["stage"] for row in rows if row["status"] != "kept")
    left = len(rows)
    out = [("candidates", left)]
    for stage in STAGES:
        left -= dropped.get(stage, 0)
        out.append((stage, left))
    return out


def summarize_rows(rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float]) -> dict[str, Any]:
    by_reason = collections.Counter(f"{r['stage']}:{r['reason']}" for r in rows if r["status"] != "kept")
    summary: dict[str, Any] = {
        "candidate_clips": len(rows), "kept_clips": sum(r["status"] == "kept" for r in rows),
        "kept_per_stage": dict(kept_per_stage(rows)), "dropped_by_stage_reason": dict(sorted(by_reason.items())),
        "thresholds": dict(thresholds),
    }
    for key in ("sync_confidence", "quality", "face_size"):
        values = sorted(v for v, _ in _finite(rows, key))
        if values:
            summary[key] = {"measured": len(values), "min": values[0], "median": values[len(values) // 2],
                            "max": values[-1]}
    return summary


def _histogram(ax, rows, key: str, threshold: float | None, title: str) -> None:
    values = _finite(rows, key)
    kept = [v for v, k in values if k]
    dropped = [v for v, k in values if not k]
    if values:
        ax.hist([kept, dropped], bins=30, stacked=True, label=["kept", "dropped"], color=["tab:green", "tab:red"])
    else:
        ax.text(0.5, 0.5, "not measured in this run", ha="center", va="center", transform=ax.transAxes)
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_title(f"{title} ({len(values)} clips)")
    ax.set_xlabel(title)
    ax.set_ylabel("clips")
    if values or threshold is not None:
        ax.legend()


def write_plots(folder: str, rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float]) -> list[str]:
    """The three PNG plots; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    paths = []
    for key, title in (("sync_confidence", "sync confidence"), ("quality", "visual quality")):
        fig, ax = plt.subplots(figsize=(6, 4))
        _histogram(ax, rows, key, thresholds.get(key), title)
        path = os.path.join(folder, f"{key}.png")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    stages = kept_per_stage(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    bars = ax.bar([name for name, _ in stages], [n for _, n in stages], color="tab:blue")
    ax.bar_label(bars)
    ax.set_ylabel("clips left")
    ax.set_title("clips kept after each filter")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = os.path.join(folder, "clips_per_stage.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    paths.append(path)
    return paths


def write_statistics(output_dir: str, rows: Sequence[Mapping[str, Any]], thresholds: Mapping[str, float],
                     extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """clips.csv, stats/*.png and stats/summary.json for ``rows``; returns the summary."""
    write_table(os.path.join(output_dir, TABLE), rows)
    folder = os.path.join(output_dir, STATS_DIR)
    summary = summarize_rows(rows, thresholds)
    if extra:
        summary.update(extra)
    summary["plots"] = [os.path.basename(p) for p in write_plots(folder, rows, thresholds)]
    tmp = os.path.join(folder, f"summary.json.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    os.replace(tmp, os.path.join(folder, "summary.json"))
    return summary
