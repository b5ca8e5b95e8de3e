"""The networks inference needs, built from a UNet config and loaded (or randomly initialised).

Weights come from folders written by ``python -m lipsync_jax.convert`` (orbax params +
config.json). A path that is not such a folder but an original PyTorch checkpoint
(``latentsync_unet.pt``, ``whisper/tiny.pt``, the diffusers ``sd-vae-ft-mse`` folder) is
converted on the fly (slower start; convert once to skip that).

``random_init=True`` makes every network random (for smoke tests and benchmarks: the output is
meaningless). The UNet and VAE weights are drawn from their parameter shapes (``tree_utils.random_params``,
no compile of ``init``: the UNet's would take minutes on a CPU), so the layers the modules
initialise to zero (conv_in/conv_out, motion-module outputs) are random too and every layer, the
audio cross-attention included, changes the result. Whisper uses its own ``init`` (it keeps the
sinusoidal position table).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.audio import AudioFeatureExtractor, WhisperEncoderConfig
from lipsync_jax.audio.whisper_encoder import init_params as init_whisper
from lipsync_jax.checkpoints import is_converted, restore_params
from lipsync_jax.config_utils import config_to_dict, resolve_path
from lipsync_jax.diffusion import DDIMScheduler, ModuleApply
from lipsync_jax.models import unet3d
from lipsync_jax.models import vae as vae_model
from lipsync_jax.models.unet3d import UNet3DConditionModel
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.models.vae import AutoencoderKL, VAEConfig
from lipsync_jax.pipeline.errors import CheckpointMismatchError, InputError
from lipsync_jax.tree_utils import random_params, shape_mismatches


@dataclasses.dataclass
class LipsyncModels:
    """Everything the sampler and the VAE/audio stages need, plus the data settings."""

    unet_apply: ModuleApply  # hashable: the sampler compiles once per model
    unet_params: Any
    vae: AutoencoderKL
    vae_params: Any
    audio: AudioFeatureExtractor
    scheduler: Any  # DDIMScheduler (config.scheduler), or a distilled student's LCMScheduler
    resolution: int
    num_frames: int
    audio_feat_length: tuple[int, int]
    mask_path: str
    dtype: Any
    random_init: bool
    fps: float = 25.0  # the video rate the model works at (config data.video_fps)

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample_factor


def _floating_cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def check_param_tree(params: Any, template: Any, what: str) -> None:
    """Raise ``CheckpointMismatchError`` unless ``params`` has ``template``'s paths and shapes."""
    missing, extra, wrong = shape_mismatches(params, template)
    if not (missing or extra or wrong):
        return
    details = [f"missing: {k}" for k in missing[:3]] + [f"unexpected: {k}" for k in extra[:3]]
    details += [f"shape {k}" for k in wrong[:3]]
    raise CheckpointMismatchError(
        f"{what} do not fit the config's model ({len(missing)} missing, {len(extra)} unexpected, "
        f"{len(wrong)} with other shapes; is --config right?): " + "; ".join(details))


def load_weights(path: str, kind: str, config: Mapping[str, Any] | None, dtype: Any) -> tuple[Any, dict | None]:
    """(params, stored config) from a converted folder, or by converting an original checkpoint
    with ``lipsync_jax.convert.<kind>``."""
    flag = {"unet": "--checkpoint", "vae": "--vae_checkpoint", "whisper": "--whisper_checkpoint"}[kind]
    if not path:
        raise InputError(f"no {kind} weights: pass {flag}=DIR (converted with `python -m lipsync_jax.convert "
                         f"{kind} ...`) or use --random_init")
    path = resolve_path(path)
    if not os.path.exists(path):
        raise InputError(f"{flag} {path}: no such file or folder (convert the official weights with "
                         f"`python -m lipsync_jax.convert {kind} --src ... --dst {path}`)")
    if is_converted(path):
        return restore_params(path, dtype=dtype)
    print(f"{path}: not a converted checkpoint; converting the original {kind} weights now "
          f"(run `python -m lipsync_jax.convert {kind}` once to skip this)", flush=True)
    converter = importlib.import_module(f"lipsync_jax.convert.{kind}")
    params, _report = converter.convert_file(path, config)
    return _floating_cast(params, dtype), None


def build_unet(config, path: str, dtype: Any, random_seed: int | None) -> tuple[ModuleApply, Any]:
    model_cfg = config_to_dict(config.model)
    model = UNet3DConditionModel(UNet3DConfig.from_dict(model_cfg), dtype=dtype)
    if random_seed is not None:
        params = random_params(unet3d.abstract_params(model), random_seed)
    else:
        params, _ = load_weights(path, "unet", model_cfg, np.float32)
        check_param_tree(params, unet3d.abstract_params(model), f"UNet weights {path}")
    return ModuleApply(model), _floating_cast(params, dtype)


def build_vae(config, path: str, dtype: Any, random_seed: int | None) -> tuple[AutoencoderKL, Any]:
    vae_cfg = config_to_dict(config.vae)
    settings = dict(vae_cfg["model"], scaling_factor=vae_cfg["scaling_factor"], shift_factor=vae_cfg["shift_factor"])
    model = AutoencoderKL.from_config(VAEConfig.from_dict(settings), dtype=dtype)
    if random_seed is not None:
        params = random_params(vae_model.abstract_params(model), random_seed)
    else:
        diffusers_folder = os.path.isfile(os.path.join(resolve_path(path), "config.json"))
        params, _ = load_weights(path, "vae", None if diffusers_folder else vae_cfg["model"], np.float32)
        check_param_tree(params, vae_model.abstract_params(model), f"VAE weights {path}")
    return model, _floating_cast(params, dtype)


def build_audio(config, path: str, random_seed: int | None) -> AudioFeatureExtractor:
    dims_cfg = config_to_dict(config.whisper)["dims"]
    if random_seed is not None:
        dims = WhisperEncoderConfig.from_config(dims_cfg)
        params = init_whisper(jax.random.key(random_seed), dims)
    else:
        params, stored = load_weights(path, "whisper", None, np.float32)
        dims = WhisperEncoderConfig.from_config(stored or dims_cfg)
    return AudioFeatureExtractor(params, dims, dtype=jnp.float32)


def build_models(config, *, unet_checkpoint: str = "", vae_checkpoint: str = "", whisper_checkpoint: str = "",
                 dtype: Any = jnp.float32, random_init: bool = False, seed: int = 0) -> LipsyncModels:
    """All networks for ``config`` (a UNet config: model/scheduler/vae/whisper/data sections).
    Weights from the three checkpoint paths, or random ones with ``random_init``."""
    seeds = (seed, seed + 1, seed + 2) if random_init else (None, None, None)
    unet_apply, unet_params = build_unet(config, unet_checkpoint, dtype, seeds[0])
    vae, vae_params = build_vae(config, vae_checkpoint, dtype, seeds[1])
    audio = build_audio(config, whisper_checkpoint, seeds[2])
    unet_cfg = unet_apply.module.config
    if audio.config.n_audio_state != unet_cfg.cross_attention_dim:
        raise CheckpointMismatchError(
            f"Whisper width {audio.config.n_audio_state} != the UNet's cross_attention_dim "
            f"{unet_cfg.cross_attention_dim}")
    resolution = int(config.data.resolution)
    multiple = vae.downsample_factor * 2 ** (len(unet_cfg.block_out_channels) - 1)
    if resolution <= 0 or resolution % multiple:
        raise InputError(f"data.resolution {resolution} must be a positive multiple of {multiple}")
    return LipsyncModels(
        unet_apply=unet_apply, unet_params=unet_params, vae=vae, vae_params=vae_params, audio=audio,
        scheduler=DDIMScheduler.from_config(config_to_dict(config.scheduler)), resolution=resolution,
        num_frames=int(config.data.num_frames),
        audio_feat_length=tuple(int(x) for x in config.data.audio_feat_length),
        mask_path=resolve_path(str(config.data.mask_image_path)), dtype=jnp.dtype(dtype),
        random_init=random_init, fps=float(config.data.video_fps))


def _abstract_cast(tree: Any, dtype: Any) -> Any:
    def cast(x):
        kind = dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype
        return jax.ShapeDtypeStruct(x.shape, kind)
    return jax.tree.map(cast, tree)


def abstract_models(config, dtype: Any = jnp.bfloat16):
    """``LipsyncModels`` for ``config`` whose UNet/VAE/Whisper parameters are ``ShapeDtypeStruct``s
    (nothing allocated): enough to compile the chunk program and read its memory analysis."""
    unet = UNet3DConditionModel(UNet3DConfig.from_dict(config_to_dict(config.model)), dtype=dtype)
    vae_cfg = config_to_dict(config.vae)
    settings = dict(vae_cfg["model"], scaling_factor=vae_cfg["scaling_factor"], shift_factor=vae_cfg["shift_factor"])
    vae = vae_model.AutoencoderKL.from_config(vae_model.VAEConfig.from_dict(settings), dtype=dtype)
    dims = WhisperEncoderConfig.from_config(config_to_dict(config.whisper)["dims"])
    whisper = jax.eval_shape(lambda key: init_whisper(key, dims), jax.random.key(0))
    return LipsyncModels(
        unet_apply=ModuleApply(unet), unet_params=_abstract_cast(unet3d.abstract_params(unet), dtype), vae=vae,
        vae_params=_abstract_cast(vae_model.abstract_params(vae), dtype),
        audio=AudioFeatureExtractor(whisper, dims, dtype=jnp.float32),
        scheduler=DDIMScheduler.from_config(config_to_dict(config.scheduler)),
        resolution=int(config.data.resolution), num_frames=int(config.data.num_frames),
        audio_feat_length=tuple(int(x) for x in config.data.audio_feat_length),
        mask_path=resolve_path(str(config.data.mask_image_path)), dtype=jnp.dtype(dtype), random_init=True,
        fps=float(config.data.video_fps))
