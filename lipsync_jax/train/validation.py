"""Periodic UNet validation by inference: lip-sync ``data.val_video_path`` to
``data.val_audio_path`` (the first ``run.val_max_seconds``) with the CURRENT UNet params, write
``<workdir>/val/step_{step}.mp4`` and, when a SyncNet is available, score the result
(``val/sync_*`` metrics). A failure (no face in the video, missing weights, ...) becomes a
warning and a ``val/error`` entry: validation never stops a training run.

    validator = UNetValidator(config, workdir, frozen=host_frozen)   # cheap; models built lazily
    metrics = validator(step, host_unet_params)   # {"sync_confidence": 3.1, ...} or {"error": "..."}

Config (``run`` section): ``val_inference`` (on/off), ``val_max_seconds``, ``inference_steps``,
``guidance_scale``, ``seed``. The VAE and the SyncNet are the training task's frozen ones when
given (``frozen["vae"]`` / ``frozen["syncnet"]``), else built from the config (``vae.ckpt_path``;
``data.syncnet_config_path`` and its ``ckpt.inference_ckpt_path``, no score when that is "").
Whisper comes from ``whisper.ckpt_path`` ("" = random, tests only).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax import config_utils

log = logging.getLogger(__name__)
DEFAULT_MAX_SECONDS = 2.0
METRIC_PREFIX = "val/"  # the loop logs the validator's metrics under this prefix


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    enabled: bool
    video_path: str
    audio_path: str
    max_seconds: float
    num_steps: int
    guidance_scale: float
    seed: int

    @classmethod
    def from_config(cls, config: Any, num_steps: int | None = None) -> ValidationSettings:
        cfg = config_utils.config_to_dict(config)
        run, data = cfg["run"], cfg["data"]
        return cls(enabled=bool(run.get("val_inference", False)),
                   video_path=config_utils.resolve_path(data["val_video_path"]) if data["val_video_path"] else "",
                   audio_path=config_utils.resolve_path(data["val_audio_path"]) if data["val_audio_path"] else "",
                   max_seconds=float(run.get("val_max_seconds", DEFAULT_MAX_SECONDS)),
                   num_steps=int(num_steps if num_steps is not None else run.get("inference_steps", 20)),
                   guidance_scale=float(run.get("guidance_scale", 1.5)), seed=int(run.get("seed", 1247)))


def validation_video_path(workdir: str, step: int) -> str:
    return os.path.join(workdir, "val", f"step_{int(step)}.mp4")


def sync_metrics(score: Any) -> dict[str, float]:
    """``sync_*`` fields (logged as ``val/sync_*``) of a ``lipsync_jax.eval.SyncScore``."""
    return {"sync_similarity_at_zero": float(score.similarity_at_zero),
            "sync_best_offset": float(score.best_offset),
            "sync_best_similarity": float(score.best_similarity),
            "sync_confidence": float(score.confidence)}


def error_metrics(error: BaseException) -> dict[str, str]:
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return {"error": f"{type(error).__name__}: {message}"[:500]}


def host_params(tree: Any) -> Any:
    """A numpy copy of (possibly sharded) device params; every process must call this."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils
    return multihost_utils.process_allgather(tree, tiled=True)


def _frozen_syncnet(config: Mapping[str, Any], params: Any):
    from lipsync_jax.eval.sync_eval import LoadedSyncNet
    from lipsync_jax.models.syncnet import StableSyncNet

    sync_cfg = config_utils.config_to_dict(config_utils.load_config(
        config_utils.resolve_path(config["data"]["syncnet_config_path"])))
    return LoadedSyncNet(model=StableSyncNet.from_config(sync_cfg["model"]), params=params,
                         resolution=int(sync_cfg["data"]["resolution"]), source="training task's frozen SyncNet",
                         random_init=False)


def _configured_syncnet(config: Mapping[str, Any]):
    """The SyncNet of ``data.syncnet_config_path`` with its converted checkpoint, or None."""
    from lipsync_jax.eval.sync_eval import load_syncnet

    config_path = config_utils.resolve_path(config["data"]["syncnet_config_path"])
    sync_cfg = config_utils.config_to_dict(config_utils.load_config(config_path))
    checkpoint = sync_cfg["ckpt"].get("inference_ckpt_path", "")
    if not checkpoint:
        return None
    return load_syncnet(config_utils.resolve_path(checkpoint), config=config_path)


class UNetValidator:
    """Callable ``(step, unet_params) -> metrics``; never raises (errors become ``error``).

    ``frozen``: host copies of the training task's frozen networks (``vae``, ``syncnet``: bare
    params trees); ``syncnet``: a ``LoadedSyncNet`` to use instead (tests).
    """

    def __init__(self, config: Any, workdir: str, frozen: Mapping[str, Any] | None = None, syncnet: Any = None,
                 num_steps: int | None = None, progress: bool = False):
        self.config = config
        self.workdir = workdir
        self.settings = ValidationSettings.from_config(config, num_steps)
        self.frozen = dict(frozen or {})
        self.progress = progress
        self._syncnet = syncnet
        self._models = None
        self._engine = None  # built at the first validation; later ones swap in the new UNet weights

    def _base_models(self):
        """LipsyncModels without UNet params (built once)."""
        if self._models is None:
            from lipsync_jax.diffusion import DDIMScheduler, ModuleApply
            from lipsync_jax.models.unet3d import UNet3DConditionModel
            from lipsync_jax.models.unet_config import UNet3DConfig
            from lipsync_jax.models.vae import AutoencoderKL, VAEConfig
            from lipsync_jax.pipeline.models import LipsyncModels, build_audio, build_vae
            from lipsync_jax.train.unet_setup import compute_dtype

            cfg = config_utils.config_to_dict(self.config)
            dtype = compute_dtype(cfg)
            if "vae" in self.frozen:
                vae_cfg = cfg["vae"]
                settings = dict(vae_cfg["model"], scaling_factor=vae_cfg["scaling_factor"],
                                shift_factor=vae_cfg["shift_factor"])
                vae = AutoencoderKL.from_config(VAEConfig.from_dict(settings), dtype=dtype)
                vae_params = jax.tree.map(lambda x: jnp.asarray(x, dtype), self.frozen["vae"])
            else:
                vae, vae_params = build_vae(self.config, cfg["vae"]["ckpt_path"], dtype,
                                            None if cfg["vae"]["ckpt_path"] else self.settings.seed)
            whisper_path = cfg["whisper"].get("ckpt_path", "")
            if not whisper_path:
                log.warning("whisper.ckpt_path is empty: validation uses a RANDOM Whisper (tests only)")
            audio = build_audio(self.config, whisper_path, None if whisper_path else self.settings.seed)
            unet = UNet3DConditionModel(UNet3DConfig.from_dict(cfg["model"]), dtype=dtype)
            data = cfg["data"]
            self._models = LipsyncModels(
                unet_apply=ModuleApply(unet), unet_params=None, vae=vae, vae_params=vae_params, audio=audio,
                scheduler=DDIMScheduler.from_config(cfg["scheduler"]), resolution=int(data["resolution"]),
                num_frames=int(data["num_frames"]), audio_feat_length=tuple(int(x) for x in data["audio_feat_length"]),
                mask_path=config_utils.resolve_path(str(data["mask_image_path"])), dtype=jnp.dtype(dtype),
                random_init=False, fps=float(data["video_fps"]))
        return self._models

    def _syncnet_for_scoring(self):
        if self._syncnet is None:
            cfg = config_utils.config_to_dict(self.config)
            if "syncnet" in self.frozen:
                self._syncnet = _frozen_syncnet(cfg, self.frozen["syncnet"])
            else:
                self._syncnet = _configured_syncnet(cfg) or False
        return self._syncnet or None

    def run(self, step: int, unet_params: Any) -> dict[str, Any]:
        """Inference + scoring; raises on failure (``__call__`` catches)."""
        from lipsync_jax.eval.sync_eval import evaluate_sync
        from lipsync_jax.pipeline import LipsyncEngine, Sampling, SyncJob

        s = self.settings
        if not s.video_path or not s.audio_path:
            raise ValueError("data.val_video_path / data.val_audio_path are not set")
        start = time.perf_counter()
        base = self._base_models()
        params = jax.tree.map(lambda x: jnp.asarray(x, base.dtype) if np.issubdtype(np.asarray(x).dtype, np.floating)
                              else jnp.asarray(x), unet_params)
        if self._engine is None:
            self._engine = LipsyncEngine(dataclasses.replace(base, unet_params=params))
        else:
            self._engine.set_unet_params(params)
        output = validation_video_path(self.workdir, step)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        result = self._engine.run(SyncJob(s.video_path, s.audio_path, output, seed=s.seed, max_seconds=s.max_seconds),
                                  Sampling(steps=s.num_steps, guidance=s.guidance_scale), progress=self.progress)
        metrics: dict[str, Any] = {"frames": float(result.num_frames), "frames_kept": float(result.frames_kept)}
        syncnet = self._syncnet_for_scoring()
        if syncnet is not None:
            metrics.update(sync_metrics(evaluate_sync(output, syncnet).score))
        metrics["seconds"] = time.perf_counter() - start
        return metrics

    def __call__(self, step: int, unet_params: Any) -> dict[str, Any]:
        try:
            return self.run(step, unet_params)
        except Exception as error:  # noqa: BLE001 - validation must never end a training run
            log.warning("validation at step %d failed (training continues): %s: %s", step,
                        type(error).__name__, error)
            return error_metrics(error)


def make_validator(task_name: str, config: Any, workdir: str, frozen: Mapping[str, Any]) -> UNetValidator | None:
    """The loop's hook: a ``UNetValidator`` for a UNet task with ``run.val_inference`` on, using
    host copies of the task's frozen VAE/SyncNet; None otherwise (every process calls this)."""
    run = config_utils.config_to_dict(config)["run"]
    if task_name != "unet" or not run.get("val_inference", False):
        return None
    host_frozen = {name: host_params(frozen[name]) for name in ("vae", "syncnet") if name in frozen}
    return UNetValidator(config, workdir, frozen=host_frozen)
