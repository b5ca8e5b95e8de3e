"""Split source videos into train / validation file lists before data_prep (fine-tuning recipe):

    python -m data_prep.split --input_dir my_videos/ --output_dir data/finetune [--val_count 1] [--seed 0]

writes ``output_dir/train_files.txt`` and ``output_dir/val_files.txt`` (absolute paths, one per
line, the format ``python -m data_prep --file_list`` reads). ``--val_count`` sources, drawn with
``--seed`` from the sorted list, are held out whole: none of their clips reach the training set,
and training validates on the first of them (``--config.data.val_video_path``). Rerunning with
the same sources and seed gives the same split. Bad input -> one line, exit status 2.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
from collections.abc import Sequence

from data_prep.prepare import PrepError, list_sources

TRAIN_LIST = "train_files.txt"
VAL_LIST = "val_files.txt"


def split_sources(sources: Sequence[str], val_count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, val): ``val_count`` of the sorted ``sources`` drawn with ``seed``; at least one
    source is left for training."""
    ordered = sorted(sources)
    if val_count < 0:
        raise PrepError(f"--val_count {val_count}: must be >= 0")
    if val_count >= len(ordered):
        raise PrepError(f"--val_count {val_count}: only {len(ordered)} source video(s); keep at least one for "
                        "training")
    held_out = set(random.Random(seed).sample(ordered, val_count))
    return [p for p in ordered if p not in held_out], [p for p in ordered if p in held_out]


def write_list(path: str, paths: Sequence[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(p + "\n" for p in paths)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input_dir", help="folder of source videos (searched recursively)")
    parser.add_argument("--file_list", help="text file with one video path per line")
    parser.add_argument("--output_dir", required=True, help="where train_files.txt and val_files.txt go")
    parser.add_argument("--val_count", type=int, default=1, help="source videos held out for validation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        train, val = split_sources(list_sources(args.input_dir, args.file_list), args.val_count, args.seed)
        os.makedirs(args.output_dir, exist_ok=True)
    except (PrepError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    write_list(os.path.join(args.output_dir, TRAIN_LIST), train)
    write_list(os.path.join(args.output_dir, VAL_LIST), val)
    print(f"{len(train)} training and {len(val)} held-out source video(s): "
          f"{os.path.join(args.output_dir, TRAIN_LIST)}, {os.path.join(args.output_dir, VAL_LIST)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
