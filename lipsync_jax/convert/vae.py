"""diffusers AutoencoderKL folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
``.bin``) -> Flax params of ``lipsync_jax.models.vae.AutoencoderKL``.

Both attention namings are accepted: diffusers >= 0.14 (``to_q``/``to_k``/``to_v``/``to_out.0``)
and the older ``query``/``key``/``value``/``proj_attn`` of early sd-vae-ft-mse uploads.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionError, ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin",
                "diffusion_pytorch_model.fp16.safetensors")

_RESNET_CONV = r"(conv1|conv2|conv_shortcut)"
_NORM = r"(norm1|norm2)"
_ATTN = {"to_q": "to_q", "query": "to_q", "to_k": "to_k", "key": "to_k", "to_v": "to_v",
         "value": "to_v", r"to_out\.0": "to_out", "proj_attn": "to_out"}


def _param_rules(pattern: str, target: str, kind: str) -> list[Rule]:
    """weight + bias rules for one torch module; ``kind`` is conv/linear/norm."""
    weight = {"conv": ("kernel", "conv2d"), "linear": ("kernel", "linear"), "norm": ("scale", "none")}[kind]
    return [Rule(pattern + r"\.weight", f"{target}/{weight[0]}", weight[1]),
            Rule(pattern + r"\.bias", f"{target}/bias")]


def vae_rules() -> list[Rule]:
    rules: list[Rule] = []
    for part in ("encoder", "decoder"):
        blocks = "down_blocks" if part == "encoder" else "up_blocks"
        sampler = ("downsamplers", "downsample") if part == "encoder" else ("upsamplers", "upsample")
        p = rf"{part}\.{blocks}\.(\d+)"
        rules += _param_rules(rf"{p}\.resnets\.(\d+)\.{_RESNET_CONV}", rf"{part}/{blocks}_\1_resnets_\2/\3", "conv")
        rules += _param_rules(rf"{p}\.resnets\.(\d+)\.{_NORM}", rf"{part}/{blocks}_\1_resnets_\2/\3", "norm")
        rules += _param_rules(rf"{p}\.{sampler[0]}\.0\.conv", rf"{part}/{blocks}_\1_{sampler[1]}/conv", "conv")
        m = rf"{part}\.mid_block"
        rules += _param_rules(rf"{m}\.resnets\.(\d+)\.{_RESNET_CONV}", rf"{part}/mid_block/resnets_\1/\2", "conv")
        rules += _param_rules(rf"{m}\.resnets\.(\d+)\.{_NORM}", rf"{part}/mid_block/resnets_\1/\2", "norm")
        rules += _param_rules(rf"{m}\.attentions\.0\.group_norm", f"{part}/mid_block/attentions_0/group_norm", "norm")
        for torch_name, ours in _ATTN.items():
            rules += _param_rules(rf"{m}\.attentions\.0\.{torch_name}", f"{part}/mid_block/attentions_0/{ours}",
                                  "linear")
        rules += _param_rules(rf"{part}\.(conv_in|conv_out)", rf"{part}/\1", "conv")
        rules += _param_rules(rf"{part}\.conv_norm_out", f"{part}/conv_norm_out", "norm")
    rules += _param_rules(r"(quant_conv|post_quant_conv)", r"\1", "conv")
    return rules


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any],
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """An in-memory diffusers VAE state dict -> (bare params, report) for the ``config`` model."""
    from lipsync_jax.models.vae import AutoencoderKL, abstract_params

    return apply_rules(state_dict, vae_rules(), template=abstract_params(AutoencoderKL.from_config(config)),
                       dtype=dtype)


def find_weights(folder: str) -> str:
    for name in WEIGHT_FILES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    raise ConversionError(f"{folder}: no VAE weights found (expected one of {', '.join(WEIGHT_FILES)})")


def read_config(folder: str) -> dict[str, Any]:
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ConversionError(f"{folder}: no config.json (pass a config explicitly)") from None
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: a diffusers VAE folder (or a weights file inside one); ``config``: the
    AutoencoderKL config dict, ``None`` to read ``config.json`` next to the weights.
    Raises ``ConversionError`` if any key is left over or any parameter unfilled."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    folder, weights = (src, find_weights(src)) if os.path.isdir(src) else (os.path.dirname(src), src)
    if config is None:
        config = read_config(folder)
    state_dict, _ = read_state_dict(weights)
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"VAE weights {weights}")
    return params, report
