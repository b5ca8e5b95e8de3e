"""SyncNet accuracy of a StableSyncNet checkpoint on a clip dataset (LatentSync's eval_syncnet_acc).

    python eval/syncnet_acc.py --data_dir data/val_clips --syncnet_checkpoint checkpoints/jax/syncnet \\
        [--config configs/syncnet/syncnet_16_pixel_attn.py] [--num_samples 1024] [--json acc.json]
    python eval/syncnet_acc.py --data_dir D --random_init --config configs/syncnet/tiny.py   # smoke test

Pairs (half in sync, half with audio from elsewhere in the clip, seeded by --seed) come from the
SyncNet training loader; a pair is predicted in sync when the cosine similarity of its embeddings
exceeds --threshold (0.5). Prints the accuracy overall and per label. --data_dir: a dataset
written by `python -m data_prep`. Library: lipsync_jax.eval.syncnet_acc. Exit status: 0 measured,
1 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lipsync_jax.eval.cli import add_syncnet_arguments

RANDOM_WARNING = ("WARNING: --random_init: the SyncNet has RANDOM weights. The accuracy below is MEANINGLESS "
                  "(smoke test only); use --syncnet_checkpoint with a converted stable_syncnet.pt.")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True, help="clip dataset (python -m data_prep output)")
    add_syncnet_arguments(parser, "face size (default: the config's data.resolution, else 256)")
    parser.add_argument("--num_samples", type=int, default=1024, help="pairs to classify")
    parser.add_argument("--batch_size", type=int, default=16, help="pairs per batch")
    parser.add_argument("--threshold", type=float, default=0.5, help="similarity above which a pair is 'in sync'")
    parser.add_argument("--seed", type=int, default=0, help="pair sampling seed (and --random_init weights)")
    parser.add_argument("--json", default=None, help="write the result here as JSON")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def run(args: argparse.Namespace) -> int:
    from lipsync_jax.eval.report import write_json
    from lipsync_jax.eval.sync_eval import load_syncnet
    from lipsync_jax.eval.syncnet_acc import syncnet_accuracy

    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    syncnet = load_syncnet(args.syncnet_checkpoint, args.config, random_init=args.random_init, seed=args.seed,
                           resolution=args.resolution)
    result = syncnet_accuracy(syncnet, args.data_dir, num_samples=args.num_samples, batch_size=args.batch_size,
                              seed=args.seed, threshold=args.threshold, progress=not args.no_progress)
    print(f"SyncNet accuracy: {result.accuracy:.4f} on {result.num_pairs} pairs (in sync {result.in_sync_accuracy:.4f} "
          f"of {result.num_in_sync}, off sync {result.off_sync_accuracy:.4f} of {result.num_off_sync}; threshold "
          f"{result.threshold:g}; mean similarity {result.mean_similarity_in_sync:.4f} in sync, "
          f"{result.mean_similarity_off_sync:.4f} off sync)")
    if args.json:
        write_json(args.json, result.to_dict())
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from lipsync_jax.data.records import DatasetFormatError
    from lipsync_jax.eval.cli import run_main
    from lipsync_jax.eval.report import INPUT_ERRORS

    return run_main(run, args, (DatasetFormatError, *INPUT_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
