"""Distillation without compiling a UNet: the distill configs and task (every UNet parameter
trained, the frozen teacher beside the VAE, the whole train step traced abstractly), config
errors in one line, student checkpoints (export's metadata, ``student_info``) and the sampler
choices the edges get for them (``student_sampling``, ``student_scheduler``)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lipsync_jax import checkpoints
from lipsync_jax.config_utils import load_config, resolve_path
from lipsync_jax.diffusion import DDIMScheduler, LCMScheduler
from lipsync_jax.distilled import (
    StudentOptionError,
    student_info,
    student_metadata,
    student_sampling,
    student_scheduler,
)
from lipsync_jax.train.checkpointing import TrainCheckpointer
from lipsync_jax.train.export import ExportError, export
from lipsync_jax.train.state import TrainState, make_optimizer
from lipsync_jax.train.task import TrainConfigError
from lipsync_jax.train.tasks import build_task
from lipsync_jax.tree_utils import count_params

TINY = ["data.num_frames=4", "data.batch_size=2", "run.use_syncnet=False"]


@pytest.mark.integration
def test_distill_configs_and_task_train_every_unet_parameter_against_a_frozen_teacher():
    for variant, resolution in (("", 256), ("512", 512)):
        config = load_config(resolve_path(f"configs/unet/distill.py{':' + variant if variant else ''}"))
        assert config.data.resolution == resolution and config.distill.guidance_scale == config.run.guidance_scale
        assert config.distill.teacher_ckpt_path == "checkpoints/latentsync_unet.pt"
        assert config.ckpt.resume_ckpt_path == "" and not config.run.val_inference
        assert config.run.trepa_loss_weight == 0 and config.run.perceptual_loss_weight == 0 and config.run.use_syncnet
    config = load_config(resolve_path("configs/unet/distill.py:tiny"), TINY)
    task = build_task(config, "synthetic")
    assert task.name == "distill" and task.ema_decay == 0.95
    assert count_params(task.param_shapes, task.trainable) == count_params(task.param_shapes) > 0
    frozen = jax.eval_shape(task.init_frozen, jax.random.key(0))
    assert sorted(frozen) == ["teacher", "vae"]
    assert jax.tree.structure(frozen["teacher"]) == jax.tree.structure(task.param_shapes)
    assert pytest.raises(ValueError, load_config, resolve_path("configs/unet/distill.py:huge"))
    # the whole step traces (nothing compiled): EMA target in the state, the two distill terms
    tx, _ = make_optimizer(config.optimizer, 10, 1, task.trainable)
    state = jax.eval_shape(lambda p: TrainState.create(p, tx, jax.random.key(0), ema_decay=task.ema_decay),
                           task.param_shapes)
    assert jax.tree.structure(state.ema_params) == jax.tree.structure(state.params)
    new_state, metrics = jax.eval_shape(task.train_step, state, frozen, next(task.make_data(0, 1)))
    assert sorted(metrics) == ["consistency", "grad_norm", "loss", "sync"]
    assert jax.tree.structure(new_state.ema_params) == jax.tree.structure(state.params)


@pytest.mark.parametrize("override, message", [
    ("distill.loss=l1", "distill.loss 'l1'"),
    ("distill.guidance=embedding", "only 'fixed'"),
    ("distill.teacher_solver=dpmsolver++", "only 'ddim'"),
    ("distill.student_steps=80", "student_steps must be in"),
    ("distill.origin_steps=30", "origin_steps must divide"),
    ("run.trepa_loss_weight=1.0", "no LPIPS/TREPA"),
])
@pytest.mark.integration
def test_distill_config_errors_are_one_line(override, message):
    config = load_config(resolve_path("configs/unet/distill.py:tiny"), TINY + [override])
    with pytest.raises(TrainConfigError, match=message) as info:
        build_task(config, "synthetic")
    assert "\n" not in str(info.value)


def _distill_section(**changes):
    section = load_config(resolve_path("configs/unet/distill.py:tiny")).distill.to_dict()
    section.update(changes)
    return section


def test_student_metadata_info_and_sampling_choices(tmp_path):
    params = {"conv_in": {"kernel": np.ones((3, 3, 13, 4), np.float32)}}
    teacher = checkpoints.save_params(tmp_path / "teacher", params, {"in_channels": 13}, {"source": "latentsync.pt"})
    block = student_metadata(_distill_section(teacher_ckpt_path=teacher), training_step=300)
    student = checkpoints.save_params(tmp_path / "student", params, {"in_channels": 13}, {"student": block})
    info = student_info(student)
    assert info["kind"] == "consistency" and info["teacher"] == teacher and info["distill_step"] == 300
    assert info["teacher_metadata"]["source"] == "latentsync.pt"
    assert info["guidance"] == {"mode": "fixed", "scale": 1.5} and info["student_steps"] == 4
    assert info["lcm"] == {"origin_steps": 50, "sigma_data": 0.5, "timestep_scaling": 10.0}
    assert student_info(teacher) is None and student_info(tmp_path / "missing") is None and student_info(None) is None

    choice = student_sampling(info)  # nothing given: the student's own settings
    assert (choice.solver, choice.num_steps, choice.guidance_scale) == ("lcm", 4, 1.0)
    assert "guidance 1.5 distilled in" in choice.note and "\n" not in choice.note
    assert student_sampling(info, solver="lcm", num_steps=2, guidance_scale=1.0).num_steps == 2
    for kwargs, message in ((dict(guidance_scale=1.5), "guidance 1.5 is refused"),
                            (dict(solver="ddim"), "samples with scheduler lcm, not ddim"),
                            (dict(num_steps=0), "1 to 50 steps"), (dict(num_steps=51), "1 to 50 steps")):
        with pytest.raises(StudentOptionError, match=message) as error:
            student_sampling(info, **kwargs)
        assert "\n" not in str(error.value)
    # a teacher passes through; lcm with it gets one warning line naming it
    teacher_choice = student_sampling(None, solver="ddim", num_steps=20, guidance_scale=1.5)
    assert (teacher_choice.solver, teacher_choice.num_steps, teacher_choice.guidance_scale) == ("ddim", 20, 1.5)
    assert teacher_choice.note is None and student_sampling(None).solver is None
    warning = student_sampling(None, solver="lcm", checkpoint=teacher)
    assert warning.solver == "lcm" and warning.note.startswith("WARNING") and teacher in warning.note
    assert "\n" not in warning.note

    ddim = DDIMScheduler.from_config(load_config(resolve_path("configs/scheduler.py")).to_dict())
    assert student_scheduler(ddim, None) is ddim
    lcm = student_scheduler(ddim, dict(info, lcm=dict(info["lcm"], origin_steps=25)))
    assert isinstance(lcm, LCMScheduler) and lcm.timesteps(2).tolist() == [999, 519]

    meta = json.loads((tmp_path / "student" / "metadata.json").read_text())
    meta["student"]["kind"] = "progressive"
    (tmp_path / "student" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(StudentOptionError, match="malformed 'student' metadata"):
        student_info(student)


@pytest.mark.integration
def test_export_of_a_distill_run_says_it_is_a_student_and_exports_the_ema(tmp_path):
    params = {"w": jnp.arange(6, dtype=jnp.float32).reshape(2, 3)}
    tx, _ = make_optimizer(dict(lr=0.1), 10)
    state = TrainState.create(params, tx, jax.random.key(0), ema_decay=0.9)
    state = state.apply_gradients({"w": jnp.ones((2, 3))})
    ckpt = TrainCheckpointer(str(tmp_path / "run"), save_every=1)
    ckpt.save(1, state, {"next_step": 1})
    ckpt.close()
    config = load_config(resolve_path("configs/unet/distill.py:tiny"))
    path = export(str(tmp_path / "run"), str(tmp_path / "student"), config)
    info = student_info(path)
    assert info["distill_step"] == 1 and info["teacher"] == "random weights (test run)"
    exported, model = checkpoints.restore_params(path)
    np.testing.assert_array_equal(exported["w"], np.asarray(state.params["w"]))
    assert model["in_channels"] == 13  # the UNet config beside it, as for any export
    ema_path = export(str(tmp_path / "run"), str(tmp_path / "student_ema"), config, ema=True)
    ema, _ = checkpoints.restore_params(ema_path)
    np.testing.assert_allclose(ema["w"], 0.9 * np.asarray(params["w"]) + 0.1 * np.asarray(state.params["w"]),
                               rtol=1e-6)
    assert checkpoints.read_metadata(ema_path)["ema"] is True
    # a run without an EMA: --ema fails with one line; a plain config writes no student block
    plain = TrainState.create(params, tx, jax.random.key(0))
    ckpt = TrainCheckpointer(str(tmp_path / "plain"), save_every=1)
    ckpt.save(1, plain, {"next_step": 1})
    ckpt.close()
    with pytest.raises(ExportError, match="no EMA of the params"):
        export(str(tmp_path / "plain"), str(tmp_path / "x"), config, ema=True)
    tiny = load_config(resolve_path("configs/unet/tiny.py"))
    teacher_like = export(str(tmp_path / "plain"), str(tmp_path / "y"), tiny)
    assert student_info(teacher_like) is None and os.path.isdir(teacher_like)
