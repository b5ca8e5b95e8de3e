"""FVD between generated and reference face videos, as LatentSync's eval/eval_fvd.py measures it.

    python eval/fvd.py --generated results/ --reference originals/ --i3d_checkpoint checkpoints/jax/i3d \\
        [--json fvd.json] [--batch_size 8]
    python eval/fvd.py --generated results/ --reference originals/ --random_init   # smoke test only

Each video gives one 16-frame clip (frames 20..35, the first MediaPipe face box per frame, resized
to 224x224); the FVD features are the Kinetics-400 I3D's 400-d logits; the distance is the
Frechet distance in float64. FVD numbers differ between implementations (I3D export, clip length,
sampling, sample count): compare only numbers computed the same way. Needs >= 2 usable videos per
side. --i3d_checkpoint: a folder from `python -m lipsync_jax.convert i3d` or rgb_imagenet.pt.
Library: lipsync_jax.eval.fvd. Exit status: 0 computed (videos that could not be used are listed),
1 bad input.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

RANDOM_WARNING = ("WARNING: --random_init: the I3D has RANDOM weights. The FVD below is MEANINGLESS "
                  "(smoke test only); use --i3d_checkpoint with pytorch-i3d's rgb_imagenet.pt (or its conversion).")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generated", required=True, help="folder of generated videos (or one video)")
    parser.add_argument("--reference", required=True, help="folder of reference videos (or one video)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--i3d_checkpoint", help="converted I3D folder or pytorch-i3d rgb_imagenet.pt")
    weights.add_argument("--random_init", action="store_true", help="random I3D weights (smoke tests only)")
    parser.add_argument("--seed", type=int, default=0, help="PRNG seed for --random_init")
    parser.add_argument("--narrow_by", type=int, default=1, help="with --random_init: divide the I3D's widths by "
                        "this (faster smoke tests)")
    parser.add_argument("--batch_size", type=int, default=8, help="clips per I3D batch")
    parser.add_argument("--json", default=None, help="write the result here as JSON")
    parser.add_argument("--noprogress", action="store_true", help="no progress bars")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def run(args: argparse.Namespace) -> int:
    from lipsync_jax.eval.fvd import fvd_of_videos, list_videos, load_i3d
    from lipsync_jax.eval.report import write_json

    generated, reference = list_videos(args.generated), list_videos(args.reference)  # before loading weights
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    config = {"narrow_by": args.narrow_by} if args.random_init else None
    i3d = load_i3d(args.i3d_checkpoint, random_init=args.random_init, seed=args.seed, batch_size=args.batch_size,
                   config=config)
    result = fvd_of_videos(generated, reference, i3d, progress=not args.noprogress)
    for error in result.errors.values():
        print(f"skipped: {error}", file=sys.stderr)
    print(f"FVD: {result.fvd:.3f} ({len(result.generated)} generated vs {len(result.reference)} reference clips, "
          f"I3D logits, {i3d.source})")
    if args.json:
        write_json(args.json, {**result.to_dict(), "i3d": i3d.source, "random_init": i3d.random_init})
    if args.random_init:
        print(RANDOM_WARNING, file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1 or args.narrow_by < 1:
        _parser().error("--batch_size and --narrow_by must be >= 1")
    if args.narrow_by != 1 and not args.random_init:
        _parser().error("--narrow_by only goes with --random_init (checkpoints fix the widths)")
    from lipsync_jax.convert.rules import ConversionError
    from lipsync_jax.eval.cli import run_main
    from lipsync_jax.eval.fvd import FVDError
    from lipsync_jax.eval.report import INPUT_ERRORS

    return run_main(run, args, (FVDError, ConversionError, *INPUT_ERRORS))


if __name__ == "__main__":
    sys.exit(main())
