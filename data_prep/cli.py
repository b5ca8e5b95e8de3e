"""``python -m data_prep``: raw talking-head videos -> an ArrayRecord/tfds clip dataset.

    python -m data_prep --input_dir videos/ --output_dir data/clips --num_workers 8 \
        [--file_list list.txt] [--resolution 256] [--syncnet_ckpt converted/syncnet] \
        [--quality_ckpt koniq_pretrained.pkl] [--multi_face drop|split|keep] [--runner DirectRunner]

Local worker processes by default (``data_prep.prepare``); ``--runner`` runs the same per-source
work as an Apache Beam pipeline (``data_prep.beam_pipeline``). Resumable and tolerant of bad files
(see data_prep/prepare.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from data_prep import filters
from data_prep.clips import PrepOptions
from data_prep.prepare import PrepError, check_tools, list_sources, prepare


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input_dir", help="folder of source videos (searched recursively)")
    p.add_argument("--file_list", help="text file with one video path per line")
    p.add_argument("--output_dir", required=True, help="dataset root (work files, dataset, summary.json)")
    p.add_argument("--num_workers", type=int, default=max(1, (os.cpu_count() or 2) // 2),
                   help="worker processes (0: run in this process)")
    p.add_argument("--resolution", type=int, default=256, help="aligned face size in pixels")
    p.add_argument("--min_seconds", type=float, default=5.0, help="shortest clip")
    p.add_argument("--max_seconds", type=float, default=10.0, help="longest clip")
    p.add_argument("--max_source_seconds", type=float, default=None, help="use only the first N s of each video")
    p.add_argument("--shot_threshold", type=float, default=0.3, help="histogram distance that counts as a cut")
    p.add_argument("--jpeg_quality", type=int, default=95)
    p.add_argument("--face_backend", default="mediapipe", choices=("mediapipe", "insightface"))
    p.add_argument("--multi_face", default="drop", choices=filters.MULTI_FACE_MODES,
                   help="drop: one person per clip (drop clips where another face competes or the face is not "
                        "in every frame); split: one clip per face track covering the clip; keep: no check")
    p.add_argument("--competing_face_ratio", type=float, default=0.0,
                   help="another face at least this fraction of the main face's height competes (0: any face)")
    p.add_argument("--min_face_size", type=float, default=0.0,
                   help="drop clips whose face box is smaller (median height, source pixels; 0: off)")
    p.add_argument("--sync_scorer", default="lse", choices=filters.SYNC_SCORERS,
                   help="lse: classic SyncNet + S3FD (LatentSync's sync_av); stable: StableSyncNet")
    p.add_argument("--syncnet_ckpt", default=None,
                   help="SyncNet checkpoint for --sync_scorer (no checkpoint: no sync filter)")
    p.add_argument("--detector_ckpt", default=None, help="S3FD checkpoint for --sync_scorer lse")
    p.add_argument("--sync_search_offset", type=int, default=15, help="offsets tried, in frames (+-; stable)")
    p.add_argument("--sync_max_offset", type=int, default=6, help="drop clips whose best offset is larger")
    p.add_argument("--sync_conf_threshold", type=float, default=None,
                   help="drop clips with a lower sync confidence (default 3 for lse, 0 for stable)")
    p.add_argument("--quality_ckpt", default=None, help="HyperIQA checkpoint (koniq_pretrained.pkl): quality filter")
    p.add_argument("--min_quality", type=float, default=40.0, help="drop clips with a lower HyperIQA score")
    p.add_argument("--runner", default=None,
                   help="run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, "
                        "FlinkRunner, SparkRunner; other Beam options pass through); default: local processes")
    p.add_argument("--retry_failed", action="store_true", help="reprocess sources that failed before")
    p.add_argument("--name", default=None, help="dataset name (default lipsync_clips)")
    p.add_argument("--version", default=None, help="dataset version (default 1.0.0)")
    p.add_argument("--records_per_shard", type=int, default=256)
    return p


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def main(argv: Sequence[str] | None = None) -> int:
    args, beam_args = build_parser().parse_known_args(argv)
    if beam_args and not args.runner:
        print(f"data_prep: unrecognized arguments: {' '.join(beam_args)}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    options = PrepOptions(resolution=args.resolution, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                          max_source_seconds=args.max_source_seconds, shot_threshold=args.shot_threshold,
                          jpeg_quality=args.jpeg_quality, face_backend=args.face_backend,
                          multi_face=args.multi_face, competing_face_ratio=args.competing_face_ratio,
                          min_face_size=args.min_face_size, sync_scorer=args.sync_scorer,
                          syncnet_ckpt=_abs(args.syncnet_ckpt), detector_ckpt=_abs(args.detector_ckpt),
                          sync_search_offset=args.sync_search_offset, sync_max_offset=args.sync_max_offset,
                          sync_conf_threshold=args.sync_conf_threshold, quality_ckpt=_abs(args.quality_ckpt),
                          min_quality=args.min_quality)
    try:
        sources = list_sources(args.input_dir, args.file_list)
        if options.min_seconds <= 0 or options.max_seconds < options.min_seconds:
            raise PrepError(f"need 0 < --min_seconds <= --max_seconds, got {options.min_seconds}, "
                            f"{options.max_seconds}")
        check_tools(options)
        os.makedirs(args.output_dir, exist_ok=True)
        file_handler = logging.FileHandler(os.path.join(args.output_dir, "data_prep.log"))
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logging.getLogger().addHandler(file_handler)
        kwargs = dict(retry_failed=args.retry_failed, name=args.name, version=args.version,
                      records_per_shard=args.records_per_shard)
        if args.runner:
            from data_prep.beam_pipeline import prepare_with_beam  # lazy: apache-beam is optional

            summary = prepare_with_beam(sources, os.path.abspath(args.output_dir), options,
                                        beam_args=[f"--runner={args.runner}", *beam_args], **kwargs)
        else:
            summary = prepare(sources, args.output_dir, options, num_workers=args.num_workers, **kwargs)
    except PrepError as e:
        print(f"data_prep: {e}", file=sys.stderr)
        return 2
    return 0 if summary["kept_clips"] else 1
