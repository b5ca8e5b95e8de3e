"""The training loop shared by the UNet and SyncNet tasks: mesh, sharded state, jitted step
with donated state, checkpoints (periodic, on SIGTERM, automatic resume), metrics, validation
(loss terms on a held-out batch and, for the UNet with ``run.val_inference``, inference on the
val clip + SyncNet score: lipsync_jax.train.validation).

    run_training(task, config, workdir)   # returns the final TrainState; TrainingPreempted
                                          # after a SIGTERM's checkpoint

The host never waits on the device between log steps: each step's metrics stay on the device
and are fetched every ``run.log_every_steps`` (default 10) steps in one ``jax.device_get``; the
next input batches are read and put on the devices (``run.prefetch_batches``, default 2) while
the current step runs. A fetch also happens before every checkpoint save and validation, and
the fetched values are checked: a non-finite loss term, loss or grad norm stops the run with
``NonFiniteError`` (one line: step and term) before anything new is saved; with
``run.skip_nonfinite_updates`` the step itself keeps the previous params/optimizer state
instead (``skipped_update`` = 1 in that step's metrics) and the run goes on.

Preemption: SIGTERM sets a flag. One process checks it after every step; several processes
agree at every log step (an all-gather of the flags), so a signal to ANY process makes all of
them save the same step and stop; ``run_training`` then raises ``TrainingPreempted`` (train.py
exits with ``PREEMPTED_EXIT_STATUS``, 143, so that a scheduler can tell a preemption from a
finished run, which exits 0).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax import sharding as sharding_lib
from lipsync_jax.train.checkpointing import PreemptionFlag, TrainCheckpointer
from lipsync_jax.train.metrics import MetricsLogger, PendingMetrics, first_nonfinite
from lipsync_jax.train.state import TrainState, make_optimizer
from lipsync_jax.train.task import TrainTask
from lipsync_jax.train.validation import METRIC_PREFIX, host_params, make_validator
from lipsync_jax.tree_utils import count_params

log = logging.getLogger(__name__)
DEFAULT_LOG_EVERY = 10
DEFAULT_PREFETCH = 2
# How long a process waits for the others at a start-up barrier (one may compile for many
# minutes while another one finds everything in its compile cache).
BARRIER_TIMEOUT_S = 3600
# train.py's exit status after a preemption save (128 + SIGTERM, the shell's code for a process
# ended by SIGTERM); 0 means the run reached run.max_train_steps
PREEMPTED_EXIT_STATUS = 128 + int(signal.SIGTERM)


class TrainingPreempted(RuntimeError):
    """A SIGTERM stopped the run after its checkpoint at ``step`` was saved (rerun to resume)."""

    def __init__(self, step: int, directory: str):
        super().__init__(f"preempted: saved step {step} to {directory}; rerun the same command to resume")
        self.step, self.directory = step, directory


class NonFiniteError(RuntimeError):
    """A logged step has a non-finite loss term, loss or grad norm (the run stops unsaved)."""

    def __init__(self, step: int, term: str, value: float, last_saved: int | None):
        kept = f"the last checkpoint (step {last_saved}) is intact" if last_saved is not None else "no checkpoint"
        super().__init__(f"non-finite {term} ({value}) at step {step}: training stopped, nothing saved after it "
                         f"({kept}); lower optimizer.lr, check the data, or set run.skip_nonfinite_updates=True")
        self.step, self.term = step, term


def _place(tree: Any, shardings: Any) -> Any:
    """Host numpy tree -> global arrays with ``shardings`` (works with several processes: every
    process holds the full host copy and contributes its addressable shards)."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, shardings)


def _abstract(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype if not hasattr(x, "dtype")
                                                       else x.dtype), tree)


def create_state(task: TrainTask, config: Any, mesh) -> tuple[TrainState, Any, Any]:
    """(state, frozen params, lr schedule), all placed on ``mesh``. Shardings come from flax: the
    train state is built abstractly on parameters boxed with their logical names
    (``mesh.state_shardings``); frozen networks by ``mesh.frozen_shardings``."""
    run = config["run"]
    seed = int(run["seed"])
    rules = sharding_lib.rules_from_config(config["mesh"])
    key_params, key_frozen, key_state = jax.random.split(jax.random.key(seed), 3)
    tx, schedule = make_optimizer(config["optimizer"], int(run["max_train_steps"]), jax.process_count(),
                                  task.trainable)
    create = lambda p, r: TrainState.create(p, tx, r, ema_decay=task.ema_decay)  # noqa: E731
    boxed = sharding_lib.box_params(task.param_shapes, task.logical_specs)
    target = sharding_lib.state_shardings(jax.eval_shape(create, boxed, key_state), mesh, rules)
    pretrained = task.pretrained()
    if pretrained is None:
        params = jax.jit(task.init_params, out_shardings=target.params)(key_params)
    else:
        params = _place(pretrained, target.params)
    state = jax.jit(create, out_shardings=target, donate_argnums=0)(params, key_state)

    min_mib = float(config["mesh"].get("frozen_shard_min_mib", sharding_lib.FROZEN_SHARD_MIN_MIB))
    overrides = task.pretrained_frozen()
    random_shapes = jax.eval_shape(task.init_frozen, key_frozen)
    random_sh = sharding_lib.frozen_shardings(random_shapes, mesh, rules, min_mib)
    frozen = dict(jax.jit(task.init_frozen, out_shardings=random_sh)(key_frozen))
    for name, value in overrides.items():
        sharding = sharding_lib.frozen_shardings({name: _abstract(value)}, mesh, rules, min_mib)[name]
        frozen[name] = _place(value, sharding)
    return state, frozen, schedule


def write_shardings(path: str, tree: Any) -> None:
    """``{leaf path: {shape, spec, shard_shape}}`` of a tree of arrays (a record of the layout)."""
    out = {}
    for key, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array):
            spec = getattr(leaf.sharding, "spec", None)
            out[jax.tree_util.keystr(key)] = dict(shape=list(leaf.shape), spec=str(spec),
                                                  shard_shape=list(leaf.sharding.shard_shape(leaf.shape)))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


def guarded_step(train_step: Callable, schedule: Callable, skip_nonfinite: bool) -> Callable:
    """The task's step plus ``lr`` in its metrics and, with ``skip_nonfinite``, the update kept
    only when the loss and grad norm are finite (``jnp.where`` on params, optimizer state and
    the EMA params; ``skipped_update`` 1.0 when it was dropped). The step counter advances
    either way."""
    def step(state: TrainState, frozen: Any, batch: Any):
        new_state, metrics = train_step(state, frozen, batch)
        metrics = dict(metrics, lr=jnp.asarray(schedule(state.step), jnp.float32))
        if skip_nonfinite:
            finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(metrics["grad_norm"])
            keep = lambda new, old: jnp.where(finite, new, old)  # noqa: E731
            new_state = new_state.replace(params=jax.tree.map(keep, new_state.params, state.params),
                                          opt_state=jax.tree.map(keep, new_state.opt_state, state.opt_state),
                                          ema_params=jax.tree.map(keep, new_state.ema_params, state.ema_params))
            metrics["skipped_update"] = 1.0 - finite.astype(jnp.float32)
        return new_state, metrics
    return step


class DevicePrefetch:
    """Batches read from ``iterator`` and put on the devices ``size`` steps ahead. ``get_state``
    is the data state after the last batch the loop CONSUMED (what a checkpoint must record),
    not after the prefetched ones. ``wait_s`` accumulates the host time spent reading and
    placing batches."""

    def __init__(self, iterator: Iterator, place: Callable[[Any], Any], size: int = DEFAULT_PREFETCH):
        self.iterator, self.place, self.size = iterator, place, max(1, int(size))
        self.queue: collections.deque = collections.deque()
        self.consumed_state = iterator.get_state()
        self.wait_s = 0.0

    def fill(self) -> None:
        while len(self.queue) < self.size:
            start = time.perf_counter()
            batch = self.place(next(self.iterator))
            self.queue.append((batch, self.iterator.get_state()))
            self.wait_s += time.perf_counter() - start

    def __next__(self) -> Any:
        if not self.queue:
            self.fill()
        batch, self.consumed_state = self.queue.popleft()
        return batch

    def get_state(self) -> Any:
        return self.consumed_state

    def peek(self) -> Any:
        """The next batch (placed on the devices) without consuming it."""
        self.fill()
        return self.queue[0][0]


def wait_for_all_processes(name: str, timeout_s: float = BARRIER_TIMEOUT_S) -> None:
    """A barrier through jax.distributed's coordination service (nothing with one process).

    Needed before a first collective: gloo, JAX's CPU collectives, gives the processes only
    30 s to meet when it sets up a collective, so one process that compiles for minutes while
    another finds the program in its compile cache (the persistent cache is written by process
    0 only, and on CPU each process has its own cache keys) fails the run with "Gloo context
    initialization failed". The coordination service's barrier waits ``timeout_s``."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # the client JAX's own multi-process tests use for barriers

    distributed.global_state.client.wait_at_barrier(f"lipsync_jax_train/{name}", int(timeout_s * 1000))


def compile_together(jitted: Callable, name: str, *args: Any) -> Callable:
    """``jitted`` compiled ahead of its first call for ``args`` (shapes and shardings), then a
    barrier, so that every process starts the program's collectives at the same time."""
    compiled = jitted.lower(*args).compile()
    wait_for_all_processes(name)
    return compiled


def processes_with_flag(flag: bool) -> list[int]:
    """The indices of the processes whose ``flag`` is set, the same list on every process (an
    all-gather: every process must call it at the same step; one process: no communication)."""
    if jax.process_count() == 1:
        return [0] if flag else []
    from jax.experimental import multihost_utils
    flags = np.asarray(multihost_utils.process_allgather(np.asarray([int(flag)], np.int32))).reshape(-1)
    return [int(i) for i in np.flatnonzero(flags)]


def preemption_message(signalled: list[int], step: int, directory: str) -> str:
    """What each process logs when it stops for a SIGTERM (its own or another process's)."""
    if jax.process_count() == 1:
        return f"SIGTERM: saved step {step} to {directory}, exiting"
    me = jax.process_index()
    who = ", ".join(str(i) for i in signalled)
    cause = f"this process ({me})" if signalled == [me] else f"process{'es' if len(signalled) > 1 else ''} {who}"
    return (f"SIGTERM to {cause}: all {jax.process_count()} processes agreed to stop at step {step}; "
            f"saved step {step} to {directory}, exiting")


def parse_profile_steps(text: str | None) -> tuple[int, int] | None:
    """``"a:b"`` -> (a, b): trace steps a+1..b (``a`` steps done when tracing starts)."""
    if not text:
        return None
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise ValueError(f"--profile_steps={text!r}: expected FIRST:LAST step numbers, e.g. 10:15") from None
    if not 0 <= a < b:
        raise ValueError(f"--profile_steps={text!r}: need 0 <= FIRST < LAST")
    return a, b


def run_training(task: TrainTask, config: Any, workdir: str, stop_after_steps: int | None = None,
                 progress: bool = True, profile_steps: tuple[int, int] | None = None) -> TrainState:
    os.makedirs(workdir, exist_ok=True)
    run = config["run"]
    mesh = sharding_lib.make_mesh(config["mesh"])
    max_steps = int(run["max_train_steps"])
    log_every = max(1, int(run.get("log_every_steps", DEFAULT_LOG_EVERY)))
    skip_nonfinite = bool(run.get("skip_nonfinite_updates", False))
    primary = jax.process_index() == 0
    multi = jax.process_count() > 1
    state, frozen, schedule = create_state(task, config, mesh)
    if primary:
        write_shardings(os.path.join(workdir, "state_shardings.json"), state)
        write_shardings(os.path.join(workdir, "frozen_shardings.json"), frozen)
        log.info("mesh %s; %s params: %d (trainable %d)", dict(mesh.shape), task.name,
                 count_params(state.params), count_params(state.params, task.trainable))

    wait_for_all_processes("state_created")  # orbax's first barrier below is a (gloo) collective
    ckpt = TrainCheckpointer(workdir, save_every=int(config["ckpt"]["save_ckpt_steps"]))
    data = task.make_data(jax.process_index(), jax.process_count())
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, data_state = restored
        if data_state is not None:
            data.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, ckpt.latest_step())
    last_saved = ckpt.latest_step()

    state_sh = jax.tree.map(lambda x: x.sharding, state)
    frozen_sh = jax.tree.map(lambda x: x.sharding, frozen)
    rep = sharding_lib.replicated(mesh)
    rules = sharding_lib.rules_from_config(config["mesh"])  # also the activations' (traced under the mesh)
    step_fn = jax.jit(sharding_lib.with_activation_sharding(guarded_step(task.train_step, schedule, skip_nonfinite),
                                                        mesh, rules, batch_argnum=2),
                      in_shardings=(state_sh, frozen_sh, None), out_shardings=(state_sh, rep), donate_argnums=(0,))
    eval_fn = jax.jit(sharding_lib.with_activation_sharding(task.eval_step, mesh, rules, batch_argnum=2),
                      out_shardings=rep)
    val_batch = None
    validator = make_validator(task.name, config, workdir, frozen)

    start = int(jax.device_get(state.step))
    logger = MetricsLogger(workdir, max_steps, start, enabled=primary, progress=progress)
    pending = PendingMetrics()
    batches = DevicePrefetch(data, lambda b: sharding_lib.shard_batch(b, mesh),
                             int(run.get("prefetch_batches", DEFAULT_PREFETCH)))
    if multi:  # all processes start the step's collectives together (see wait_for_all_processes)
        step_fn = compile_together(step_fn, "train_step_compiled", state, frozen, batches.peek())
    preempted = PreemptionFlag()
    preempted_at = None
    window = dict(time=time.perf_counter(), step=start, wait=0.0)
    tracing = False

    def flush(done: int) -> None:
        """Fetch the pending metrics (one device_get), write them, stop on a non-finite value."""
        records = pending.fetch()
        if not records:
            return
        now = time.perf_counter()
        steps = max(1, done - window["step"])
        timing = dict(steps_per_s=steps / max(now - window["time"], 1e-9),
                      data_wait_s=(batches.wait_s - window["wait"]) / steps)
        window.update(time=now, step=done, wait=batches.wait_s)
        bad = None if skip_nonfinite else first_nonfinite(records)
        for step, record in records:
            if bad is not None and step > bad[0]:
                break
            logger.log(step, dict(record, **timing) if step == done else record)
        if bad is not None:
            raise NonFiniteError(*bad, last_saved=last_saved)

    try:
        for step in range(start, max_steps):
            if profile_steps is not None and step == profile_steps[0] and not tracing:
                jax.profiler.start_trace(os.path.join(workdir, "profile"))
                tracing = True
            batch = next(batches)
            state, metrics = step_fn(state, frozen, batch)
            batches.fill()  # read + place the next batches while the device runs this step
            done = step + 1
            pending.add(done, metrics)
            if tracing and done == profile_steps[1]:
                jax.block_until_ready(state)
                jax.profiler.stop_trace()
                tracing = False
                log.info("profile of steps %d-%d written to %s", profile_steps[0] + 1, done,
                         os.path.join(workdir, "profile"))
            if stop_after_steps is not None and done == stop_after_steps:
                os.kill(os.getpid(), signal.SIGTERM)  # debug: behave exactly as a preemption
            log_step = done % log_every == 0 or done == max_steps
            # several processes: all agree at log steps (the same steps everywhere) through a collective
            signalled = processes_with_flag(preempted.is_set) if (log_step or not multi) else []
            stop = bool(signalled)
            validate = bool(task.validation_every) and done % task.validation_every == 0
            save = stop or ckpt.should_save(done) or done == max_steps
            if log_step or save or validate:
                flush(done)  # non-finite -> NonFiniteError before anything is saved
            if save and ckpt.maybe_save(done, state, batches.get_state(), force=True):
                last_saved = done
            if stop:
                log.warning("%s", preemption_message(signalled, done, ckpt.directory))
                preempted_at = done
                break
            if validate:
                if task.make_val_data is not None:
                    if val_batch is None:
                        val_batch = sharding_lib.shard_batch(next(task.make_val_data(jax.process_index(),
                                                                                 jax.process_count())), mesh)
                        if multi:
                            eval_fn = compile_together(eval_fn, "eval_step_compiled", state.params, frozen,
                                                       val_batch, jax.random.key(0))
                    val = jax.device_get(eval_fn(state.params, frozen, val_batch, jax.random.key(0)))
                    logger.log(done, val, prefix="val/")
                if validator is not None:  # inference on the val clip; never raises
                    params = host_params(state.params)
                    if primary:
                        logger.log(done, validator(done, params), prefix=METRIC_PREFIX)
    finally:
        if tracing:
            jax.profiler.stop_trace()
        preempted.restore_handlers()
        ckpt.close()
        logger.close()
    if preempted_at is not None:
        raise TrainingPreempted(preempted_at, ckpt.directory)
    return state
