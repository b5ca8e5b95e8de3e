"""The training loop itself (lipsync_jax.train.loop) on a toy regression task, in process, one
device: metrics leave the device only at log steps, a non-finite loss stops the run with one
line and leaves the last checkpoint as it was, skipped non-finite updates, the prefetch queue's
data state, --profile_steps parsing, SIGTERM (TrainingPreempted) + exact resume with an EMA of
the params, and a checkpoint written with a raw uint32 key (the loop before typed keys) resuming
exactly."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lipsync_jax.train import loop as loop_lib
from lipsync_jax.train.metrics import PendingMetrics, read_metrics
from lipsync_jax.train.state import masked_global_norm
from lipsync_jax.train.task import TrainTask

pytestmark = pytest.mark.integration

IN, OUT, BATCH = 4, 8, 2


class ToyData:
    """Batch i: x ~ N(0, 1) from seed i, y = x @ W_true; ``nan_at`` puts a NaN into batch nan_at."""

    def __init__(self, nan_at=None):
        self.next_step, self.nan_at = 0, nan_at

    def __next__(self):
        rng = np.random.default_rng(self.next_step)
        x = rng.standard_normal((BATCH, IN)).astype(np.float32)
        if self.nan_at is not None and self.next_step == self.nan_at:
            x[0, 0] = np.nan
        self.next_step += 1
        return {"x": x, "y": x @ np.arange(IN * OUT, dtype=np.float32).reshape(IN, OUT) / 10}

    def get_state(self):
        return {"next_step": self.next_step}

    def set_state(self, state):
        self.next_step = int(state["next_step"])


def toy_task(nan_at=None, noisy=False, ema_decay=None):
    """``noisy``: the targets get noise from the step key ``fold_in(state.rng, state.step)``
    (as the UNet steps draw theirs), so a wrong key after a resume changes the losses."""
    shapes = {"w": jax.ShapeDtypeStruct((IN, OUT), jnp.float32)}

    def loss(params, batch):
        err = batch["x"] @ params["w"] - batch["y"]
        return jnp.mean(err ** 2), {"mse": jnp.mean(err ** 2)}

    def train_step(state, frozen, batch):
        if noisy:
            key = jax.random.fold_in(state.rng, state.step)
            batch = dict(batch, y=batch["y"] + jax.random.normal(key, batch["y"].shape))
        (value, terms), grads = jax.value_and_grad(loss, has_aux=True)(state.params, batch)
        return state.apply_gradients(grads), dict(loss=value, grad_norm=masked_global_norm(grads, None), **terms)

    def eval_step(params, frozen, batch, rng):
        value, terms = loss(params, batch)
        return dict(loss=value, **terms)

    return TrainTask(name="toy", param_shapes=shapes, logical_specs={"w": P("embed", "mlp")},
                     init_params=lambda key: {"w": jnp.zeros((IN, OUT))}, pretrained=lambda: None, trainable=None,
                     init_frozen=lambda key: {}, pretrained_frozen=dict, train_step=train_step, eval_step=eval_step,
                     make_data=lambda p, n: ToyData(nan_at), ema_decay=ema_decay)


def toy_config(steps, log_every=10, save_every=1000, **run):
    return {"run": dict(seed=0, max_train_steps=steps, log_every_steps=log_every, **run),
            "mesh": {"axes": ("data", "fsdp"), "shape": (-1, 1)},
            "optimizer": dict(lr=0.05, max_grad_norm=1.0), "ckpt": {"save_ckpt_steps": save_every}}


def test_metrics_leave_the_device_only_at_log_steps(tmp_path, monkeypatch):
    """Every device->host copy goes through ``ArrayImpl._value`` (np.asarray, float, int,
    jax.device_get); count them by phase. (``jax.transfer_guard`` does not fire on the CPU
    backend, whose arrays already live in host memory.)"""
    from jax._src.array import ArrayImpl

    phase = {"now": "setup"}
    transfers = []
    fetched_at = []
    value_property = ArrayImpl._value

    def counted_value(self):
        transfers.append(phase["now"])
        return value_property.fget(self)

    original_add, original_fetch = PendingMetrics.add, PendingMetrics.fetch

    def add(self, step, metrics):
        phase["now"] = "steps" if step < 25 else "end"  # the last step is followed by the final save
        return original_add(self, step, metrics)

    def fetch(self):
        fetched_at.append([s for s, _ in self.items])
        previous, phase["now"] = phase["now"], "fetch"
        try:
            return original_fetch(self)
        finally:
            phase["now"] = previous

    monkeypatch.setattr(ArrayImpl, "_value", property(counted_value))
    monkeypatch.setattr(PendingMetrics, "add", add)
    monkeypatch.setattr(PendingMetrics, "fetch", fetch)
    loop_lib.run_training(toy_task(), toy_config(25), str(tmp_path), progress=False)
    assert [steps[-1] for steps in fetched_at] == [10, 20, 25]  # log steps and the last step
    assert [len(steps) for steps in fetched_at] == [10, 10, 5]  # every step's metrics, in one fetch each
    assert "fetch" in transfers and "steps" not in transfers  # nothing else leaves the device between steps
    records = read_metrics(str(tmp_path))
    assert [r["step"] for r in records] == list(range(1, 26))
    assert records[-1]["loss"] < records[0]["loss"]
    timed = [r for r in records if "steps_per_s" in r]
    assert [r["step"] for r in timed] == [10, 20, 25]
    assert all(r["steps_per_s"] > 0 and r["data_wait_s"] >= 0 for r in timed)
    assert records[0]["lr"] == pytest.approx(0.05)


def test_nonfinite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(tmp_path):
    with pytest.raises(loop_lib.NonFiniteError) as info:
        # batch 7 (step 8) has a NaN; checkpoints every 5 steps; metrics fetched every 4
        loop_lib.run_training(toy_task(nan_at=7), toy_config(20, log_every=4, save_every=5), str(tmp_path),
                              progress=False)
    message = str(info.value)
    assert "\n" not in message and "step 8" in message and "mse" in message and "step 5" in message
    assert info.value.step == 8 and info.value.term == "mse"
    saved = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert saved == [5]  # nothing saved at or after the bad step
    steps = [r["step"] for r in read_metrics(str(tmp_path))]
    assert steps == list(range(1, 9))  # logged up to the bad step, then stopped


def test_skip_nonfinite_updates_keeps_params_and_counts(tmp_path):
    state = loop_lib.run_training(toy_task(nan_at=2), toy_config(6, log_every=3, skip_nonfinite_updates=True),
                                  str(tmp_path), progress=False)
    records = read_metrics(str(tmp_path))
    assert [r["skipped_update"] for r in records] == [0, 0, 1, 0, 0, 0]
    assert records[2]["loss"] == "nan"
    assert np.isfinite(np.asarray(state.params["w"])).all() and int(state.step) == 6


def test_prefetch_records_the_state_of_consumed_batches():
    data = ToyData()
    prefetch = loop_lib.DevicePrefetch(data, lambda b: b, size=3)
    first = next(prefetch)
    prefetch.fill()
    assert data.next_step == 4  # three batches ahead of the one consumed
    assert prefetch.get_state() == {"next_step": 1}
    np.testing.assert_array_equal(first["x"], ToyData().__next__()["x"])
    next(prefetch)
    assert prefetch.get_state() == {"next_step": 2}


def test_profile_steps_parsing_and_sharding_record(tmp_path):
    assert loop_lib.parse_profile_steps("10:15") == (10, 15)
    assert loop_lib.parse_profile_steps(None) is None
    for bad in ("5", "5:5", "a:b", "-1:3"):
        with pytest.raises(ValueError, match="profile_steps"):
            loop_lib.parse_profile_steps(bad)
    loop_lib.run_training(toy_task(), toy_config(3), str(tmp_path), progress=False, profile_steps=(1, 2))
    assert os.listdir(tmp_path / "profile")  # a trace was written
    shardings = json.loads((tmp_path / "state_shardings.json").read_text())
    assert shardings[".params['w']"]["shape"] == [IN, OUT]


def test_sigterm_raises_preempted_after_saving_and_resume_is_exact_with_ema(tmp_path):
    task = toy_task(noisy=True, ema_decay=0.9)
    reference = loop_lib.run_training(task, toy_config(6, log_every=2), str(tmp_path / "ref"), progress=False)
    workdir = str(tmp_path / "stopped")
    with pytest.raises(loop_lib.TrainingPreempted) as info:
        loop_lib.run_training(task, toy_config(6, log_every=2), workdir, progress=False, stop_after_steps=3)
    assert info.value.step == 3 and "\n" not in str(info.value)
    assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit()) == [3]
    resumed = loop_lib.run_training(task, toy_config(6, log_every=2), workdir, progress=False)
    ref_losses = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "ref"))}
    got = {r["step"]: r["loss"] for r in read_metrics(workdir)}
    assert got == ref_losses  # bit-exact, steps 1-6
    np.testing.assert_array_equal(resumed.params["w"], reference.params["w"])
    np.testing.assert_array_equal(resumed.ema_params["w"], reference.ema_params["w"])
    # the EMA is a real average of the trajectory, not a copy of the params
    assert float(jnp.abs(reference.ema_params["w"] - reference.params["w"]).max()) > 1e-3
    assert jax.dtypes.issubdtype(resumed.rng.dtype, jax.dtypes.prng_key)


def test_checkpoint_with_a_raw_uint32_key_resumes_exactly(tmp_path, monkeypatch):
    """The loop used ``jax.random.PRNGKey`` (raw uint32 key data in the state and its
    checkpoints) before typed keys; such a checkpoint resumes with the same step keys."""
    import orbax.checkpoint as ocp

    task = toy_task(noisy=True)
    loop_lib.run_training(task, toy_config(6, log_every=2), str(tmp_path / "ref"), progress=False)
    workdir = str(tmp_path / "old")
    with monkeypatch.context() as patch:  # the old loop: raw keys from PRNGKey
        patch.setattr(jax.random, "key", jax.random.PRNGKey)
        old = loop_lib.run_training(task, toy_config(3, log_every=2), workdir, progress=False)
    assert old.rng.dtype == jnp.uint32 and old.rng.shape == (2,)
    saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "3", "state"))
    assert np.asarray(saved["rng"]).dtype == np.uint32  # what the old loop wrote
    resumed = loop_lib.run_training(task, toy_config(6, log_every=2), workdir, progress=False)
    assert jax.dtypes.issubdtype(resumed.rng.dtype, jax.dtypes.prng_key)
    ref_losses = {r["step"]: r["loss"] for r in read_metrics(str(tmp_path / "ref"))}
    got = {r["step"]: r["loss"] for r in read_metrics(workdir)}
    assert got == ref_losses
