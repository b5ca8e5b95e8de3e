"""Builds the distillation ``TrainTask`` from a config with a ``distill`` section
(configs/unet/distill.py): stage 2's UNet, frozen networks, batches and conditioning
(``unet_parts``) plus the frozen teacher UNet (``distill.teacher_ckpt_path``: a converted folder
or the original ``latentsync_unet.pt``; "" = random weights, tests only), placed and sharded by
the loop like the other frozen networks (``sharding.frozen_shardings``). The student starts from
``ckpt.resume_ckpt_path`` when set, else from the teacher's weights (LCM's initialisation); it
has the teacher's parameter tree, so its exported checkpoint loads wherever the teacher's does.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import jax

from lipsync_jax import config_utils
from lipsync_jax.diffusion.lcm import LCMScheduler
from lipsync_jax.models.unet3d import init_params as init_unet
from lipsync_jax.models.unet3d import logical_axes
from lipsync_jax.train.data_sources import unet_data_source
from lipsync_jax.train.distill_step import DistillSettings, DistillTrainer
from lipsync_jax.train.task import TrainConfigError, TrainTask, load_converted
from lipsync_jax.train.unet_setup import UNetParts, unet_parts

log = logging.getLogger(__name__)


def distill_settings(config: Any) -> DistillSettings:
    """The config's ``distill`` section, checked (one-line ``TrainConfigError``)."""
    try:
        return DistillSettings.from_config(config["distill"])
    except ValueError as error:
        raise TrainConfigError(str(error)) from None


def distill_trainer(config: Any, parts: UNetParts | None = None) -> DistillTrainer:
    """The distillation step's pieces for ``config`` (stage 2's ``unet_parts`` + its ``distill``
    section), checked (one-line ``TrainConfigError``)."""
    settings = distill_settings(config_utils.config_to_dict(config))
    parts = parts or unet_parts(config)
    try:
        return DistillTrainer(base=parts.trainer, settings=settings,
                              lcm=LCMScheduler.from_ddim_config(parts.cfg["scheduler"], settings.lcm_config),
                              trainable=parts.trainable)
    except ValueError as error:
        raise TrainConfigError(str(error)) from None


def build_distill_task(config: Any, data_source: str = "synthetic") -> TrainTask:
    parts = unet_parts(config)
    trainer = distill_trainer(config, parts)
    settings = trainer.settings
    cfg, unet, init_shape = parts.cfg, parts.unet, parts.init_shape

    @functools.lru_cache(maxsize=1)
    def teacher_weights():
        path = settings.teacher_ckpt_path
        if not path:
            return None
        return load_converted(path, "distill.teacher_ckpt_path", shapes=parts.shapes, kind="unet",
                              model_config=cfg["model"])

    def init_frozen(key):
        """Random frozen networks; the random teacher only when none is configured (a configured
        one is placed by the loop from ``pretrained_frozen`` without a random stand-in)."""
        k_base, k_teacher = jax.random.split(key)
        frozen = dict(parts.init_frozen(k_base))
        if not settings.teacher_ckpt_path:
            frozen["teacher"] = init_unet(k_teacher, unet, init_shape)
        return frozen

    def pretrained_frozen():
        out = parts.pretrained_frozen()
        teacher = teacher_weights()
        if teacher is None:
            log.warning("distill.teacher_ckpt_path is empty: the frozen teacher has RANDOM weights (tests/smoke runs "
                        "only)")
        else:
            out["teacher"] = teacher
        return out

    def pretrained():
        student = parts.pretrained()  # ckpt.resume_ckpt_path
        return student if student is not None else teacher_weights()

    return TrainTask(name="distill", param_shapes=parts.shapes, logical_specs=logical_axes(unet, init_shape),
                     init_params=lambda key: init_unet(key, unet, init_shape), pretrained=pretrained,
                     trainable=parts.trainable, init_frozen=init_frozen, pretrained_frozen=pretrained_frozen,
                     train_step=trainer.train_step, eval_step=trainer.eval_step,
                     make_data=lambda p, n: unet_data_source(cfg, data_source, p, n),
                     make_val_data=lambda p, n: unet_data_source(cfg, data_source, p, n, validation=True),
                     validation_every=int(cfg["ckpt"]["save_ckpt_steps"]), ema_decay=float(settings.ema_decay))
