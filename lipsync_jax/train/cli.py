"""``train.py`` / ``lipsync-train``: train LatentSync's UNet (stage 1 / stage 2) or its SyncNet on a
device mesh.

    python train.py --config=configs/unet/stage1.py --workdir=runs/stage1
    python train.py --config=configs/unet/tiny.py --workdir=/tmp/w --config.run.max_train_steps=3 \\
        "--config.mesh.shape=(4, 2)"
    python train.py --config=configs/syncnet/tiny.py --workdir=/tmp/s

A UNet config has ``model.in_channels``; a SyncNet config has ``model.audio_encoder``; a
config with a ``distill`` section distils a UNet teacher into a consistency student
(configs/unet/distill.py). A ``--workdir`` that holds a checkpoint resumes from it (same data
position and RNG). SIGTERM saves a checkpoint and exits with status 143 (with several processes, a
SIGTERM to any of them makes all save the same step and exit 143); 0 means training finished
(``run.max_train_steps``), 1 a non-finite loss. A non-finite loss term or grad norm stops the run
with one line naming the step and the term, saving nothing new. ``--profile_steps=10:15`` writes a
jax.profiler trace of those steps. Several processes (one per host): pass --coordinator_address,
--num_processes and --process_id (or let ``jax.distributed.initialize()`` read the cluster's
environment: set --distributed); each process reads its own share of every batch.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags

from lipsync_jax import cli_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    cli_flags.define_config_flags()
    flags.DEFINE_string("workdir", None, "Output folder: checkpoints, metrics.jsonl, TensorBoard events.",
                        required=True)
    flags.DEFINE_string("data", "auto", "Batch source: 'auto' (grain when config.data.train_data_dir is set, else "
                        "synthetic with a warning), 'synthetic' (deterministic fake clips), "
                        "'grain' (lipsync_jax.data loaders over config.data.train_data_dir), or "
                        "'synthetic_fixed' / 'grain_fixed' (the first batch repeated: overfitting runs).")
    flags.DEFINE_integer("stop_after_steps", None, "Debug: send SIGTERM to this process after this step.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (cluster auto-detection).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs.")
    flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
    flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.DEFINE_string("profile_steps", None, "FIRST:LAST: write a jax.profiler trace of steps FIRST+1..LAST to "
                        "WORKDIR/profile (view with TensorBoard's profile plugin or Perfetto).")


def init_distributed() -> None:
    import jax

    if FLAGS.coordinator_address or FLAGS.num_processes or FLAGS.distributed:
        # CPU processes need a collectives backend (GPU/TPU use their own; the flag only
        # affects the CPU client, and must be set before any backend starts).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                                   num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)


def main(argv):
    del argv
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax logs every save step at INFO
    init_distributed()
    from lipsync_jax.train.data_sources import resolve_source
    from lipsync_jax.train.loop import (
        PREEMPTED_EXIT_STATUS,
        NonFiniteError,
        TrainingPreempted,
        parse_profile_steps,
        run_training,
    )
    from lipsync_jax.train.tasks import build_task

    config = cli_flags.resolved_config(FLAGS)
    try:
        profile_steps = parse_profile_steps(FLAGS.profile_steps)
    except ValueError as error:
        raise app.UsageError(str(error)) from None
    task = build_task(config, resolve_source(config, FLAGS.data))
    try:
        run_training(task, config, FLAGS.workdir, stop_after_steps=FLAGS.stop_after_steps, progress=FLAGS.progress,
                     profile_steps=profile_steps)
    except NonFiniteError as error:  # one clear line; the last good checkpoint stays as it was
        print(f"error: {error}", file=sys.stderr)
        return 1
    except TrainingPreempted as stopped:  # saved; a distinct status so a scheduler requeues the job
        print(str(stopped), file=sys.stderr)
        return PREEMPTED_EXIT_STATUS
    return 0


def entry() -> None:
    """The console script (``lipsync-train``) and ``python train.py``."""
    define_flags()
    cli_flags.show_in_help(FLAGS)
    app.run(main)
