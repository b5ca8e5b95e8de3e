"""Export the trained parameters of a training run as a converted-weights folder, the form
infer.py, eval and ``ckpt.resume_ckpt_path`` read (``lipsync_jax.checkpoints``):

    python -m lipsync_jax.train.export --workdir runs/finetune --config configs/unet/finetune.py \\
        --dst checkpoints/jax/unet_finetuned [--step N]
    python infer.py --config configs/unet/finetune.py --checkpoint checkpoints/jax/unet_finetuned ...

Reads ``<workdir>/checkpoints/<step>/state`` (the latest step unless ``--step``) without the
optimizer's structure (only ``params`` is kept), and writes ``<dst>/params`` with the config's
``model`` section as ``config.json``. Bad input -> one line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

import numpy as np


class ExportError(ValueError):
    """The workdir holds no usable training checkpoint."""


def read_trained_params(workdir: str, step: int | None = None) -> tuple[Any, int]:
    """(numpy params, step) of a training checkpoint in ``<workdir>/checkpoints``."""
    import jax
    import orbax.checkpoint as ocp

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise ExportError(f"{directory}: no training checkpoints (was train.py run with --workdir={workdir}?)")
    manager = ocp.CheckpointManager(directory, item_names=("state",))
    try:
        steps = manager.all_steps()
        if not steps:
            raise ExportError(f"{directory}: no finished checkpoint")
        step = max(steps) if step is None else int(step)
        if step not in steps:
            raise ExportError(f"{directory}: no checkpoint at step {step} (have {sorted(steps)})")
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    finally:
        manager.close()
    params = jax.tree.map(lambda x: np.asarray(x, np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating)
                          else np.asarray(x), restored["state"]["params"])
    return params, step


def export(workdir: str, dst: str, config: Any, step: int | None = None) -> str:
    from lipsync_jax import checkpoints, config_utils

    params, step = read_trained_params(workdir, step)
    model = config_utils.config_to_dict(config)["model"]
    return checkpoints.save_params(dst, params, model, metadata={"source": os.path.abspath(workdir),
                                                                  "training_step": step})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="train.py --workdir of the run")
    parser.add_argument("--config", required=True, help="the run's config (its model section is saved beside)")
    parser.add_argument("--dst", required=True, help="output folder (converted-weights layout)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    args = parser.parse_args(argv)
    from lipsync_jax import config_utils

    try:
        config = config_utils.load_config(config_utils.resolve_path(args.config))
        path = export(args.workdir, args.dst, config, args.step)
    except (ExportError, config_utils.ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
