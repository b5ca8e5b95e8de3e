"""Overfitting one batch of the tiny stage-1 config (fixed batch, noise and timesteps) drives
the diffusion loss down by more than 10x; and the stage-2 tiny config with all four loss terms
trains on a (4, 2) data x fsdp mesh through train.py."""

import jax
import numpy as np
import pytest

from lipsync_jax.config_utils import load_config, resolve_path
from lipsync_jax.train.state import TrainState, make_optimizer
from lipsync_jax.train.unet_setup import build_unet_task
from tests.helpers.train import losses, run_train


@pytest.mark.heavy  # over CI's time budget
@pytest.mark.slow
def test_overfitting_one_batch_reduces_diffusion_loss_10x():
    config = load_config(resolve_path("configs/unet/tiny_stage1.py"),
                         ["data.batch_size=1", "data.num_frames=2", "optimizer.lr=1e-3"])
    task = build_unet_task(config, "synthetic_fixed")
    trainer = task.train_step.__self__
    tx, _ = make_optimizer(config.optimizer, 1000, 1, task.trainable)
    state = TrainState.create(jax.jit(task.init_params)(jax.random.key(0)), tx, jax.random.key(1))
    frozen = jax.jit(task.init_frozen)(jax.random.key(2))
    batch = next(task.make_data(0, 1))
    rng = jax.random.key(3)  # the same noise and timestep every step: a fixed regression target

    @jax.jit
    def step(state):
        (loss, terms), grads = jax.value_and_grad(trainer.loss, has_aux=True)(state.params, frozen, batch, rng)
        return state.apply_gradients(grads), terms["recon"]

    history = []
    for _ in range(200):
        state, recon = step(state)
        history.append(float(recon))
    assert np.isfinite(history).all()
    assert min(history[-5:]) * 10 <= history[0], (history[0], history[-5:])


@pytest.mark.heavy  # stage 2 with every loss term on a (4, 2) mesh; the stage-1 (4, 2) mesh test stays in CI
def test_stage2_tiny_with_all_losses_on_4x2_mesh_logs_each_term(tmp_path, tmp_path_factory):
    run_train(tmp_path, ["--config=configs/unet/tiny_stage2_losses.py", "--config.data.batch_size=4",
                         "--config.run.max_train_steps=2", "--config.mesh.shape=(4, 2)", "--noprogress",
                         # random weights: conv_out is zero-initialised, frozen it would stop every gradient
                         "--config.run.trainable_modules=('motion_modules.', 'attentions.', 'conv_out')"],
              tmp_path_factory.mktemp("cache"), devices=8, timeout=2400)
    for term in ("recon", "sync", "lpips", "trepa"):
        values = losses(tmp_path, term)
        assert sorted(values) == [1, 2], term
        assert all(np.isfinite(v) and v > 0 for v in values.values()), (term, values)
    assert losses(tmp_path, "grad_norm")[2] > 0
    total = losses(tmp_path)
    for step in (1, 2):
        expected = (losses(tmp_path, "recon")[step] + 0.05 * losses(tmp_path, "sync")[step]
                    + 0.1 * losses(tmp_path, "lpips")[step] + 10.0 * losses(tmp_path, "trepa")[step])
        np.testing.assert_allclose(total[step], expected, rtol=1e-5)
