"""LatentSync ``stable_syncnet.pt`` (``{"state_dict": ...}`` plus optional training fields)
-> Flax params of ``lipsync_jax.models.syncnet.StableSyncNet``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionError, ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules

_TOWER = r"(audio_encoder|visual_encoder)"
_BLOCK = rf"{_TOWER}\.down_blocks\.(\d+)"


def _rules(pattern: str, target: str, weight_name: str, transform: str) -> list[Rule]:
    return [Rule(pattern + r"\.weight", f"{target}/{weight_name}", transform),
            Rule(pattern + r"\.bias", f"{target}/bias")]


def syncnet_rules() -> list[Rule]:
    rules: list[Rule] = []
    rules += _rules(rf"{_TOWER}\.conv_in", r"\1/conv_in", "kernel", "conv2d")
    rules += _rules(rf"{_TOWER}\.norm_out", r"\1/norm_out", "scale", "none")
    # residual blocks
    rules += _rules(rf"{_BLOCK}\.(conv1|conv2|conv_shortcut|downsample_conv)", r"\1/down_blocks_\2/\3",
                    "kernel", "conv2d")
    # norm1 is a GroupNorm in both block kinds, norm2/norm3 GroupNorm or LayerNorm: all scale/bias
    rules += _rules(rf"{_BLOCK}\.(norm1|norm2|norm3)", r"\1/down_blocks_\2/\3", "scale", "none")
    # attention blocks: 1x1 convs used as Dense layers, 8-head attention, GEGLU feed-forward
    rules += _rules(rf"{_BLOCK}\.(conv_in|conv_out)", r"\1/down_blocks_\2/\3", "kernel", "conv1x1_to_linear")
    rules += _rules(rf"{_BLOCK}\.attn\.(to_q|to_k|to_v)", r"\1/down_blocks_\2/\3", "kernel", "linear")
    rules += _rules(rf"{_BLOCK}\.attn\.to_out\.0", r"\1/down_blocks_\2/to_out", "kernel", "linear")
    rules += _rules(rf"{_BLOCK}\.ff\.net\.0\.proj", r"\1/down_blocks_\2/ff/proj", "kernel", "linear")
    rules += _rules(rf"{_BLOCK}\.ff\.net\.2", r"\1/down_blocks_\2/ff/out", "kernel", "linear")
    return rules


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any],
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """An in-memory StableSyncNet state dict -> (bare params, report) for the ``config`` model."""
    from lipsync_jax.models.syncnet import StableSyncNet, abstract_params

    model = StableSyncNet.from_config(config)
    return apply_rules(state_dict, syncnet_rules(), template=abstract_params(model), dtype=dtype)


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: ``stable_syncnet.pt`` (or a safetensors file); ``config``: the syncnet config
    dict (LatentSync's yaml ``model`` section, or the whole yaml); required: the file does not
    say which variant it holds. Raises ``ConversionError`` when the checkpoint does not fit."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    if config is None:
        raise ConversionError(f"SyncNet checkpoint {src}: a model config is needed (e.g. "
                              "configs/syncnet/syncnet_16_pixel_attn.py)")

    state_dict, _ = read_state_dict(src, keys=("state_dict",))
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"SyncNet checkpoint {src}")
    return params, report
