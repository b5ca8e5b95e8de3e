"""bench/compiled_memory.py lowers the step train.py jits for any UNet task: here the distill task
with a configured (not initialised) teacher, on this host's CPU device (lowering only: the
deviceless GPU/TPU compiles of the same function are bench rows, bench/RESULTS.md)."""

import importlib.util
import os

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from lipsync_jax.config_utils import load_config, resolve_path
from tests.helpers.paths import ROOT


def _compiled_memory():
    spec = importlib.util.spec_from_file_location("compiled_memory", os.path.join(ROOT, "bench", "compiled_memory.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # traces the tiny distill step (teacher, EMA target, student, VAE, SyncNet): ~30 s
def test_distill_step_with_a_configured_teacher_lowers_with_teacher_and_ema_trees():
    compiled_memory = _compiled_memory()
    config = load_config(resolve_path("configs/unet/distill.py:tiny"),
                         ["mesh.shape=(1, 1)", "distill.teacher_ckpt_path=checkpoints/not_read/unet"])
    mesh = Mesh(np.asarray(jax.devices()[:1], dtype=object).reshape(1, 1), ("data", "fsdp"))
    lowered, global_batch = compiled_memory.compile_step(config, mesh, 2, "step")
    (state, frozen, batch), _ = lowered.args_info
    student = jax.tree.map(lambda a: (a.shape, a.dtype), state.params)
    assert global_batch == 2 and batch["gt_frames"].shape[0] == 2
    # a configured teacher is loaded by the loop, so its place in the frozen tree is the student's tree
    assert jax.tree.map(lambda a: (a.shape, a.dtype), frozen["teacher"]) == student
    assert jax.tree.map(lambda a: (a.shape, a.dtype), state.ema_params) == student
    assert {"vae", "teacher"} <= set(frozen)
