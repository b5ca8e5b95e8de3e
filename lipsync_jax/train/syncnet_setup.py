"""Builds the SyncNet ``TrainTask`` from a SyncNet config (configs/syncnet/*.py). The SyncNet is
small: its parameters are replicated over the mesh and the batch is data parallel.

Latent space (``data.latent_space``, configs/syncnet/syncnet_16_latent.py): the config's ``vae``
section names the frozen VAE that encodes the faces (``vae.ckpt_path``; "" = random weights, tests
only); the visual encoder then takes ``4 * num_frames`` channels at ``resolution / 8``.
"""

from __future__ import annotations

import logging
from typing import Any

import jax.numpy as jnp

from lipsync_jax import config_utils
from lipsync_jax.models import syncnet
from lipsync_jax.models import vae as vae_model
from lipsync_jax.models.syncnet import StableSyncNet
from lipsync_jax.models.vae import AutoencoderKL
from lipsync_jax.train.data_sources import syncnet_data_source
from lipsync_jax.train.syncnet_step import SyncNetTrainer
from lipsync_jax.train.task import TrainConfigError, TrainTask, load_converted

log = logging.getLogger(__name__)
LATENT_CHANNELS = 4


def build_syncnet_task(config: Any, data_source: str = "synthetic") -> TrainTask:
    cfg = config_utils.config_to_dict(config)
    data, run = cfg["data"], cfg["run"]
    dtype = jnp.bfloat16 if run["mixed_precision_training"] else jnp.float32
    model = StableSyncNet.from_config(cfg["model"], dtype=dtype)
    lower_half = bool(data.get("lower_half", True))
    res = int(data["resolution"])
    latent = bool(data.get("latent_space", False))
    vae = None
    if latent:
        if "vae" not in cfg:
            raise TrainConfigError("data.latent_space needs a `vae` section in the SyncNet config "
                                   "(see configs/syncnet/syncnet_16_latent.py)")
        vae_cfg = cfg["vae"]
        vae = AutoencoderKL.from_config(dict(vae_cfg["model"], scaling_factor=vae_cfg["scaling_factor"],
                                             shift_factor=vae_cfg["shift_factor"]), dtype=dtype)
        side = res // vae.downsample_factor
        want = LATENT_CHANNELS * int(data["num_frames"])
        if model.config.visual_encoder.in_channels != want:
            raise TrainConfigError(f"model.visual_encoder.in_channels is {model.config.visual_encoder.in_channels}; "
                                   f"latent space with {data['num_frames']} frames needs {want}")
    else:
        side = res
    image_hw = (side // 2, side) if lower_half else (side, side)
    shapes = syncnet.abstract_params(model)
    trainer = SyncNetTrainer(model, lower_half=lower_half, vae=vae)

    def pretrained():
        path = cfg["ckpt"]["resume_ckpt_path"]
        return load_converted(path, "ckpt.resume_ckpt_path", shapes=shapes, kind="syncnet",
                              model_config=cfg["model"]) if path else None

    def init_frozen(key):
        return {"vae": vae_model.init_params(key, vae, 8 * vae.downsample_factor)} if vae is not None else {}

    def pretrained_frozen():
        if vae is None:
            return {}
        path = cfg["vae"]["ckpt_path"]
        if not path:
            log.warning("vae.ckpt_path is empty: the frozen vae has RANDOM weights (tests/smoke runs only)")
            return {}
        return {"vae": load_converted(path, "vae.ckpt_path", kind="vae")}

    return TrainTask(
        name="syncnet", param_shapes=shapes, logical_specs=None,
        init_params=lambda key: syncnet.init_params(key, model, image_hw=image_hw),
        pretrained=pretrained, trainable=None, init_frozen=init_frozen, pretrained_frozen=pretrained_frozen,
        train_step=trainer.train_step, eval_step=trainer.eval_step,
        make_data=lambda p, n: syncnet_data_source(cfg, data_source, p, n),
        make_val_data=lambda p, n: syncnet_data_source(cfg, data_source, p, n, validation=True),
        validation_every=int(run["validation_steps"]))
