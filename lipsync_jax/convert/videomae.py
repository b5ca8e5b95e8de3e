"""VideoMAEv2 ``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (TREPA's network) -> our ``VideoMAEv2`` params.

The weights sit under ``"model"``, ``"module"`` or at the top level. The classification head
(``head.*``) is not used for features and is skipped; the position table is not stored (it is
a fixed sinusoid we compute).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from lipsync_jax.convert.rules import ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.models.videomae import VideoMAEConfig, VideoMAEv2, abstract_params
from lipsync_jax.tree_utils import param_shapes

_BLOCK = r"blocks\.(\d+)\."
RULES: tuple[Rule, ...] = (
    Rule(r"patch_embed\.proj\.weight", "patch_embed/kernel", "conv3d"),
    Rule(r"patch_embed\.proj\.bias", "patch_embed/bias"),
    Rule(_BLOCK + r"(norm1|norm2)\.weight", r"blocks_\1/\2/scale"),
    Rule(_BLOCK + r"(norm1|norm2)\.bias", r"blocks_\1/\2/bias"),
    Rule(_BLOCK + r"attn\.(q_bias|v_bias)", r"blocks_\1/attn/\2"),
    Rule(_BLOCK + r"attn\.qkv\.weight", r"blocks_\1/attn/qkv/kernel", "linear"),
    Rule(_BLOCK + r"attn\.proj\.weight", r"blocks_\1/attn/proj/kernel", "linear"),
    Rule(_BLOCK + r"attn\.proj\.bias", r"blocks_\1/attn/proj/bias"),
    Rule(_BLOCK + r"mlp\.(fc1|fc2)\.weight", r"blocks_\1/mlp/\2/kernel", "linear"),
    Rule(_BLOCK + r"mlp\.(fc1|fc2)\.bias", r"blocks_\1/mlp/\2/bias"),
    Rule(r"fc_norm\.weight", "fc_norm/scale"),
    Rule(r"fc_norm\.bias", "fc_norm/bias"),
    Rule(r"head\.(weight|bias)", None),  # classifier over SSv2's 174 classes: not a feature
    Rule(r"pos_embed", None),  # fixed sinusoid, recomputed
)


def _canonical(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """Strip DDP ``module.`` prefixes."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def convert_state_dict(state_dict: Mapping[str, Any], config: Mapping[str, Any] | VideoMAEConfig,
                       dtype: Any = None) -> tuple[dict, ConversionReport]:
    """A VideoMAEv2 state dict -> (bare params, report)."""
    if not isinstance(config, VideoMAEConfig):
        config = VideoMAEConfig.from_config(config)
    template = param_shapes(abstract_params(VideoMAEv2(config)))
    return apply_rules(_canonical(state_dict), RULES, template=template, dtype=dtype)


GIANT_CONFIG = {"model": "vit_giant_patch14_224", "all_frames": 16, "tubelet_size": 2, "use_mean_pooling": True}


DEFAULT_CONFIG = GIANT_CONFIG  # what the convert CLI saves when no --config is given


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict, ConversionReport]:
    """``vit_g_hybrid_pt_1200e_ssv2_ft.pth`` (or a smaller VideoMAEv2 file) -> (params, report).
    ``config`` defaults to TREPA's ``vit_giant_patch14_224`` (16 frames, tubelet 2); ``dtype=None``
    stores float32."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    state_dict, _extras = read_state_dict(src, keys=("model", "module", "state_dict"))
    params, report = convert_state_dict(state_dict, GIANT_CONFIG if config is None else config,
                                        np.float32 if dtype is None else dtype)
    report.raise_if_problems(f"VideoMAEv2 weights {src}")
    return params, report
