"""Whisper checkpoints -> Flax params of ``lipsync_jax.audio.whisper_encoder.WhisperEncoder``.

Two layouts are read (the encoder only; decoder keys are dropped and reported as skipped):
- OpenAI ``tiny.pt``: ``{"dims": {...}, "model_state_dict": {"encoder.conv1.weight", ...,
  "encoder.blocks.N.attn.query/key/value/out", "attn_ln", "mlp.0", "mlp.2", "mlp_ln",
  "encoder.ln_post", "encoder.positional_embedding" (a buffer), "decoder.*"}}``.
- Hugging Face whisper-tiny (``WhisperForConditionalGeneration``): ``model.encoder.conv1``,
  ``model.encoder.layers.N.self_attn.q_proj/k_proj/v_proj/out_proj``, ``self_attn_layer_norm``,
  ``fc1``, ``fc2``, ``final_layer_norm``, ``model.encoder.layer_norm``,
  ``model.encoder.embed_positions.weight``; ``model.decoder.*`` and ``proj_out`` skipped. The
  ``model.`` prefix is optional (a bare ``WhisperModel``/``WhisperEncoder`` state dict).
Whisper's k projection has no bias in both layouts. The sinusoidal position table is used from
the checkpoint when present and computed (``sinusoids``) when not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from lipsync_jax.audio.whisper_encoder import WhisperEncoderConfig, abstract_params, sinusoids
from lipsync_jax.convert.rules import ConversionError, ConversionReport, Rule
from lipsync_jax.convert.rules import convert_state_dict as apply_rules
from lipsync_jax.tree_utils import flatten_tree, param_shapes, unflatten_tree

POSITIONS = ("positional_embedding",)


def _param(pattern: str, target: str, transform: str) -> list[Rule]:
    """weight -> kernel/scale (``transform`` for kernels), bias -> bias."""
    weight_name = "scale" if transform == "norm" else "kernel"
    return [Rule(pattern + r"\.weight", f"{target}/{weight_name}", "none" if transform == "norm" else transform),
            Rule(pattern + r"\.bias", f"{target}/bias")]


def openai_rules() -> list[Rule]:
    block = r"encoder\.blocks\.(\d+)"
    return [
        *_param(r"encoder\.(conv1|conv2)", r"\1", "conv1d"),
        Rule(r"encoder\.positional_embedding", "positional_embedding"),
        *_param(rf"{block}\.attn\.(query|key|value|out)", r"blocks_\1/attn/\2", "linear"),
        *_param(rf"{block}\.mlp\.(0|2)", r"blocks_\1/mlp_\2", "linear"),
        *_param(rf"{block}\.(attn_ln|mlp_ln)", r"blocks_\1/\2", "norm"),
        *_param(r"encoder\.ln_post", "ln_post", "norm"),
        Rule(r"decoder\..*", None),
    ]


def huggingface_rules() -> list[Rule]:
    enc = r"(?:model\.)?encoder"
    block = rf"{enc}\.layers\.(\d+)"
    projections = {"q_proj": "query", "k_proj": "key", "v_proj": "value", "out_proj": "out"}
    rules = [
        *_param(rf"{enc}\.(conv1|conv2)", r"\1", "conv1d"),
        Rule(rf"{enc}\.embed_positions\.weight", "positional_embedding"),
        *[r for hf, ours in projections.items()
          for r in _param(rf"{block}\.self_attn\.{hf}", rf"blocks_\1/attn/{ours}", "linear")],
        *_param(rf"{block}\.fc1", r"blocks_\1/mlp_0", "linear"),
        *_param(rf"{block}\.fc2", r"blocks_\1/mlp_2", "linear"),
        *_param(rf"{block}\.self_attn_layer_norm", r"blocks_\1/attn_ln", "norm"),
        *_param(rf"{block}\.final_layer_norm", r"blocks_\1/mlp_ln", "norm"),
        *_param(rf"{enc}\.layer_norm", "ln_post", "norm"),
        Rule(r"(?:model\.)?decoder\..*", None),
        Rule(r"proj_out\.weight", None),
    ]
    return rules


def is_huggingface_layout(state_dict: Mapping[str, Any]) -> bool:
    return any(".layers." in k or k.endswith("embed_positions.weight") for k in state_dict)


def infer_config(state_dict: Mapping[str, Any]) -> WhisperEncoderConfig:
    """Encoder dims from the tensor shapes (for files without dims, e.g. a bare HF state dict).
    Every Whisper size uses 64-dimensional heads, so n_head = n_state / 64."""
    hf = is_huggingface_layout(state_dict)
    prefix = next((p for p in ("encoder.", "model.encoder.") if p + "conv1.weight" in state_dict), None)
    if prefix is None:
        raise ConversionError("no encoder.conv1.weight in the checkpoint: not a Whisper model")
    n_state, n_mels, _ = state_dict[prefix + "conv1.weight"].shape
    block = re.compile(re.escape(prefix) + (r"layers" if hf else r"blocks") + r"\.(\d+)\.")
    n_layer = len({m.group(1) for m in map(block.match, state_dict) if m})
    positions = state_dict.get(prefix + ("embed_positions.weight" if hf else "positional_embedding"))
    n_ctx = positions.shape[0] if positions is not None else 1500
    return WhisperEncoderConfig(n_mels=int(n_mels), n_audio_ctx=int(n_ctx), n_audio_state=int(n_state),
                                n_audio_head=int(n_state) // 64, n_audio_layer=n_layer)


def convert_state_dict(state_dict: Mapping[str, Any], config: WhisperEncoderConfig | Mapping[str, Any],
                       dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """Convert an in-memory OpenAI or Hugging Face Whisper state dict (layout detected from the
    keys). Returns the encoder params (a plain tree) and the report; a missing position table is
    filled with the computed sinusoids (not reported missing)."""
    if not isinstance(config, WhisperEncoderConfig):
        config = WhisperEncoderConfig.from_config(config)
    rules = huggingface_rules() if is_huggingface_layout(state_dict) else openai_rules()
    params, report = apply_rules(state_dict, rules, template=param_shapes(abstract_params(config)), dtype=dtype)
    if "/".join(POSITIONS) in report.missing:
        report.missing.remove("/".join(POSITIONS))
        flat = flatten_tree(params)
        table = sinusoids(config.n_audio_ctx, config.n_audio_state)
        flat[POSITIONS] = table.astype(dtype) if dtype is not None else table
        params = unflatten_tree(flat)
    return params, report


def buffer_param_count(config: WhisperEncoderConfig) -> int:
    """Size of the position table we keep in the params (a buffer, not a parameter, in torch)."""
    return config.n_audio_ctx * config.n_audio_state


def _config_from_extras(extras: Mapping[str, Any]) -> WhisperEncoderConfig | None:
    """Dims from a checkpoint's extras: OpenAI's ``dims`` entry or an HF folder's config.json."""
    for key in ("dims", "config"):
        value = extras.get(key)
        if isinstance(value, Mapping):
            return WhisperEncoderConfig.from_config(value)
    return None


def convert_file(src: str, config: Mapping[str, Any] | None = None,
                 dtype: Any = None) -> tuple[dict[str, Any], ConversionReport]:
    """``src``: OpenAI ``tiny.pt``, a Hugging Face ``model.safetensors`` / ``pytorch_model.bin``
    or its folder. ``config``: encoder dims (OpenAI ``dims`` or HF config names); None reads them
    from the checkpoint's ``dims`` (OpenAI) or the folder's config.json (HF), else infers them from
    the shapes. Raises ``ConversionError`` when the checkpoint does not fit."""
    params, report, _ = convert_file_with_config(src, config, dtype)
    return params, report


def convert_file_with_config(src: str, config: Mapping[str, Any] | None = None, dtype: Any = None
                             ) -> tuple[dict[str, Any], ConversionReport, WhisperEncoderConfig]:
    """``convert_file`` plus the encoder dims it used (to save next to the params)."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    state_dict, extras = read_state_dict(src, keys=("model_state_dict", "state_dict"))
    if config is not None:
        dims = WhisperEncoderConfig.from_config(config)
    else:
        dims = _config_from_extras(extras) or infer_config(state_dict)
    params, report = convert_state_dict(state_dict, dims, dtype=dtype)
    report.raise_if_problems(f"Whisper checkpoint {src}")
    return params, report, dims


__all__ = ["convert_file", "convert_file_with_config", "convert_state_dict", "openai_rules", "huggingface_rules",
           "infer_config", "buffer_param_count"]
