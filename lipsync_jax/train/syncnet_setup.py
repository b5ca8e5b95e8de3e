"""Builds the SyncNet ``TrainTask`` from a SyncNet config (configs/syncnet/*.py). The SyncNet is
small: its parameters are replicated over the mesh and the batch is data parallel."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from lipsync_jax import config_utils
from lipsync_jax.models.syncnet import StableSyncNet, param_shapes_tree
from lipsync_jax.models.syncnet import init_params as init_syncnet
from lipsync_jax.train.data_sources import syncnet_data_source
from lipsync_jax.train.syncnet_step import SyncNetTrainer
from lipsync_jax.train.task import TrainConfigError, TrainTask, load_converted


def build_syncnet_task(config: Any, data_source: str = "synthetic") -> TrainTask:
    cfg = config_utils.config_to_dict(config)
    data, run = cfg["data"], cfg["run"]
    if data.get("latent_space"):
        raise TrainConfigError("latent-space SyncNet training (data.latent_space) is not implemented")
    dtype = jnp.bfloat16 if run["mixed_precision_training"] else jnp.float32
    model = StableSyncNet.from_config(cfg["model"], dtype=dtype)
    lower_half = bool(data.get("lower_half", True))
    res = int(data["resolution"])
    image_hw = (res // 2, res) if lower_half else (res, res)
    shapes = param_shapes_tree(model)["params"]
    trainer = SyncNetTrainer(model, lower_half=lower_half)

    def pretrained():
        path = cfg["ckpt"]["resume_ckpt_path"]
        return load_converted(path, "ckpt.resume_ckpt_path", shapes=shapes, kind="syncnet",
                              model_config=cfg["model"]) if path else None

    return TrainTask(
        name="syncnet", param_shapes=shapes, logical_specs=None,
        init_params=lambda key: init_syncnet(model, key, image_hw=image_hw)["params"],
        pretrained=pretrained, trainable=None, init_frozen=lambda key: {}, pretrained_frozen=dict,
        train_step=trainer.train_step, eval_step=trainer.eval_step,
        make_data=lambda p, n: syncnet_data_source(cfg, data_source, p, n),
        make_val_data=lambda p, n: syncnet_data_source(cfg, data_source, p, n, validation=True),
        validation_every=int(run["validation_steps"]))
