"""Export the trained parameters of a training run as a converted-weights folder, the form
infer.py, eval and ``ckpt.resume_ckpt_path`` read (``lipsync_jax.checkpoints``):

    python -m lipsync_jax.train.export --workdir runs/finetune --config configs/unet/finetune.py \\
        --dst checkpoints/jax/unet_finetuned [--step N] [--ema]
    python infer.py --config configs/unet/finetune.py --checkpoint checkpoints/jax/unet_finetuned ...

Reads ``<workdir>/checkpoints/<step>/state`` (the latest step unless ``--step``) without the
optimizer's structure (only ``params`` is kept; ``--ema``: the EMA of the params instead, the
target network of a distillation run), and writes ``<dst>/params`` with the config's ``model``
section as ``config.json``. For a distillation config (a ``distill`` section) ``metadata.json``
says it is a student and of what (``lipsync_jax.distilled.student_metadata``). Bad input -> one
line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np


class ExportError(ValueError):
    """The workdir holds no usable training checkpoint."""


def read_trained_params(workdir: str, step: int | None = None, ema: bool = False) -> tuple[Any, int]:
    """(numpy params, step) of a training checkpoint in ``<workdir>/checkpoints`` (``ema``: the
    EMA of the params, which a run keeps when its task has one)."""
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
    name = "ema_params" if ema else "params"
    if name not in restored["state"]:
        raise ExportError(f"{directory}: the checkpoint at step {step} has no EMA of the params (its task keeps none)")
    params = jax.tree.map(lambda x: np.asarray(x, np.float32) if np.issubdtype(np.asarray(x).dtype, np.floating)
                          else np.asarray(x), restored["state"][name])
    return params, step


def export(workdir: str, dst: str, config: Any, step: int | None = None, ema: bool = False) -> str:
    from lipsync_jax import checkpoints, config_utils
    from lipsync_jax.distilled import STUDENT_KEY, student_metadata

    params, step = read_trained_params(workdir, step, ema)
    cfg = config_utils.config_to_dict(config)
    metadata: dict[str, Any] = {"source": os.path.abspath(workdir), "training_step": step}
    if ema:
        metadata["ema"] = True  # the EMA of the params, not the params
    if "distill" in cfg:
        metadata[STUDENT_KEY] = student_metadata(cfg["distill"], step)
    return checkpoints.save_params(dst, params, cfg["model"], metadata=metadata)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="train.py --workdir of the run")
    parser.add_argument("--config", required=True, help="the run's config (its model section is saved beside)")
    parser.add_argument("--dst", required=True, help="output folder (converted-weights layout)")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    parser.add_argument("--ema", action="store_true", help="export the EMA of the params (a distillation run's "
                        "target network) instead of the params")
    args = parser.parse_args(argv)
    from lipsync_jax import config_utils

    try:
        config = config_utils.load_config(config_utils.resolve_path(args.config))
        path = export(args.workdir, args.dst, config, args.step, args.ema)
    except (ExportError, config_utils.ConfigError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
