"""Builds the UNet ``TrainTask`` from a UNet config (configs/unet/*.py): the trained UNet, the
frozen VAE / SyncNet / LPIPS / TREPA networks (converted weights from their ``ckpt_path``
fields, or random weights when "" — for tests and smoke runs only), the trainable mask and
the data source. ``unet_parts`` is the same minus the task: the distillation task
(``train/distill_setup.py``) builds on it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lipsync_jax import config_utils
from lipsync_jax.diffusion.ddim import DDIMScheduler
from lipsync_jax.losses.lpips import LPIPS
from lipsync_jax.losses.lpips import init_params as init_lpips
from lipsync_jax.losses.trepa import TREPALoss
from lipsync_jax.models.syncnet import StableSyncNet
from lipsync_jax.models.syncnet import init_params as init_syncnet
from lipsync_jax.models.unet3d import UNet3DConditionModel, logical_axes
from lipsync_jax.models.unet3d import abstract_params as unet_abstract_params
from lipsync_jax.models.unet3d import init_params as init_unet
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.models.vae import AutoencoderKL
from lipsync_jax.models.vae import init_params as init_vae
from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2
from lipsync_jax.models.videomae import init_params as init_videomae
from lipsync_jax.train.data_sources import unet_data_source
from lipsync_jax.train.state import unet_trainable
from lipsync_jax.train.task import TrainConfigError, TrainTask, load_converted
from lipsync_jax.train.unet_step import UNetLossSettings, UNetTrainer

log = logging.getLogger(__name__)
INIT_SHAPE = (1, 2, 8, 8)  # (b, f, h, w) of the dummy UNet input used for init (weights do not depend on it)


def compute_dtype(config: Mapping[str, Any]):
    return jnp.bfloat16 if config["run"]["mixed_precision_training"] else jnp.float32


def _vae_config(config) -> dict:
    vae = config_utils.config_to_dict(config["vae"])
    return dict(vae["model"], scaling_factor=vae["scaling_factor"], shift_factor=vae["shift_factor"])


@dataclasses.dataclass(frozen=True)
class UNetParts:
    """What a UNet training task is made of (see ``build_unet_task``)."""

    cfg: dict                      # the config as plain dicts
    unet: UNet3DConditionModel
    init_shape: tuple[int, ...]    # (b, f, h, w, c) of the dummy init input
    shapes: Any                    # abstract UNet params
    trainer: UNetTrainer           # encode / noise / losses of stage 2
    trainable: Any                 # bool tree or None (all)
    init_frozen: Callable[[jax.Array], dict]   # random frozen networks (vae, syncnet, lpips, trepa)
    pretrained_frozen: Callable[[], dict]      # their converted weights, where configured
    pretrained: Callable[[], Any]              # ckpt.resume_ckpt_path's UNet, or None


def unet_parts(config: Any) -> UNetParts:
    cfg = config_utils.config_to_dict(config)
    run, data = cfg["run"], cfg["data"]
    dtype = compute_dtype(cfg)
    remat = bool(run["enable_gradient_checkpointing"])
    unet = UNet3DConditionModel(UNet3DConfig.from_dict(cfg["model"]), dtype=dtype, param_dtype=jnp.float32,
                                remat=remat)
    init_shape = INIT_SHAPE + (unet.config.in_channels,)
    shapes = unet_abstract_params(unet, init_shape)
    vae = AutoencoderKL.from_config(_vae_config(cfg), dtype=dtype)
    scheduler = DDIMScheduler.from_config(cfg["scheduler"])

    syncnet_cfg = config_utils.config_to_dict(config_utils.load_config(config_utils.resolve_path(
        data["syncnet_config_path"])))
    settings = UNetLossSettings.from_config(cfg, syncnet_cfg["data"])
    if settings.uses_sync and settings.pixel_space_supervise == settings.syncnet_latent_space:
        want = "a pixel-space" if settings.pixel_space_supervise else "a latent-space"
        raise TrainConfigError(f"run.pixel_space_supervise={settings.pixel_space_supervise} with run.use_syncnet needs "
                               f"{want} SyncNet, but data.syncnet_config_path={data['syncnet_config_path']!r} has "
                               f"data.latent_space={settings.syncnet_latent_space} (latent: "
                               "configs/syncnet/syncnet_16_latent.py)")
    syncnet = StableSyncNet.from_config(syncnet_cfg["model"], dtype=dtype) if settings.uses_sync else None
    lpips = LPIPS.from_config(cfg["lpips"], dtype=dtype) if settings.uses_lpips else None
    trepa = None
    if settings.uses_trepa:
        trepa = TREPALoss(VideoMAEv2(VideoMAEConfig.from_config(cfg["trepa"]["model"]), dtype=dtype, remat=remat))

    def init_frozen(key):
        k_vae, k_sync, k_lpips, k_trepa = jax.random.split(key, 4)
        res = data["resolution"]
        frozen = {"vae": init_vae(k_vae, vae, image_size=res)}
        if syncnet is not None:
            r = settings.syncnet_resolution // (vae.downsample_factor if settings.syncnet_latent_space else 1)
            hw = (r // 2, r) if settings.syncnet_lower_half else (r, r)
            frozen["syncnet"] = init_syncnet(k_sync, syncnet, image_hw=hw)
        if lpips is not None:
            lpips_params = init_lpips(k_lpips, lpips)
            # LPIPS' lin layers are non-negative (a distance); keep random ones so too
            frozen["lpips"] = {k: jax.tree.map(jnp.abs, v) if k.startswith("lin") else v
                               for k, v in lpips_params.items()}
        if trepa is not None:
            frozen["trepa"] = init_videomae(k_trepa, trepa.model)
        return frozen

    def pretrained_frozen():
        out = {}
        # (name, config field, path, converter kind, model config for on-the-fly conversion)
        paths = [("vae", "vae.ckpt_path", cfg["vae"]["ckpt_path"], "vae", None)]
        if syncnet is not None:
            paths.append(("syncnet", f"{data['syncnet_config_path']}: ckpt.inference_ckpt_path",
                          syncnet_cfg["ckpt"]["inference_ckpt_path"], "syncnet", syncnet_cfg["model"]))
        if lpips is not None:
            paths.append(("lpips", "lpips.ckpt_path", cfg["lpips"]["ckpt_path"], "lpips", cfg["lpips"]))
        if trepa is not None:
            paths.append(("trepa", "trepa.ckpt_path", cfg["trepa"]["ckpt_path"], "videomae",
                          cfg["trepa"]["model"]))
        for name, field, path, kind, model_config in paths:
            if path:
                out[name] = load_converted(path, field, kind=kind, model_config=model_config)
            else:
                log.warning("%s is empty: the frozen %s has RANDOM weights (tests/smoke runs only)", field, name)
        return out

    def pretrained():
        path = cfg["ckpt"]["resume_ckpt_path"]
        return load_converted(path, "ckpt.resume_ckpt_path", shapes=shapes, kind="unet",
                              model_config=cfg["model"]) if path else None

    trainable = unet_trainable(shapes, cfg["model"], run)
    trainer = UNetTrainer(unet=unet, vae=vae, scheduler=scheduler, settings=settings, syncnet=syncnet,
                          lpips=lpips, trepa=trepa, trainable=trainable)
    return UNetParts(cfg=cfg, unet=unet, init_shape=init_shape, shapes=shapes, trainer=trainer, trainable=trainable,
                     init_frozen=init_frozen, pretrained_frozen=pretrained_frozen, pretrained=pretrained)


def build_unet_task(config: Any, data_source: str = "synthetic") -> TrainTask:
    parts = unet_parts(config)
    cfg, unet, init_shape, trainer = parts.cfg, parts.unet, parts.init_shape, parts.trainer
    return TrainTask(name="unet", param_shapes=parts.shapes, logical_specs=logical_axes(unet, init_shape),
                     init_params=lambda key: init_unet(key, unet, init_shape), pretrained=parts.pretrained,
                     trainable=parts.trainable, init_frozen=parts.init_frozen,
                     pretrained_frozen=parts.pretrained_frozen, train_step=trainer.train_step,
                     eval_step=trainer.eval_step, make_data=lambda p, n: unet_data_source(cfg, data_source, p, n),
                     make_val_data=lambda p, n: unet_data_source(cfg, data_source, p, n, validation=True),
                     validation_every=int(cfg["ckpt"]["save_ckpt_steps"]))
