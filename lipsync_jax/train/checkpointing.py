"""Training checkpoints with orbax: async saves every ``ckpt.save_ckpt_steps`` steps, the last
``keep`` kept, a forced save on SIGTERM, automatic resume from ``<workdir>/checkpoints``.

Layout: ``<workdir>/checkpoints/<step>/state`` (orbax: params, opt_state, step, rng and, for
tasks that keep one, ema_params; sharded arrays written by every process) and
``<workdir>/checkpoints/data_state/<step>.p<process>.json`` (each process's data-iterator state,
written by that process when the step is saved).

    ckpt = TrainCheckpointer(workdir, save_every=config.ckpt.save_ckpt_steps)
    state, data_state = ckpt.restore_latest(abstract_state) or (state, None)
    ...
    ckpt.maybe_save(step, state, data_iter.get_state(), force=preempted)
    ckpt.close()
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import orbax.checkpoint as ocp

DEFAULT_KEEP = 3


class TrainCheckpointer:
    def __init__(self, workdir: str, save_every: int, keep: int = DEFAULT_KEEP, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.data_dir = os.path.join(self.directory, "data_state")
        self.save_every = max(1, int(save_every))
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=1,
                                               enable_async_checkpointing=async_save, create=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state",))

    # ---------------------------------------------------------------- save
    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: Any, data_state: Any) -> None:
        """Start an (async) save of ``state`` at ``step`` and write this process's data state."""
        self._write_data_state(step, data_state)
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(_savable(state))), force=True)
        self._prune_data_states()

    def maybe_save(self, step: int, state: Any, data_state: Any, force: bool = False) -> bool:
        if (force or self.should_save(step)) and self.manager.latest_step() != step:
            self.save(step, state, data_state)
            return True
        return False

    def _write_data_state(self, step: int, data_state: Any) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        path = os.path.join(self.data_dir, f"{step}.p{jax.process_index()}.json")
        if isinstance(data_state, bytes):  # grain iterators give JSON bytes
            data_state = {"__bytes__": data_state.decode("utf-8")}
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data_state, f)
        os.replace(tmp, path)

    def _prune_data_states(self) -> None:
        keep = set(self.manager.all_steps()) | {s for s in [self.manager.latest_step()] if s is not None}
        for name in os.listdir(self.data_dir):
            step = name.split(".", 1)[0]
            if step.isdigit() and int(step) not in keep and int(step) < max(keep | {0}):
                try:
                    os.remove(os.path.join(self.data_dir, name))
                except FileNotFoundError:
                    pass

    # ---------------------------------------------------------------- restore
    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any]:
        """(state, data_state) at ``step``; ``abstract_state`` gives shapes, dtypes and the
        target shardings (arrays or ShapeDtypeStructs with ``.sharding``)."""
        target = jax.tree.map(_abstract, _savable(abstract_state))
        restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
        state = _unsavable(abstract_state, restored["state"])
        path = os.path.join(self.data_dir, f"{step}.p{jax.process_index()}.json")
        data_state = None
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                data_state = json.load(f)
            if isinstance(data_state, dict) and "__bytes__" in data_state:
                data_state = data_state["__bytes__"].encode("utf-8")
        return state, data_state

    def restore_latest(self, abstract_state: Any) -> tuple[Any, Any] | None:
        step = self.latest_step()
        return None if step is None else self.restore(step, abstract_state)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _is_typed_key(x: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _savable(state: Any) -> dict:
    """The arrays of a TrainState as a plain dict (the optax transform is not saved). The typed
    PRNG key is stored as its raw uint32 key data: the layout checkpoints of raw-key states have,
    so both restore into a typed-key state."""
    rng = jax.random.key_data(state.rng) if _is_typed_key(state.rng) else state.rng
    tree = dict(step=state.step, params=state.params, opt_state=state.opt_state, rng=rng)
    if getattr(state, "ema_params", None) is not None:
        tree["ema_params"] = state.ema_params
    return tree


def _unsavable(template: Any, tree: dict) -> Any:
    rng = tree["rng"]
    if _is_typed_key(template.rng):
        rng = jax.random.wrap_key_data(rng, impl=jax.random.key_impl(template.rng))
    state = template.replace(step=tree["step"], params=tree["params"], opt_state=tree["opt_state"], rng=rng)
    if "ema_params" in tree:
        state = state.replace(ema_params=tree["ema_params"])
    return state


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return x


class PreemptionFlag:
    """Set by SIGTERM (and SIGINT if asked); the loop polls ``.is_set`` after every step,
    saves a checkpoint and exits cleanly."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.is_set = False
        self._previous = {sig: signal.signal(sig, self._handler) for sig in signals}

    def _handler(self, signum, _frame):
        self.is_set = True

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
