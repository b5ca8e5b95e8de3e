"""SyncNet sync confidence of lip-synced videos (LatentSync's StableSyncNet).

One video (against its own audio track, or --audio):
    python eval/sync_eval.py --video OUT.mp4 [--audio A.wav] --syncnet_checkpoint checkpoints/jax/syncnet \\
        [--config configs/syncnet/syncnet_16_pixel_attn.py] [--json out.json]

A folder (each video against the audio file with the same stem in --audio_dir, default the
same folder, else its own track); one row per video:
    python eval/sync_eval.py --video_dir results/ [--audio_dir audio/] --syncnet_checkpoint DIR \\
        [--json table.json] [--csv table.csv]

--random_init uses random SyncNet weights instead of a checkpoint (smoke tests only).
Library: lipsync_jax.eval.sync_eval (load_syncnet, evaluate_sync). Exit status: 0 scored,
1 bad input (or, in folder mode, any video that could not be scored).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lipsync_jax.eval.cli import add_syncnet_arguments

TABLE_COLUMNS = ("video", "audio", "similarity_at_zero", "best_offset", "best_similarity", "confidence",
                 "num_windows", "num_frames", "frames_without_face", "error")
RANDOM_WARNING = ("WARNING: --random_init: the SyncNet has RANDOM weights. The scores below are MEANINGLESS "
                  "(smoke test only); use --syncnet_checkpoint with a converted stable_syncnet.pt.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--video", help="video to score")
    what.add_argument("--video_dir", help="folder of videos to score")
    parser.add_argument("--audio", default=None, help="audio to score --video against (default: its own track)")
    parser.add_argument("--audio_dir", default=None,
                        help="folder with audio named like the videos (default: --video_dir)")
    add_syncnet_arguments(parser, "aligned face size (default: the config's data.resolution, else 256)")
    parser.add_argument("--max_offset", type=int, default=15, help="search audio offsets in [-N, N] frames")
    parser.add_argument("--batch_size", type=int, default=16, help="SyncNet windows per batch")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for --random_init")
    parser.add_argument("--json", default=None, help="write the result(s) here as JSON")
    parser.add_argument("--csv", default=None, help="folder mode: write the table here as CSV")
    parser.add_argument("--no_per_window", action="store_true", help="leave per-window scores out of the JSON")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def _summary(row: dict) -> str:
    return (f"{row['video']}: similarity@0 {row['similarity_at_zero']:.4f}, best offset {row['best_offset']:+d} "
            f"({row['best_similarity']:.4f}), confidence {row['confidence']:.4f}, {row['num_windows']} windows, "
            f"{row['frames_without_face']} frames without a face")


def run(args: argparse.Namespace) -> int:
    from lipsync_jax.eval.report import INPUT_ERRORS, write_csv, write_json
    from lipsync_jax.eval.sync_eval import evaluate_sync, load_syncnet, pair_videos_with_audio

    pairs = [(args.video, args.audio)] if args.video else pair_videos_with_audio(args.video_dir, args.audio_dir)
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    syncnet = load_syncnet(args.syncnet_checkpoint, args.config, random_init=args.random_init, seed=args.seed,
                           resolution=args.resolution)
    rows, failed = [], 0
    for video, audio in pairs:
        try:
            result = evaluate_sync(video, syncnet, audio, max_offset=args.max_offset, batch_size=args.batch_size)
        except INPUT_ERRORS as error:
            if args.video or args.debug:
                raise
            failed += 1
            print(f"error: {error}", file=sys.stderr)
            rows.append({"video": video, "audio": audio or video, "error": str(error)})
            continue
        row = result.to_dict(per_window=not args.no_per_window)
        row["random_init"] = syncnet.random_init
        print(_summary(row))
        rows.append(row)
    if args.json:
        write_json(args.json, rows[0] if args.video else {"syncnet": syncnet.source, "random_init": syncnet.random_init,
                                                          "videos": rows})
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
    if args.video is not None and (args.audio_dir is not None or args.csv is not None):
        parser.error("--audio_dir and --csv go with --video_dir")
    from lipsync_jax.eval.cli import run_main
    from lipsync_jax.eval.report import INPUT_ERRORS

    return run_main(run, args, INPUT_ERRORS)


if __name__ == "__main__":
    sys.exit(main())
