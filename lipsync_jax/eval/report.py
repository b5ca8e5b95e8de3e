"""The evaluation report and the shared pieces of the evaluation command lines.

Shared by eval/*.py: the input errors they report as one line (exit status 1) and the JSON / CSV
writers. The report (``python -m lipsync_jax.eval.report --generated DIR --reference DIR --out
report/``, or ``evaluate_folders`` + ``write_report`` in a notebook): LSE-C, LSE-D, AV offset,
SSIM and PSNR per generated video (paired with the reference of the same file stem), FVD over
the folders, written as ``report.csv``, ``report.md`` (a Markdown table with the plots),
``report.json`` (everything, per track and per frame) and PNG plots (``report_plots``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lipsync_jax.audio import AudioLoadError
from lipsync_jax.checkpoints import CheckpointFormatError
from lipsync_jax.config_utils import ConfigError
from lipsync_jax.eval.frame_metrics import FrameMetricsError
from lipsync_jax.eval.sync_eval import SyncEvalError
from lipsync_jax.eval.sync_score import SyncScoreError
from lipsync_jax.face import FaceError
from lipsync_jax.media import MediaError
from lipsync_jax.models.syncnet import SyncNetConfigError

# Bad input of any kind: printed as "error: <message naming the file>", exit status 1.
INPUT_ERRORS = (AudioLoadError, ConfigError, CheckpointFormatError, FrameMetricsError, SyncEvalError, SyncScoreError,
                FaceError, MediaError, SyncNetConfigError, OSError)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> "inf" / "-inf" / None so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, data: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(data), f, indent=2, allow_nan=False)
        f.write("\n")


def write_csv(path: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """One row per mapping; only ``columns`` (scalars), missing values left empty."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})


# ==========================================================================================
# The evaluation report: python -m lipsync_jax.eval.report --generated DIR --reference DIR --out report/
#
# Per generated video (paired with the reference video of the same file stem): LSE-C, LSE-D and
# the AV offset (classic SyncNet + S3FD, lipsync_jax.eval.lse), SSIM and PSNR against the
# reference (lipsync_jax.eval.video_metrics); over the whole folders: FVD (I3D logits,
# lipsync_jax.eval.fvd; a distance between two sets of clips, so it has no per-video value).
# A video that cannot be scored keeps its row with the reason; the batch goes on.

REPORT_COLUMNS = ("video", "lse_c", "lse_d", "av_offset", "fvd", "ssim", "psnr", "num_tracks", "num_windows",
                  "generated", "reference", "audio", "error")
REPORT_FILES = {"csv": "report.csv", "markdown": "report.md", "json": "report.json",
                "distance_vs_offset": "lse_distance_vs_offset.png",
                "confidence_over_time": "lse_confidence_over_time.png",
                "distributions": "metric_distributions.png"}
RANDOM_WARNING = ("WARNING: --random_init: SyncNet, S3FD and I3D have RANDOM weights. Every number in this report "
                  "is MEANINGLESS (smoke test only).")


@dataclasses.dataclass(frozen=True)
class ReportNets:
    syncnet: Any  # lipsync_jax.eval.lse.LoadedNet (classic SyncNet)
    detector: Any  # lipsync_jax.eval.lse.LoadedNet (S3FD)
    i3d: Any  # lipsync_jax.eval.fvd.I3DFeatures

    @property
    def random_init(self) -> bool:
        return bool(self.syncnet.random_init or self.detector.random_init or self.i3d.random_init)

    def sources(self) -> dict[str, str]:
        return {"syncnet": self.syncnet.source, "s3fd": self.detector.source, "i3d": self.i3d.source}


def load_report_nets(syncnet_checkpoint: str | None = None, s3fd_checkpoint: str | None = None,
                     i3d_checkpoint: str | None = None, *, random_init: bool = False, narrow_by: int = 1,
                     seed: int = 0, i3d_batch_size: int = 8) -> ReportNets:
    """The three networks from checkpoints (original files or converted folders), or random
    weights (``random_init``; ``narrow_by`` divides their widths: smoke tests and notebooks)."""
    from lipsync_jax.eval.fvd import load_i3d
    from lipsync_jax.eval.lse import load_lse_syncnet, load_s3fd

    if random_init:
        return ReportNets(load_lse_syncnet(random_init=True, seed=seed, narrow_by=narrow_by),
                          load_s3fd(random_init=True, seed=seed, narrow_by=narrow_by),
                          load_i3d(random_init=True, seed=seed, config={"narrow_by": narrow_by},
                                   batch_size=i3d_batch_size))
    return ReportNets(load_lse_syncnet(syncnet_checkpoint), load_s3fd(s3fd_checkpoint),
                      load_i3d(i3d_checkpoint, batch_size=i3d_batch_size))


@dataclasses.dataclass(frozen=True)
class ReportOptions:
    settings: Any = None  # lipsync_jax.eval.lse_tracks.DetectSettings (None: LatentSync's defaults)
    vshift: int = 15
    batch_size: int = 16  # SyncNet windows per batch
    max_frames: int | None = None  # LSE and SSIM/PSNR on the first N frames only
    region: str = "frame"  # SSIM/PSNR region: "frame" or "mouth" (lipsync_jax.eval.video_metrics)


@dataclasses.dataclass
class VideoEvaluation:
    name: str  # file stem, the pairing key
    generated: str
    reference: str | None
    audio: str  # what LSE was scored against (the video itself: its own track)
    lse: Any = None  # LSEResult
    frames: Any = None  # VideoMetrics (SSIM / PSNR)
    errors: list[str] = dataclasses.field(default_factory=list)

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {"video": self.name, "generated": self.generated, "reference": self.reference or "",
                               "audio": self.audio}
        if self.lse is not None:
            row.update(lse_c=self.lse.lse_c, lse_d=self.lse.lse_d, av_offset=self.lse.av_offset,
                       num_tracks=len(self.lse.tracks), num_windows=sum(t.score.num_windows for t in self.lse.tracks))
        if self.frames is not None:
            row.update(ssim=self.frames.ssim, psnr=self.frames.psnr)
        row["error"] = "; ".join(self.errors)
        return row


@dataclasses.dataclass
class Report:
    videos: list[VideoEvaluation]
    fvd: Any  # FVDResult or None
    fvd_error: str
    sources: dict[str, str]
    random_init: bool
    options: ReportOptions

    def rows(self) -> list[dict[str, Any]]:
        return [v.row() for v in self.videos]

    def overall(self) -> dict[str, Any]:
        """Means over the videos that have each value; FVD of the folders; error counts."""
        rows = self.rows()
        out: dict[str, Any] = {"video": "overall"}
        for key in ("lse_c", "lse_d", "av_offset", "ssim", "psnr"):
            values = [r[key] for r in rows if key in r]
            if values:
                out[key] = float(np.mean(values))
        out["num_tracks"] = sum(r.get("num_tracks", 0) for r in rows)
        out["num_windows"] = sum(r.get("num_windows", 0) for r in rows)
        if self.fvd is not None:
            out["fvd"] = self.fvd.fvd
        failed = sum(1 for r in rows if r["error"])
        notes = [f"{len(rows) - failed} of {len(rows)} videos without errors"]
        if self.fvd is not None:
            notes.append(f"FVD over {len(self.fvd.generated)} generated vs {len(self.fvd.reference)} reference clips")
        elif self.fvd_error:
            notes.append(f"FVD: {self.fvd_error}")
        out["error"] = "; ".join(notes)
        return out

    def to_dict(self) -> dict[str, Any]:
        videos = []
        for video in self.videos:
            entry = video.row()
            if video.lse is not None:
                entry["lse"] = video.lse.to_dict(per_window=True)
            if video.frames is not None:
                entry["frame_metrics"] = video.frames.to_dict(per_frame=True)
            videos.append(entry)
        return {"random_init": self.random_init, "networks": self.sources, "overall": self.overall(),
                "fvd": self.fvd.to_dict() if self.fvd is not None else {"error": self.fvd_error},
                "region": self.options.region, "max_frames": self.options.max_frames, "videos": videos}


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]


def pair_by_name(generated_dir: str, reference_dir: str, audio_dir: str | None = None
                 ) -> list[tuple[str, str, str | None, str | None]]:
    """``(name, generated video, reference video or None, audio or None)`` per video of
    ``generated_dir`` (sorted), paired by file stem (``a.mp4`` with ``a.mov``); audio: the file
    with that stem in ``audio_dir`` (default ``generated_dir``), None: the video's own track."""
    from lipsync_jax.eval.fvd import list_videos
    from lipsync_jax.eval.sync_eval import pair_videos_with_audio

    for folder, what in ((generated_dir, "generated"), (reference_dir, "reference")):
        if not os.path.isdir(folder):
            raise SyncEvalError(f"{folder}: {what} folder not found")
    references: dict[str, str] = {}
    for path in list_videos(reference_dir):
        references.setdefault(_stem(path), path)
    return [(_stem(video), video, references.get(_stem(video)), audio)
            for video, audio in pair_videos_with_audio(generated_dir, audio_dir)]


def _per_video_errors() -> tuple[type[BaseException], ...]:
    from lipsync_jax.eval.fvd import FVDError
    from lipsync_jax.eval.lse import lse_input_errors

    return (*INPUT_ERRORS, *lse_input_errors(), FVDError, ValueError)


def evaluate_video(name: str, generated: str, reference: str | None, audio: str | None, nets: ReportNets,
                   options: ReportOptions = ReportOptions(), progress: bool = True) -> VideoEvaluation:
    """LSE of ``generated`` (against ``audio``, default its own track) and SSIM/PSNR against
    ``reference``; each failure becomes a message in ``errors`` instead of an exception."""
    from lipsync_jax.eval.lse import evaluate_lse
    from lipsync_jax.eval.lse_tracks import DetectSettings
    from lipsync_jax.eval.video_metrics import video_metrics

    errors = _per_video_errors()
    video = VideoEvaluation(name, generated, reference, audio or generated)
    try:
        video.lse = evaluate_lse(generated, audio, syncnet=nets.syncnet, detector=nets.detector,
                                 settings=options.settings or DetectSettings(), vshift=options.vshift,
                                 batch_size=options.batch_size, max_frames=options.max_frames, progress=progress)
    except errors as error:
        video.errors.append(f"LSE: {error}")
    if reference is None:
        video.errors.append(f"SSIM/PSNR: no reference video named {name}.*")
    else:
        try:
            video.frames = video_metrics(generated, reference, region=options.region, max_frames=options.max_frames)
        except errors as error:
            video.errors.append(f"SSIM/PSNR: {error}")
    return video


def evaluate_folders(generated_dir: str, reference_dir: str, nets: ReportNets, *, audio_dir: str | None = None,
                     options: ReportOptions = ReportOptions(), progress: bool = True) -> Report:
    """Every metric for every generated video (see ``evaluate_video``) and the FVD between the
    folders; a video that fails keeps its row with the reasons."""
    from tqdm import tqdm

    from lipsync_jax.eval.fvd import fvd_of_videos, list_videos

    pairs = pair_by_name(generated_dir, reference_dir, audio_dir)
    videos = [evaluate_video(*pair, nets, options, progress)
              for pair in tqdm(pairs, desc="videos (LSE, SSIM/PSNR)", unit="video", disable=not progress)]
    fvd, fvd_error = None, ""
    try:
        fvd = fvd_of_videos([v.generated for v in videos], list_videos(reference_dir), nets.i3d, progress)
    except _per_video_errors() as error:
        fvd_error = str(error)
    if fvd is not None:
        by_path = {v.generated: v for v in videos}
        for path, message in fvd.errors.items():
            if path in by_path:
                by_path[path].errors.append(f"FVD clip left out: {message}")
    return Report(videos, fvd, fvd_error, nets.sources(), nets.random_init, options)


def _cell(value: Any, digits: int = 3) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):+d}"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def _fvd_cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def markdown_table(report: Report) -> str:
    """One row per video plus the overall row: LSE-C, LSE-D, offset, FVD, SSIM, PSNR, note."""
    def escape(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| video | LSE-C | LSE-D | offset | FVD | SSIM | PSNR (dB) | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for row in report.rows():
        lines.append(f"| {escape(row['video'])} | {_cell(row.get('lse_c'))} | {_cell(row.get('lse_d'))} | "
                     f"{_cell(row.get('av_offset'))} | - | {_cell(row.get('ssim'), 4)} | {_cell(row.get('psnr'), 2)} | "
                     f"{escape(row['error'] or 'ok')} |")
    o = report.overall()
    offset = f"{o['av_offset']:+.2f}" if "av_offset" in o else "-"
    lines.append(f"| **overall** | {_cell(o.get('lse_c'))} | {_cell(o.get('lse_d'))} | {offset} | "
                 f"{_fvd_cell(o.get('fvd'))} | {_cell(o.get('ssim'), 4)} | {_cell(o.get('psnr'), 2)} | "
                 f"{escape(o['error'])} |")
    return "\n".join(lines)


def markdown_report(report: Report) -> str:
    parts = ["# Lip-sync evaluation", ""]
    if report.random_init:
        parts += [f"**{RANDOM_WARNING}**", ""]
    parts += [markdown_table(report), "",
              "LSE-C (higher is better), LSE-D (lower is better) and the AV offset (frames; 0 = in sync) come from "
              "the classic SyncNet on S3FD face tracks, as LatentSync's eval (means over face tracks). FVD (lower is "
              "better) compares the sets of generated and reference clips (I3D logits), so it exists only for the "
              "whole folders. SSIM / PSNR compare each generated video with the reference of the same name "
              f"(region: {report.options.region}; PSNR of the pooled MSE). Overall: means over the videos that have "
              "each value.", "",
              "Networks: " + ", ".join(f"{k}: `{v}`" for k, v in report.sources.items()), "",
              f"![distance vs offset]({REPORT_FILES['distance_vs_offset']})", "",
              f"![confidence over time]({REPORT_FILES['confidence_over_time']})", "",
              f"![metric distributions]({REPORT_FILES['distributions']})", ""]
    return "\n".join(parts)


def write_report(report: Report, out_dir: str) -> dict[str, str]:
    """CSV, Markdown, JSON and the PNG plots in ``out_dir``; returns {kind: path}."""
    from lipsync_jax.eval import report_plots

    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, name) for kind, name in REPORT_FILES.items()}
    rows = report.rows()
    write_csv(paths["csv"], [*rows, report.overall()], REPORT_COLUMNS)
    with open(paths["markdown"], "w", encoding="utf-8") as f:
        f.write(markdown_report(report))
    write_json(paths["json"], report.to_dict())
    scored = [(v.name, v.lse) for v in report.videos if v.lse is not None]
    report_plots.plot_distance_vs_offset(scored, paths["distance_vs_offset"])
    report_plots.plot_confidence_over_time(scored, paths["confidence_over_time"])
    report_plots.plot_metric_distributions(rows, paths["distributions"])
    return paths


QUICK_SMOKE_FLAGS = "--narrow_by 8 --min_track 10"
QUICK_SMOKE = ("python -m lipsync_jax.eval.report --generated results/ --reference originals/ --out report/ "
               f"--random_init {QUICK_SMOKE_FLAGS}")


def _parser():
    import argparse

    parser = argparse.ArgumentParser(prog="python -m lipsync_jax.eval.report",
                                     description="LSE-C / LSE-D / offset, FVD, SSIM and PSNR of generated videos "
                                                 "against references: CSV, Markdown table and PNG plots",
                                     epilog="quick smoke run without weights (numbers meaningless, minutes on a CPU): "
                                            f"{QUICK_SMOKE}; details: docs/evaluation.md")
    parser.add_argument("--generated", required=True, help="folder of generated videos")
    parser.add_argument("--reference", required=True, help="folder of reference videos (paired by file name)")
    parser.add_argument("--out", required=True, help="report folder to write")
    parser.add_argument("--audio_dir", default=None, help="audio named like the generated videos for LSE "
                        "(default: --generated; none there: each video's own track)")
    parser.add_argument("--syncnet_checkpoint", default=None, help="syncnet_v2.model or a converted folder")
    parser.add_argument("--s3fd_checkpoint", default=None, help="sfd_face.pth or a converted folder")
    parser.add_argument("--i3d_checkpoint", default=None, help="rgb_imagenet.pt or a converted folder")
    parser.add_argument("--random_init", action="store_true", help="random weights for all networks (smoke tests; "
                        f"add {QUICK_SMOKE_FLAGS} for a quick one)")
    parser.add_argument("--narrow_by", type=int, default=1, help="with --random_init: divide the network widths")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for --random_init")
    parser.add_argument("--region", default="frame", choices=("frame", "mouth"), help="SSIM/PSNR region")
    parser.add_argument("--max_frames", type=int, default=None, help="LSE and SSIM/PSNR on the first N frames")
    parser.add_argument("--min_track", type=int, default=50, help="a face track needs more than N detections")
    parser.add_argument("--detect_scale", type=float, default=0.25, help="S3FD input scale (LatentSync: 0.25)")
    parser.add_argument("--vshift", type=int, default=15, help="LSE: audio offsets in [-N, N] frames")
    parser.add_argument("--batch_size", type=int, default=16, help="SyncNet windows per batch")
    parser.add_argument("--i3d_batch_size", type=int, default=8, help="clips per I3D batch")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    import sys

    parser = _parser()
    args = parser.parse_args(argv)
    checkpoints = (args.syncnet_checkpoint, args.s3fd_checkpoint, args.i3d_checkpoint)
    if args.random_init and any(checkpoints):
        parser.error("--random_init replaces the checkpoints")
    if not args.random_init and not all(checkpoints):
        parser.error("give --syncnet_checkpoint, --s3fd_checkpoint and --i3d_checkpoint (or --random_init)")
    if args.narrow_by < 1 or (args.narrow_by != 1 and not args.random_init):
        parser.error("--narrow_by (>= 1) goes with --random_init (checkpoints carry their own widths)")
    from lipsync_jax.convert.rules import ConversionError
    from lipsync_jax.eval.lse_tracks import DetectSettings

    try:
        pairs = pair_by_name(args.generated, args.reference, args.audio_dir)  # bad folders before loading weights
        if not pairs:
            raise SyncEvalError(f"{args.generated}: no videos to evaluate")
        if args.random_init:
            print(RANDOM_WARNING, file=sys.stderr)
            if args.narrow_by == 1:
                print(f"note: full-width random networks are slow on a CPU (S3FD ~3 s per 1080p frame); for a quick "
                      f"smoke run add {QUICK_SMOKE_FLAGS}", file=sys.stderr)
        nets = load_report_nets(*checkpoints, random_init=args.random_init, narrow_by=args.narrow_by, seed=args.seed,
                                i3d_batch_size=args.i3d_batch_size)
        options = ReportOptions(DetectSettings(scale=args.detect_scale, min_track=args.min_track), args.vshift,
                                args.batch_size, args.max_frames, args.region)
        report = evaluate_folders(args.generated, args.reference, nets, audio_dir=args.audio_dir, options=options,
                                  progress=not args.no_progress)
        paths = write_report(report, args.out)
    except (*_per_video_errors(), ConversionError) as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(markdown_table(report))
    print(f"report written to {args.out}: " + ", ".join(os.path.basename(p) for p in paths.values()))
    if report.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    failed = sum(1 for v in report.videos if v.errors)
    return 1 if failed or report.fvd is None else 0


if __name__ == "__main__":
    raise SystemExit(main())
