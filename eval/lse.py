"""LSE-C / LSE-D (classic SyncNet + S3FD face tracks, as LatentSync's eval) of lip-synced videos.

One video (against its own audio track, or --audio):
    python eval/lse.py --video OUT.mp4 [--audio A.wav] --syncnet_checkpoint checkpoints/auxiliary/syncnet_v2.model \\
        --s3fd_checkpoint checkpoints/auxiliary/sfd_face.pth [--json out.json]

A folder (each video against the audio file with the same stem in --audio_dir, default the
same folder, else its own track); one CSV row per face track, a video that cannot be scored
gets one row with its error:
    python eval/lse.py --video_dir results/ --csv lse.csv [--json lse.json] \\
        --syncnet_checkpoint ... --s3fd_checkpoint ...

Checkpoints: the original files or folders from `python -m lipsync_jax.convert lse_syncnet|s3fd`.
--random_init uses random weights for both networks (smoke tests only: the numbers are
meaningless). Library: lipsync_jax.eval.lse (load_lse_syncnet, load_s3fd, evaluate_lse).
Exit status: 0 scored, 1 bad input (or, in folder mode, any video that could not be scored).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

TABLE_COLUMNS = ("video", "audio", "track", "lse_c", "lse_d", "av_offset", "num_windows", "start_frame",
                 "end_frame", "error")
RANDOM_WARNING = ("WARNING: --random_init: the SyncNet and S3FD have RANDOM weights. The LSE numbers below are "
                  "MEANINGLESS (smoke test only); pass --syncnet_checkpoint and --s3fd_checkpoint.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--video", help="video to score")
    what.add_argument("--video_dir", help="folder of videos to score")
    parser.add_argument("--audio", default=None, help="audio for --video (default: its own track)")
    parser.add_argument("--audio_dir", default=None,
                        help="folder with audio named like the videos (default: --video_dir)")
    parser.add_argument("--syncnet_checkpoint", default=None, help="syncnet_v2.model or a converted folder")
    parser.add_argument("--s3fd_checkpoint", default=None, help="sfd_face.pth or a converted folder")
    parser.add_argument("--random_init", action="store_true", help="random weights for both networks (smoke tests)")
    parser.add_argument("--narrow_by", type=int, default=1, help="with --random_init: divide the network widths "
                        "(faster smoke tests)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for --random_init")
    parser.add_argument("--max_frames", type=int, default=None, help="score only the first N frames (at 25 fps)")
    parser.add_argument("--min_track", type=int, default=50, help="a face track needs more than N detections")
    parser.add_argument("--detect_scale", type=float, default=0.25, help="S3FD input scale (LatentSync: 0.25)")
    parser.add_argument("--vshift", type=int, default=15, help="search audio offsets in [-N, N] frames")
    parser.add_argument("--batch_size", type=int, default=16, help="SyncNet windows per batch")
    parser.add_argument("--detect_batch_size", type=int, default=8, help="frames per S3FD batch")
    parser.add_argument("--json", default=None, help="write the full result(s) here (distances per offset, "
                        "per-window confidence)")
    parser.add_argument("--csv", default=None, help="write one row per face track here")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def _rows(result) -> list[dict]:
    base = {"video": result.video, "audio": result.audio}
    return [{**base, **track.to_dict(per_window=False)} for track in result.tracks]


def _summary(result) -> str:
    tracks = ", ".join(f"track {t.index} (frames {t.track.start}-{t.track.end}): LSE-C {t.score.conf:.3f} "
                       f"LSE-D {t.score.min_dist:.3f} offset {t.score.av_offset:+d}" for t in result.tracks)
    return (f"{result.video}: LSE-C {result.lse_c:.4f}, LSE-D {result.lse_d:.4f}, AV offset {result.av_offset:+d} "
            f"[{tracks}]")


def run(args: argparse.Namespace) -> int:
    from lipsync_jax.eval.lse import evaluate_lse, load_lse_syncnet, load_s3fd, lse_input_errors
    from lipsync_jax.eval.lse_tracks import DetectSettings
    from lipsync_jax.eval.report import write_csv, write_json
    from lipsync_jax.eval.sync_eval import pair_videos_with_audio

    errors = lse_input_errors()
    pairs = [(args.video, args.audio)] if args.video else pair_videos_with_audio(args.video_dir, args.audio_dir)
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
        syncnet = load_lse_syncnet(random_init=True, seed=args.seed, narrow_by=args.narrow_by)
        detector = load_s3fd(random_init=True, seed=args.seed, narrow_by=args.narrow_by)
    else:
        syncnet = load_lse_syncnet(args.syncnet_checkpoint)
        detector = load_s3fd(args.s3fd_checkpoint)
    settings = DetectSettings(scale=args.detect_scale, min_track=args.min_track, batch_size=args.detect_batch_size)
    rows, results, failed = [], [], 0
    for video, audio in pairs:
        try:
            result = evaluate_lse(video, audio, syncnet=syncnet, detector=detector, settings=settings,
                                  vshift=args.vshift, batch_size=args.batch_size, max_frames=args.max_frames,
                                  progress=not args.no_progress)
        except errors as error:
            if args.debug:
                raise
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            rows.append({"video": video, "audio": audio or video, "error": str(error)})
            results.append({"video": video, "audio": audio or video, "error": str(error)})
            continue
        print(_summary(result))
        rows.extend(_rows(result))
        results.append(result.to_dict(per_window=True))
    if args.json:
        write_json(args.json, {"syncnet": syncnet.source, "detector": detector.source,
                               "random_init": args.random_init, "videos": results})
    if args.csv:
        write_csv(args.csv, rows, TABLE_COLUMNS)
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.video_dir is not None and args.audio is not None:
        parser.error("--audio goes with --video; use --audio_dir with --video_dir")
    if args.video is not None and args.audio_dir is not None:
        parser.error("--audio_dir goes with --video_dir")
    if args.random_init and (args.syncnet_checkpoint or args.s3fd_checkpoint):
        parser.error("--random_init replaces --syncnet_checkpoint / --s3fd_checkpoint")
    if not args.random_init and not (args.syncnet_checkpoint and args.s3fd_checkpoint):
        parser.error("give --syncnet_checkpoint and --s3fd_checkpoint (or --random_init for a smoke test)")
    if args.narrow_by != 1 and not args.random_init:
        parser.error("--narrow_by goes with --random_init (checkpoints carry their own widths)")
    from lipsync_jax.eval.cli import run_main
    from lipsync_jax.eval.lse import lse_input_errors
    from lipsync_jax.eval.sync_eval import SyncEvalError

    return run_main(run, args, (*lse_input_errors(), SyncEvalError))


if __name__ == "__main__":
    sys.exit(main())
