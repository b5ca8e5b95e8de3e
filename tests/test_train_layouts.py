"""train.py on the tiny UNet config: one device vs a (4, 2) data x fsdp mesh vs two processes,
and SIGTERM + resume reproducing an uninterrupted run exactly."""

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # each distinct layout compiles the tiny UNet step: minutes on 2 shared cores

from lipsync_jax.train.metrics import read_metrics
from train_helpers import TINY_FAST, free_port, losses, run_train, start_train


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, cache):
    """Uninterrupted 6 steps on a single device."""
    workdir = tmp_path_factory.mktemp("single")
    run_train(workdir, TINY_FAST + ["--config.run.max_train_steps=6"], cache)
    return workdir


def test_mesh_4x2_matches_single_device_and_shards_params(reference_run, tmp_path, cache):
    run_train(tmp_path, TINY_FAST + ["--config.run.max_train_steps=3", "--config.mesh.shape=(4, 2)"], cache,
              devices=8)
    ref, mesh = losses(reference_run), losses(tmp_path)
    assert sorted(mesh) == [1, 2, 3]
    np.testing.assert_allclose([mesh[s] for s in (1, 2, 3)], [ref[s] for s in (1, 2, 3)], rtol=2e-5)
    assert all(v > 0 for v in losses(reference_run, "grad_norm").values())
    np.testing.assert_allclose(losses(tmp_path, "recon")[1], losses(reference_run, "recon")[1], rtol=2e-5)
    # Grad norms agree at step 1. Later they drift: parameters whose gradients are ~0 (cancelling
    # sums) get sign-of-roundoff Adam steps of size lr, which differ between reduction orders,
    # while the losses above still agree (a float32 effect, not a sharding error).
    np.testing.assert_allclose(losses(tmp_path, "grad_norm")[1], losses(reference_run, "grad_norm")[1], rtol=2e-5)
    shardings = json.loads((tmp_path / "state_shardings.json").read_text())
    # A large kernel is split over fsdp (its output channels), and so are its Adam moments.
    name = ".params['up_blocks_1']['attentions_0']['transformer_blocks_0']['attn1']['to_q']['kernel']"
    entry = shardings[name]
    assert "fsdp" in entry["spec"], entry
    assert entry["shard_shape"][-1] * 2 == entry["shape"][-1]
    moments = [v for k, v in shardings.items() if k.startswith(".opt_state") and k.endswith(name[len(".params"):])]
    assert len(moments) == 2 and all(m["spec"] == entry["spec"] for m in moments)  # Adam's mu and nu
    # The reference run has everything on one device.
    single = json.loads((reference_run / "state_shardings.json").read_text())
    assert single[name]["shard_shape"] == single[name]["shape"]


def test_sigterm_at_step_3_then_resume_equals_uninterrupted(reference_run, tmp_path, cache):
    args = TINY_FAST + ["--config.run.max_train_steps=6"]
    first = run_train(tmp_path, args + ["--stop_after_steps=3"], cache)
    assert sorted(losses(tmp_path)) == [1, 2, 3], first.stderr[-2000:]
    assert (tmp_path / "checkpoints" / "3").is_dir()
    run_train(tmp_path, args, cache)  # resumes automatically from step 3
    steps = [r["step"] for r in read_metrics(str(tmp_path))]
    assert steps == [1, 2, 3, 4, 5, 6]
    ref, resumed = losses(reference_run), losses(tmp_path)
    for step in (4, 5, 6):
        assert resumed[step] == ref[step], (step, resumed[step], ref[step])  # bit-exact


def test_two_processes_match_single_process(reference_run, tmp_path, cache):
    port = free_port()
    args = TINY_FAST + ["--config.run.max_train_steps=2", "--config.data.batch_size=2",
                        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
    procs = [start_train(tmp_path, args + [f"--process_id={i}"], cache) for i in range(2)]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-4000:]
    ref, multi = losses(reference_run), losses(tmp_path)
    assert sorted(multi) == [1, 2]
    np.testing.assert_allclose([multi[1], multi[2]], [ref[1], ref[2]], rtol=2e-5)


@pytest.mark.heavy  # two processes + a single-process reference: not finished within 30 min on 2 loaded cores
def test_sigterm_to_one_of_two_processes_saves_both_then_resume_matches(reference_run, tmp_path, cache):
    """SIGTERM to process 0 only (after step 3): the processes agree at the next log step (4) through
    a collective, both save step 4 and exit; rerunning both resumes there, and the losses follow
    the uninterrupted single-device run."""
    args = TINY_FAST + ["--config.run.max_train_steps=6", "--config.data.batch_size=2",
                        "--config.run.log_every_steps=2"]

    def run_pair(extra_for_first):
        port = free_port()
        pair = args + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2"]
        procs = [start_train(tmp_path, pair + [f"--process_id={i}"] + (extra_for_first if i == 0 else []), cache)
                 for i in range(2)]
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (_out, err) in zip(procs, outs):
            assert p.returncode == 0, err[-4000:]
        return outs

    outs = run_pair(["--stop_after_steps=3"])
    assert sorted(losses(tmp_path)) == [1, 2, 3, 4]
    saved = sorted(int(d.name) for d in (tmp_path / "checkpoints").iterdir() if d.name.isdigit())
    assert saved == [4]  # one agreed step, written by both processes
    assert all((tmp_path / "checkpoints" / "data_state" / f"4.p{i}.json").is_file() for i in range(2))
    assert "SIGTERM" in outs[1][1]  # process 1 was not signalled but stopped too
    run_pair([])
    assert [r["step"] for r in read_metrics(str(tmp_path))] == [1, 2, 3, 4, 5, 6]
    ref, multi = losses(reference_run), losses(tmp_path)
    np.testing.assert_allclose([multi[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=2e-5)
