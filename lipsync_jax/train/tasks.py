"""Config type dispatch: a SyncNet config has ``model.audio_encoder``, a UNet config has
``model.in_channels``; a UNet config with a ``distill`` section distils a teacher UNet into a
consistency student."""

from __future__ import annotations

from typing import Any

from lipsync_jax.train.task import TrainConfigError, TrainTask


def build_task(config: Any, data_source: str = "synthetic") -> TrainTask:
    model = config["model"]
    if "audio_encoder" in model:
        from lipsync_jax.train.syncnet_setup import build_syncnet_task
        return build_syncnet_task(config, data_source)
    if "in_channels" in model and "distill" in config:
        from lipsync_jax.train.distill_setup import build_distill_task
        return build_distill_task(config, data_source)
    if "in_channels" in model:
        from lipsync_jax.train.unet_setup import build_unet_task
        return build_unet_task(config, data_source)
    raise TrainConfigError("config.model is neither a UNet (in_channels) nor a SyncNet (audio_encoder)")
