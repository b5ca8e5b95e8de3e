"""S3FD's ``sfd_face.pth`` (a plain state_dict) -> bare Flax params of
``lipsync_jax.models.s3fd.S3FDNet``: ``vgg.N`` -> ``vgg_N``, ``extras.K`` -> ``extras_K``,
``loc.K`` / ``conf.K`` -> ``loc_K`` / ``conf_K``, ``L2NormX_Y.weight`` -> ``L2NormX_Y/scale``."""

from __future__ import annotations

from typing import Any, Mapping

from lipsync_jax.convert.rules import ConversionReport, Rule, param_shapes
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.models.s3fd import S3FDConfig, abstract_params

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
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    state_dict, _ = read_state_dict(src)
    params, report = convert_state_dict(state_dict, config, dtype=dtype)
    report.raise_if_problems(f"S3FD checkpoint {src}")
    return params, report
