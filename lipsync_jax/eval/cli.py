"""What the eval/*.py command-line scripts share: the one-line error exit and the SyncNet
checkpoint arguments. Kept free of heavy imports so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


def run_main(run: Callable[[argparse.Namespace], int], args: argparse.Namespace,
             errors: tuple[type[BaseException], ...]) -> int:
    """``run(args)``'s exit status; one of ``errors`` becomes one ``error: ...`` line on stderr and
    exit status 1 (with ``args.debug`` it propagates, traceback and all)."""
    try:
        return run(args)
    except errors as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


def add_syncnet_arguments(parser: argparse.ArgumentParser, resolution_help: str) -> None:
    """--syncnet_checkpoint | --random_init (one required), --config and --resolution."""
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--syncnet_checkpoint", help="folder from `python -m lipsync_jax.convert syncnet`")
    weights.add_argument("--random_init", action="store_true", help="random SyncNet weights (smoke tests only)")
    parser.add_argument("--config", default=None, help="SyncNet config (.py/.json); default: the checkpoint's "
                        "config.json, else configs/syncnet/syncnet_16_pixel_attn.py")
    parser.add_argument("--resolution", type=int, default=None, help=resolution_help)
