"""LatentSync UNet3DConditionModel checkpoint (``latentsync_unet.pt``) -> our Flax params.

The table below is the whole converter: LatentSync module paths (``resnets.0.norm1``) map to
ours (``resnets_0/norm1``), and each module kind says how its ``weight``/``bias`` convert.
``pos_encoder.pe`` buffers (the motion modules' fixed sinusoid tables; in the checkpoint but
not parameters) are skipped: the model rebuilds them. Like LatentSync (``strict=False``) keys
we skip are reported, but every parameter of ours must be filled and every other key placed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lipsync_jax.convert.rules import ConversionError, ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.models.unet3d import UNet3DConditionModel, abstract_params
from lipsync_jax.models.unet_config import UNet3DConfig, UNetConfigError
from lipsync_jax.tree_utils import param_shapes

# (torch module path regex, our module path) inside a down/mid/up block, and the module kind
_STAGE_MODULES: tuple[tuple[str, str, str], ...] = (
    (r"resnets\.(?P<r>\d+)\.(?P<n>norm1|norm2)", r"resnets_\g<r>/\g<n>", "norm"),
    (r"resnets\.(?P<r>\d+)\.(?P<n>conv1|conv2|conv_shortcut)", r"resnets_\g<r>/\g<n>", "conv"),
    (r"resnets\.(?P<r>\d+)\.time_emb_proj", r"resnets_\g<r>/time_emb_proj", "linear"),
    (r"attentions\.(?P<a>\d+)\.norm", r"attentions_\g<a>/norm", "norm"),
    (r"attentions\.(?P<a>\d+)\.(?P<p>proj_in|proj_out)", r"attentions_\g<a>/\g<p>", "proj"),
    (r"attentions\.(?P<a>\d+)\.transformer_blocks\.(?P<t>\d+)\.(?P<n>norm1|norm2|norm3)",
     r"attentions_\g<a>/transformer_blocks_\g<t>/\g<n>", "norm"),
    (r"attentions\.(?P<a>\d+)\.transformer_blocks\.(?P<t>\d+)\.(?P<at>attn1|attn2)\.(?P<l>to_q|to_k|to_v)",
     r"attentions_\g<a>/transformer_blocks_\g<t>/\g<at>/\g<l>", "linear"),
    (r"attentions\.(?P<a>\d+)\.transformer_blocks\.(?P<t>\d+)\.(?P<at>attn1|attn2)\.to_out\.0",
     r"attentions_\g<a>/transformer_blocks_\g<t>/\g<at>/to_out", "linear"),
    (r"attentions\.(?P<a>\d+)\.transformer_blocks\.(?P<t>\d+)\.ff\.net\.0\.proj",
     r"attentions_\g<a>/transformer_blocks_\g<t>/ff/proj", "linear"),
    (r"attentions\.(?P<a>\d+)\.transformer_blocks\.(?P<t>\d+)\.ff\.net\.2",
     r"attentions_\g<a>/transformer_blocks_\g<t>/ff/out", "linear"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.norm", r"motion_modules_\g<m>/norm", "norm"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.(?P<p>proj_in|proj_out)",
     r"motion_modules_\g<m>/\g<p>", "linear"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.attention_blocks\.(?P<b>\d+)"
     r"\.(?P<l>to_q|to_k|to_v)",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/attention_blocks_\g<b>/\g<l>", "linear"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.attention_blocks\.(?P<b>\d+)"
     r"\.to_out\.0",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/attention_blocks_\g<b>/to_out", "linear"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.norms\.(?P<b>\d+)",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/norms_\g<b>", "norm"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.ff_norm",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/ff_norm", "norm"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.ff\.net\.0\.proj",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/ff/proj", "linear"),
    (r"motion_modules\.(?P<m>\d+)\.temporal_transformer\.transformer_blocks\.(?P<t>\d+)\.ff\.net\.2",
     r"motion_modules_\g<m>/transformer_blocks_\g<t>/ff/out", "linear"),
    (r"(?P<s>downsamplers|upsamplers)\.0\.conv", r"\g<s>_0/conv", "conv"),
)

# block prefixes the stage modules live under
_STAGE_PREFIXES: tuple[tuple[str, str], ...] = (
    (r"(?P<stage>down_blocks|up_blocks)\.(?P<i>\d+)\.", r"\g<stage>_\g<i>/"),
    (r"mid_block\.", "mid_block/"),
)

# modules outside the stages
_TOP_MODULES: tuple[tuple[str, str, str], ...] = (
    (r"conv_in", "conv_in", "conv"),
    (r"conv_out", "conv_out", "conv"),
    (r"conv_norm_out", "conv_norm_out", "norm"),
    (r"time_embedding\.(?P<l>linear_1|linear_2)", r"time_embedding/\g<l>", "linear"),
)

# module kind -> (torch leaf, our leaf, transform); "proj" depends on use_linear_projection
_LEAVES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "norm": (("weight", "scale", "none"), ("bias", "bias", "none")),
    "linear": (("weight", "kernel", "linear"), ("bias", "bias", "none")),
    "conv": (("weight", "kernel", "conv2d"), ("bias", "bias", "none")),
    "proj_conv1x1": (("weight", "kernel", "conv1x1_to_linear"), ("bias", "bias", "none")),
    "proj_linear": (("weight", "kernel", "linear"), ("bias", "bias", "none")),
}

# keys dropped on purpose (buffers, not parameters)
_SKIPPED: tuple[str, ...] = (r".*\.pos_encoder\.pe",)


def unet_rules(config: UNet3DConfig) -> list[Rule]:
    """The rule table for ``config`` (only the proj_in/out layout depends on it)."""
    proj = "proj_linear" if config.use_linear_projection else "proj_conv1x1"
    rules = [Rule(pattern, None) for pattern in _SKIPPED]
    modules = [(pre + mod, tgt_pre + tgt, kind) for pre, tgt_pre in _STAGE_PREFIXES
               for mod, tgt, kind in _STAGE_MODULES] + list(_TOP_MODULES)
    for pattern, target, kind in modules:
        for leaf, our_leaf, transform in _LEAVES[proj if kind == "proj" else kind]:
            rules.append(Rule(rf"{pattern}\.{leaf}", f"{target}/{our_leaf}", transform))
    return rules


_AUDIO_KEY = re.compile(r".*attentions\.\d+\.transformer_blocks\.\d+\.(attn2|norm2)\..*")
_AUDIO_PATH = re.compile(r".*attentions_\d+/transformer_blocks_\d+/(attn2|norm2)/.*")


def _like(items: list[str], limit: int = 3) -> str:
    names = [item.split(" (->")[0] for item in items[:limit]]
    return ", ".join(names) + (", ..." if len(items) > limit else "")


def _diagnose(report: ConversionReport, config: UNet3DConfig) -> list[str]:
    """Readable lines for each kind of mismatch, with a hint at the config field responsible."""
    lines = []
    mismatched_paths = {m.split(" -> ")[1].split(":")[0] for m in report.mismatched}
    missing = [p for p in report.missing if p not in mismatched_paths]  # mismatches are listed once
    unexpected_mm = [k for k in report.unexpected if "motion_modules" in k]
    missing_mm = [p for p in missing if "motion_modules" in p]
    unexpected_audio = [k for k in report.unexpected if _AUDIO_KEY.fullmatch(k.split(" (->")[0])]
    missing_audio = [p for p in missing if _AUDIO_PATH.fullmatch(p)]
    if unexpected_mm:
        hint = ("the checkpoint has motion modules but the config has use_motion_module=False"
                if not config.use_motion_module else
                "the checkpoint has motion modules where the config has none "
                "(motion_module_resolutions / motion_module_mid_block / motion_module_decoder_only differ)")
        lines.append(f"{len(unexpected_mm)} unexpected keys like {_like(unexpected_mm)}: {hint}")
    if missing_mm:
        no_motion_modules = not unexpected_mm and not any("motion_modules" in k for k in report.skipped)
        hint = ("the config has use_motion_module=True but the checkpoint has no motion modules "
                "(a stage1 checkpoint?)" if no_motion_modules
                else "the config expects motion modules where the checkpoint has none "
                "(motion module placement differs)")
        lines.append(f"{len(missing_mm)} parameters unfilled like {_like(missing_mm)}: {hint}")
    if unexpected_audio:
        hint = (": the checkpoint has audio cross-attention layers but the config has add_audio_layer=False"
                if not config.add_audio_layer else "")
        lines.append(f"{len(unexpected_audio)} unexpected audio cross-attention keys like "
                     f"{_like(unexpected_audio)}{hint}")
    if missing_audio:
        hint = (": the config has add_audio_layer=True but the checkpoint has no audio cross-attention layers"
                if config.add_audio_layer else "")
        lines.append(f"{len(missing_audio)} audio cross-attention parameters unfilled like "
                     f"{_like(missing_audio)}{hint}")
    other_unexpected = [k for k in report.unexpected if k not in unexpected_mm and k not in unexpected_audio]
    other_missing = [p for p in missing if p not in missing_mm and p not in missing_audio]
    if other_unexpected:
        lines.append(f"{len(other_unexpected)} unexpected keys like {_like(other_unexpected)}")
    if other_missing:
        lines.append(f"{len(other_missing)} parameters unfilled like {_like(other_missing)}")
    if report.mismatched:
        lines.append(f"{len(report.mismatched)} shape mismatches like {_like(report.mismatched, 2)} "
                     "(block_out_channels / in_channels / out_channels / cross_attention_dim differ?)")
    return lines


def convert_state_dict(state_dict: Mapping[str, Any], config: UNet3DConfig | Mapping[str, Any],
                       dtype: Any = None, what: str = "UNet checkpoint",
                       strict: bool = True) -> tuple[dict, ConversionReport]:
    """Convert a LatentSync UNet state_dict (numpy arrays under the original keys).

    Raises ``ConversionError`` listing what does not match ``config`` (``strict=False``: just
    return the report). ``dtype`` casts the params (None keeps the checkpoint's, e.g. float16
    for the official files).
    """
    if not isinstance(config, UNet3DConfig):
        config = UNet3DConfig.from_dict(config)
    template = param_shapes(abstract_params(UNet3DConditionModel(config)))
    params, report = apply_rules(state_dict, unet_rules(config), template=template, dtype=dtype)
    if strict and report.problem_count():
        lines = _diagnose(report, config)
        raise ConversionError(f"{what} does not match the UNet config ({report.converted} keys converted, "
                              f"{len(report.skipped)} skipped):\n  - " + "\n  - ".join(lines))
    return params, report


def load_unet_config(config: Any) -> UNet3DConfig:
    """A ``UNet3DConfig`` from a config object, a mapping / ConfigDict (a whole training config
    with a ``model`` section, or the model section itself), or a file: ``configs/unet/*.py``
    (ml-collections), ``.json``, or LatentSync's own ``.yaml`` (needs PyYAML)."""
    if isinstance(config, UNet3DConfig):
        return config
    if isinstance(config, (str, os.PathLike)):
        config = _read_config_file(os.fspath(config))
    if hasattr(config, "to_dict") and not isinstance(config, Mapping):  # ml_collections.ConfigDict
        config = config.to_dict()
    if isinstance(config, Mapping):
        config = dict(config)
        for key in ("model", "config"):  # a training config's model section, or a fixture's meta
            section = config.get(key)
            if section is not None and not isinstance(section, Mapping) and hasattr(section, "to_dict"):
                section = section.to_dict()
            if isinstance(section, Mapping) and "block_out_channels" in section:
                config = dict(section)
        return UNet3DConfig.from_dict(config)
    raise UNetConfigError(f"cannot make a UNet config from {type(config).__name__}")


def _read_config_file(path: str) -> Any:
    if path.endswith(".py") or ".py:" in path:
        from lipsync_jax.config_utils import load_config

        return load_config(path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise UNetConfigError(f"{path}: cannot read the UNet config ({e})") from None
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml  # optional: only for LatentSync's own yaml files
        except ImportError:
            raise UNetConfigError(f"{path}: reading yaml needs PyYAML; pass a .json or configs/unet/*.py") from None
        return yaml.safe_load(text)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UNetConfigError(f"{path}: not valid JSON ({e})") from None


def convert_file(src: str, config: Any = None, dtype: Any = None) -> tuple[dict, ConversionReport]:
    """Read ``src`` (.pt/.pth/.safetensors, ``{"global_step", "state_dict"}`` or a bare state
    dict) and convert it for ``config`` (UNet3DConfig, mapping or config file path; required).
    ``dtype=None`` stores float32 (the official files are float16; training wants float32)."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    if config is None:
        raise ConversionError(f"UNet checkpoint {src}: a model config is needed (e.g. configs/unet/stage2.py)")
    config = load_unet_config(config)
    state_dict, _extras = read_state_dict(src)
    return convert_state_dict(state_dict, config, dtype=np.float32 if dtype is None else dtype, what=f"{src}")
