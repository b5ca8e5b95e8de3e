"""S3FD's ``sfd_face.pth`` (a plain state_dict) -> bare Flax params of
``lipsync_jax.models.s3fd.S3FDNet``: ``vgg.N`` -> ``vgg_N``, ``extras.K`` -> ``extras_K``,
``loc.K`` / ``conf.K`` -> ``loc_K`` / ``conf_K``, ``L2NormX_Y.weight`` -> ``L2NormX_Y/scale``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lipsync_jax.convert.rules import ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.models.s3fd import S3FDConfig, abstract_params
from lipsync_jax.tree_utils import param_shapes

RULES: tuple[Rule, ...] = (
    Rule(r"(vgg|extras|loc|conf)\.(\d+)\.weight", r"\1_\2/kernel", "conv2d"),
    Rule(r"(vgg|extras|loc|conf)\.(\d+)\.bias", r"\1_\2/bias"),
    Rule(r"(L2Norm\d_\d)\.weight", r"\1/scale"),
)


def _config(config: Any) -> S3FDConfig:
    return config if isinstance(config, S3FDConfig) else S3FDConfig.from_config(config)


def convert_state_dict(state_dict: Mapping[str, Any], config: Any = None,
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """State dict -> (bare params, report); ``config``: ``{"narrow_by": n}`` or None (full size)."""
    return apply_rules(state_dict, RULES, template=param_shapes(abstract_params(_config(config))), dtype=dtype)


def convert_file(src: str, config: Any = None, dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: ``sfd_face.pth``. Raises ``ConversionError`` when it does not fit."""
    from lipsync_jax.convert.torch_legacy import read_any_state_dict

    state_dict = read_any_state_dict(src)  # also the legacy (pre-1.6) torch format of the original file
    if config is None:
        config = config_from_state_dict(state_dict)
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"S3FD checkpoint {src}")
    return params, report


def saved_config(params: Mapping[str, Any]) -> dict[str, Any]:
    """The config stored beside converted params (``--config`` not given): read off the shapes."""
    return {"narrow_by": max(1, 64 // int(params["vgg_0"]["kernel"].shape[-1]))}


def config_from_state_dict(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Width divisor read off the first conv (1 for sfd_face.pth)."""
    first = state_dict.get("vgg.0.weight")
    return {"narrow_by": max(1, 64 // int(first.shape[0]))} if first is not None else {}
