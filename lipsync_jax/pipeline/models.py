"""The networks inference needs, built from a UNet config and loaded (or randomly initialised).

Weights come from folders written by ``python -m lipsync_jax.convert`` (orbax params +
config.json). A path that is not such a folder but an original PyTorch checkpoint
(``latentsync_unet.pt``, ``whisper/tiny.pt``, the diffusers ``sd-vae-ft-mse`` folder) is
converted on the fly (slower start; convert once to skip that).

``random_init=True`` makes every network random (for smoke tests and benchmarks: the output is
meaningless). The UNet and VAE weights are drawn from their parameter shapes (``random_params``,
no compile of ``init``: the UNet's would take minutes on a CPU), so the layers the modules
initialise to zero (conv_in/conv_out, motion-module outputs) are random too and every layer, the
audio cross-attention included, changes the result. Whisper uses its own ``init`` (it keeps the
sinusoidal position table).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from lipsync_jax.audio import AudioFeatureExtractor, WhisperEncoder, WhisperEncoderConfig
from lipsync_jax.checkpoints import is_converted, restore_params
from lipsync_jax.config_utils import config_to_dict, resolve_path
from lipsync_jax.diffusion import DDIMScheduler, ModuleApply
from lipsync_jax.models.unet3d import UNet3DConditionModel, unet_param_shapes
from lipsync_jax.models.unet_config import UNet3DConfig
from lipsync_jax.models.vae import AutoencoderKL, VAEConfig, param_shapes_tree
from lipsync_jax.pipeline.errors import CheckpointMismatchError, InputError

RANDOM_STDDEV = 0.02  # random_init: embeddings and other non-kernel weights


@dataclasses.dataclass
class LipsyncModels:
    """Everything the sampler and the VAE/audio stages need, plus the data settings."""

    unet_apply: ModuleApply  # hashable: the sampler compiles once per model
    unet_params: Any
    vae: AutoencoderKL
    vae_params: Any  # {"params": tree}
    audio: AudioFeatureExtractor
    scheduler: DDIMScheduler
    resolution: int
    num_frames: int
    audio_feat_length: tuple[int, int]
    mask_path: str
    dtype: Any
    random_init: bool

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample_factor


def _floating_cast(tree: Any, dtype: Any) -> Any:
    return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _shape_paths(tree: Any) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", k)) for k in path): tuple(leaf.shape) for path, leaf in flat}


def check_param_tree(params: Any, template: Any, what: str) -> None:
    """Raise ``CheckpointMismatchError`` unless ``params`` has ``template``'s paths and shapes."""
    got, want = _shape_paths(params), _shape_paths(template)
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    if not (missing or extra or wrong):
        return
    details = [f"missing: {k}" for k in missing[:3]] + [f"unexpected: {k}" for k in extra[:3]]
    details += [f"shape {got[k]} instead of {want[k]}: {k}" for k in wrong[:3]]
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


def _unwrap_params(tree: Mapping[str, Any]) -> Any:
    return tree["params"] if set(tree) == {"params"} else tree


def random_params(template: Any, seed: int) -> Any:
    """Random numpy params with the shapes of ``template`` (a tree of ShapeDtypeStructs), made
    without running (or compiling) the model: kernels ~ N(0, 1/fan_in), norm scales 1, biases 0,
    anything else ~ N(0, 0.02^2). Every layer, the zero-initialised ones included, is random."""
    rng = np.random.default_rng(seed)
    flat, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in flat:
        name = str(getattr(path[-1], "key", path[-1]))
        shape = tuple(leaf.shape)
        if name == "kernel":
            fan_in = int(np.prod(shape[:-1])) or 1
            value = rng.standard_normal(shape, np.float32) / np.sqrt(fan_in)
        elif name == "scale":
            value = np.ones(shape, np.float32)
        elif name == "bias":
            value = np.zeros(shape, np.float32)
        else:
            value = RANDOM_STDDEV * rng.standard_normal(shape, np.float32)
        leaves.append(value)
    return jax.tree_util.tree_unflatten(treedef, leaves)


def build_unet(config, path: str, dtype: Any, random_seed: int | None) -> tuple[ModuleApply, Any]:
    model_cfg = config_to_dict(config.model)
    model = UNet3DConditionModel(UNet3DConfig.from_dict(model_cfg), dtype=dtype)
    if random_seed is not None:
        params = random_params(unet_param_shapes(model), random_seed)
    else:
        params, _ = load_weights(path, "unet", model_cfg, np.float32)
        params = _unwrap_params(params)
        check_param_tree(params, unet_param_shapes(model), f"UNet weights {path}")
    return ModuleApply(model), _floating_cast(params, dtype)


def build_vae(config, path: str, dtype: Any, random_seed: int | None) -> tuple[AutoencoderKL, Any]:
    vae_cfg = config_to_dict(config.vae)
    settings = dict(vae_cfg["model"], scaling_factor=vae_cfg["scaling_factor"], shift_factor=vae_cfg["shift_factor"])
    model = AutoencoderKL.from_config(VAEConfig.from_dict(settings), dtype=dtype)
    if random_seed is not None:
        params = random_params(param_shapes_tree(model)["params"], random_seed)
    else:
        diffusers_folder = os.path.isfile(os.path.join(resolve_path(path), "config.json"))
        params, _ = load_weights(path, "vae", None if diffusers_folder else vae_cfg["model"], np.float32)
        params = _unwrap_params(params)
        check_param_tree(params, param_shapes_tree(model)["params"], f"VAE weights {path}")
    return model, {"params": _floating_cast(params, dtype)}


def build_audio(config, path: str, random_seed: int | None) -> AudioFeatureExtractor:
    dims_cfg = config_to_dict(config.whisper)["dims"]
    if random_seed is not None:
        dims = WhisperEncoderConfig.from_config(dims_cfg)
        mel = jnp.zeros((1, dims.n_frames, dims.n_mels), jnp.float32)
        params = jax.jit(WhisperEncoder(dims).init)(jax.random.key(random_seed), mel)["params"]
    else:
        params, stored = load_weights(path, "whisper", None, np.float32)
        dims = WhisperEncoderConfig.from_config(stored or dims_cfg)
        params = _unwrap_params(params)
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
        random_init=random_init)
