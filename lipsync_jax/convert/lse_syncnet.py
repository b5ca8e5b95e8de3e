"""syncnet_python's ``syncnet_v2.model`` (a pickled ``state_dict`` of ``S``) -> bare Flax params of
``lipsync_jax.models.lse_syncnet.LSESyncNet``.

Key names are the ``nn.Sequential`` indices (``netcnnaud.N``, ``netcnnlip.N``, ``netfcaud.N``,
``netfclip.N``); convolutions keep their index (``netcnnaud/conv_0``), BatchNorms theirs (``netcnnaud/norm_1``) with
``weight``/``bias`` -> ``scale``/``bias`` and the running statistics kept as frozen leaves;
``num_batches_tracked`` is dropped (reported as skipped).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.models.lse_syncnet import LSESyncNetConfig, abstract_params
from lipsync_jax.tree_utils import param_shapes

_CONVS = "0|4|8|11|14|18"
_NORMS = "1|5|9|12|15|19"

RULES: tuple[Rule, ...] = (
    Rule(rf"netcnnaud\.({_CONVS})\.weight", r"netcnnaud/conv_\1/kernel", "conv2d"),
    Rule(rf"netcnnlip\.({_CONVS})\.weight", r"netcnnlip/conv_\1/kernel", "conv3d"),
    Rule(rf"(netcnnaud|netcnnlip)\.({_CONVS})\.bias", r"\1/conv_\2/bias"),
    Rule(r"(netfcaud|netfclip)\.(0|3)\.weight", r"\1/dense_\2/kernel", "linear"),
    Rule(r"(netfcaud|netfclip)\.(0|3)\.bias", r"\1/dense_\2/bias"),
    Rule(rf"(netcnnaud|netcnnlip)\.({_NORMS})\.weight", r"\1/norm_\2/scale"),
    Rule(r"(netfcaud|netfclip)\.(1)\.weight", r"\1/norm_\2/scale"),
    Rule(rf"(netcnnaud|netcnnlip)\.({_NORMS})\.(bias|running_mean|running_var)", r"\1/norm_\2/\3"),
    Rule(r"(netfcaud|netfclip)\.(1)\.(bias|running_mean|running_var)", r"\1/norm_\2/\3"),
    Rule(r".*\.num_batches_tracked", None),
)


def _config(config: Any) -> LSESyncNetConfig:
    if isinstance(config, LSESyncNetConfig):
        return config
    if config and "audio_widths" in config:
        return LSESyncNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    return LSESyncNetConfig.from_config(config)


def convert_state_dict(state_dict: Mapping[str, Any], config: Any = None,
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """State dict of ``S`` -> (bare params, report). ``config``: ``LSESyncNetConfig``, its dict, or
    ``{"narrow_by": n, "num_layers_in_fc_layers": d}``; None: syncnet_v2's full size."""
    template = param_shapes(abstract_params(_config(config)))
    return apply_rules(state_dict, RULES, template=template, dtype=dtype)


def convert_file(src: str, config: Any = None, dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: ``syncnet_v2.model``. Raises ``ConversionError`` when it does not fit."""
    from lipsync_jax.convert.torch_legacy import read_any_state_dict

    state_dict = read_any_state_dict(src)  # also the legacy (pre-1.6) torch format of the original file
    if config is None:
        config = config_from_state_dict(state_dict)
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"classic SyncNet checkpoint {src}")
    return params, report


def saved_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The config stored beside converted params (``--config`` not given): read off the shapes."""
    return {"narrow_by": max(1, 64 // int(params["netcnnaud"]["conv_0"]["kernel"].shape[-1])),
            "num_layers_in_fc_layers": int(params["netfcaud"]["dense_3"]["kernel"].shape[-1])}


def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Width divisor and embedding size read off the first and last layers (1 and 1024 for
    syncnet_v2.model; narrowed test networks load too)."""
    first, last = state_dict.get("netcnnaud.0.weight"), state_dict.get("netfcaud.3.weight")
    if first is None or last is None:
        return {}
    return {"narrow_by": max(1, 64 // int(first.shape[0])), "num_layers_in_fc_layers": int(last.shape[0])}
