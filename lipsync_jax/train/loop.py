"""The training loop shared by the UNet and SyncNet tasks: mesh, sharded state, jitted step
with donated state, checkpoints (periodic, on SIGTERM, automatic resume), metrics, validation
(loss terms on a held-out batch and, for the UNet with ``run.val_inference``, inference on the
val clip + SyncNet score: lipsync_jax.train.validation).

    run_training(task, config, workdir)   # returns the final TrainState
"""

from __future__ import annotations

import json
import logging
import os
import signal
from typing import Any

import jax
import numpy as np

from lipsync_jax.train import mesh as mesh_lib
from lipsync_jax.train.checkpointing import PreemptionFlag, TrainCheckpointer
from lipsync_jax.train.metrics import MetricsLogger
from lipsync_jax.train.state import TrainState, count_params, make_optimizer
from lipsync_jax.train.task import TrainTask
from lipsync_jax.train.validation import METRIC_PREFIX, host_params, make_validator

log = logging.getLogger(__name__)


def _place(tree: Any, shardings: Any) -> Any:
    """Host numpy tree -> global arrays with ``shardings`` (works with several processes: every
    process holds the full host copy and contributes its addressable shards)."""
    return jax.tree.map(lambda x, s: jax.make_array_from_callback(np.shape(x), s, lambda idx: np.asarray(x)[idx]),
                        tree, shardings)


def _trailing_dict_keys(path) -> tuple:
    keys = []
    for entry in reversed(path):
        if not isinstance(entry, jax.tree_util.DictKey):
            break
        keys.append(entry.key)
    return tuple(reversed(keys))


def state_shardings(abstract_state: TrainState, param_shardings: Any, mesh) -> TrainState:
    """Shardings of a whole TrainState: params as given; every optimizer-state leaf that
    mirrors a parameter (Adam's mu/nu: same trailing dict path and shape) like that parameter;
    everything else (counts, rng, step) replicated."""
    by_path = {_trailing_dict_keys(path): (leaf.shape, sharding) for (path, leaf), sharding in zip(
        jax.tree_util.tree_leaves_with_path(abstract_state.params), jax.tree.leaves(param_shardings))}
    rep = mesh_lib.replicated(mesh)

    def for_opt_leaf(path, leaf):
        shape, sharding = by_path.get(_trailing_dict_keys(path), (None, rep))
        return sharding if shape == leaf.shape else rep

    return abstract_state.replace(step=rep, rng=rep, params=param_shardings,
                                  opt_state=jax.tree_util.tree_map_with_path(for_opt_leaf, abstract_state.opt_state))


def create_state(task: TrainTask, config: Any, mesh) -> tuple[TrainState, Any, Any]:
    """(state, frozen params, lr schedule), all placed on ``mesh``."""
    run = config["run"]
    seed = int(run["seed"])
    shardings = mesh_lib.param_shardings(task.logical_specs, task.param_shapes, mesh)
    key_params, key_frozen, key_state = jax.random.split(jax.random.PRNGKey(seed), 3)
    pretrained = task.pretrained()
    if pretrained is None:
        params = jax.jit(task.init_params, out_shardings=shardings)(key_params)
    else:
        params = _place(pretrained, shardings)
    tx, schedule = make_optimizer(config["optimizer"], int(run["max_train_steps"]), jax.process_count(),
                                  task.trainable)
    create = lambda p, r: TrainState.create(p, tx, r)  # noqa: E731
    target = state_shardings(jax.eval_shape(create, params, key_state), shardings, mesh)
    state = jax.jit(create, out_shardings=target, donate_argnums=0)(params, key_state)
    rep = mesh_lib.replicated(mesh)
    frozen = jax.jit(task.init_frozen, out_shardings=rep)(key_frozen)
    for name, value in task.pretrained_frozen().items():
        frozen[name] = _place(value, jax.tree.map(lambda _x: rep, value))
    return state, frozen, schedule


def write_shardings(path: str, state: TrainState) -> None:
    """``{leaf path: {shape, spec, shard_shape}}`` of the train state (a record of the layout)."""
    out = {}
    for key, leaf in jax.tree_util.tree_leaves_with_path(state):
        if isinstance(leaf, jax.Array):
            spec = getattr(leaf.sharding, "spec", None)
            out[jax.tree_util.keystr(key)] = dict(shape=list(leaf.shape), spec=str(spec),
                                                  shard_shape=list(leaf.sharding.shard_shape(leaf.shape)))
    with open(path, "w", encoding="utf-8") as f:
        json.dump(out, f, indent=1)


def run_training(task: TrainTask, config: Any, workdir: str, stop_after_steps: int | None = None,
                 progress: bool = True) -> TrainState:
    os.makedirs(workdir, exist_ok=True)
    mesh = mesh_lib.make_mesh(config["mesh"])
    max_steps = int(config["run"]["max_train_steps"])
    primary = jax.process_index() == 0
    state, frozen, schedule = create_state(task, config, mesh)
    if primary:
        write_shardings(os.path.join(workdir, "state_shardings.json"), state)
        log.info("mesh %s; %s params: %d (trainable %d)", dict(mesh.shape), task.name,
                 count_params(state.params), count_params(state.params, task.trainable))

    ckpt = TrainCheckpointer(workdir, save_every=int(config["ckpt"]["save_ckpt_steps"]))
    data = task.make_data(jax.process_index(), jax.process_count())
    restored = ckpt.restore_latest(state)
    if restored is not None:
        state, data_state = restored
        if data_state is not None:
            data.set_state(data_state)
        log.info("resumed from %s at step %d", ckpt.directory, int(state.step))

    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)
    rep = mesh_lib.replicated(mesh)
    step_fn = jax.jit(task.train_step, in_shardings=(state_shardings, frozen_shardings, None),
                      out_shardings=(state_shardings, rep), donate_argnums=(0,))
    eval_fn = jax.jit(task.eval_step, out_shardings=rep)
    val_batch = None
    validator = make_validator(task.name, config, workdir, frozen)

    start = int(state.step)
    logger = MetricsLogger(workdir, max_steps, start, enabled=primary, progress=progress)
    preempted = PreemptionFlag()
    try:
        for step in range(start, max_steps):
            batch = mesh_lib.shard_batch(next(data), mesh)
            lr = schedule(step)
            state, metrics = step_fn(state, frozen, batch)
            done = step + 1
            logger.log(done, dict(metrics, lr=lr))
            if stop_after_steps is not None and done == stop_after_steps:
                os.kill(os.getpid(), signal.SIGTERM)  # debug: behave exactly as a preemption
            if preempted.is_set:
                ckpt.maybe_save(done, state, data.get_state(), force=True)
                log.warning("SIGTERM: saved step %d to %s, exiting", done, ckpt.directory)
                break
            ckpt.maybe_save(done, state, data.get_state(), force=done == max_steps)
            if task.validation_every and done % task.validation_every == 0:
                if task.make_val_data is not None:
                    if val_batch is None:
                        val_batch = mesh_lib.shard_batch(next(task.make_val_data(jax.process_index(),
                                                                                 jax.process_count())), mesh)
                    val = eval_fn(state.params, frozen, val_batch, jax.random.PRNGKey(0))
                    logger.log(done, val, prefix="val/")
                if validator is not None:  # inference on the val clip; never raises
                    params = host_params(state.params)
                    if primary:
                        logger.log(done, validator(done, params), prefix=METRIC_PREFIX)
    finally:
        preempted.restore_handlers()
        ckpt.close()
        logger.close()
    return state
