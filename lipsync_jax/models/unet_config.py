"""The UNet3DConditionModel configuration, under LatentSync's own field names.

``UNet3DConfig.from_dict(cfg)`` takes the ``model:`` section of LatentSync's
configs/unet/stage1.yaml / stage2.yaml (or a fixture's ``config``), validates it and gives a
frozen, hashable dataclass the Flax modules can hold as an attribute.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


class UNetConfigError(ValueError):
    """A UNet config mapping has unknown fields or values we do not implement."""


DOWN_BLOCK_TYPES = ("CrossAttnDownBlock3D", "DownBlock3D")
UP_BLOCK_TYPES = ("CrossAttnUpBlock3D", "UpBlock3D")
MID_BLOCK_TYPES = ("UNetMidBlock3DCrossAttn",)

# Fields LatentSync's constructor accepts that we only support at their default value.
_FIXED_FIELDS: dict[str, Any] = {
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "upcast_attention": False,
    "class_embed_type": None,
    "num_class_embeds": None,
    "unet_use_cross_frame_attention": False,
    "unet_use_temporal_attention": False,
    "audio_condition_method": "cross_attn",
    "custom_audio_layer": False,
    "resnet_time_scale_shift": "default",
    "act_fn": "silu",
}


@dataclasses.dataclass(frozen=True)
class MotionModuleConfig:
    """AnimateDiff "Vanilla" temporal module settings (``motion_module_kwargs``)."""

    num_attention_heads: int = 8
    num_transformer_block: int = 2
    attention_block_types: tuple[str, ...] = ("Temporal_Self", "Temporal_Self")
    temporal_position_encoding: bool = False
    temporal_position_encoding_max_len: int = 24
    temporal_attention_dim_div: int = 1
    zero_initialize: bool = True
    norm_num_groups: int = 32  # fixed in LatentSync (not a kwarg there); independent of the UNet's

    @classmethod
    def from_dict(cls, kwargs: Mapping[str, Any]) -> MotionModuleConfig:
        kwargs = dict(kwargs)
        if kwargs.pop("cross_frame_attention_mode", None) is not None:
            raise UNetConfigError("motion_module_kwargs.cross_frame_attention_mode is not supported")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise UNetConfigError(f"unknown motion_module_kwargs fields: {unknown}")
        if "attention_block_types" in kwargs:
            kwargs["attention_block_types"] = tuple(kwargs["attention_block_types"])
        cfg = cls(**kwargs)
        bad = [t for t in cfg.attention_block_types if t != "Temporal_Self"]
        if bad:
            raise UNetConfigError(f"motion module attention types {bad} are not supported (only Temporal_Self)")
        return cfg


@dataclasses.dataclass(frozen=True)
class UNet3DConfig:
    """LatentSync's UNet3DConditionModel config (defaults are LatentSync's constructor defaults)."""

    sample_size: int | None = None  # informational: the weights do not depend on it
    in_channels: int = 4
    out_channels: int = 4
    center_input_sample: bool = False
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",)
    mid_block_type: str = "UNetMidBlock3DCrossAttn"
    up_block_types: tuple[str, ...] = ("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    layers_per_block: int = 2
    downsample_padding: int = 1
    mid_block_scale_factor: float = 1.0
    norm_num_groups: int = 32
    norm_eps: float = 1e-5
    cross_attention_dim: int = 1280
    attention_head_dim: tuple[int, ...] = (8, 8, 8, 8)  # per down block: the NUMBER of heads
    use_linear_projection: bool = False
    use_inflated_groupnorm: bool = False  # True: resnet/output GroupNorms per frame
    use_motion_module: bool = False
    motion_module_resolutions: tuple[int, ...] = (1, 2, 4, 8)
    motion_module_mid_block: bool = False
    motion_module_decoder_only: bool = False
    motion_module_type: str | None = None
    motion_module: MotionModuleConfig = MotionModuleConfig()
    add_audio_layer: bool = False

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any]) -> UNet3DConfig:
        cfg = {k: v for k, v in dict(cfg).items() if not k.startswith("_")}  # diffusers "_class_name"...
        for key, default in _FIXED_FIELDS.items():
            value = cfg.pop(key, default)
            if value != default:
                raise UNetConfigError(f"UNet config field {key}={value!r}: only {default!r} is supported")
        motion_kwargs = cfg.pop("motion_module_kwargs", None) or {}
        known = {f.name for f in dataclasses.fields(cls)} - {"motion_module"}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise UNetConfigError(f"unknown UNet config fields: {unknown}")
        for key in ("down_block_types", "up_block_types", "block_out_channels", "motion_module_resolutions"):
            if key in cfg:
                cfg[key] = tuple(cfg[key])
        n_blocks = len(cfg.get("block_out_channels", cls.block_out_channels))
        heads = cfg.get("attention_head_dim", 8)
        cfg["attention_head_dim"] = (int(heads),) * n_blocks if isinstance(heads, int) else tuple(heads)
        config = cls(**cfg, motion_module=MotionModuleConfig.from_dict(motion_kwargs))
        config.validate()
        return config

    def validate(self) -> None:
        n = len(self.block_out_channels)
        problems = []
        if len(self.down_block_types) != n or len(self.up_block_types) != n or len(self.attention_head_dim) != n:
            problems.append("down_block_types, up_block_types, attention_head_dim and block_out_channels "
                            "must have the same length")
        problems += [f"unknown down block {t!r}" for t in self.down_block_types if t not in DOWN_BLOCK_TYPES]
        problems += [f"unknown up block {t!r}" for t in self.up_block_types if t not in UP_BLOCK_TYPES]
        if self.mid_block_type not in MID_BLOCK_TYPES:
            problems.append(f"unknown mid block {self.mid_block_type!r}")
        if self.use_motion_module and self.motion_module_type != "Vanilla":
            problems.append(f"motion_module_type {self.motion_module_type!r}: only 'Vanilla' is supported")
        for ch, heads in zip(self.block_out_channels, self.attention_head_dim):
            if ch % heads or ch % self.norm_num_groups:
                problems.append(f"block channels {ch} not divisible by heads {heads} / groups {self.norm_num_groups}")
        if problems:
            raise UNetConfigError("invalid UNet config: " + "; ".join(problems))

    # ---- derived structure -------------------------------------------------------------
    @property
    def time_embed_dim(self) -> int:
        return self.block_out_channels[0] * 4

    def down_has_motion(self, i: int) -> bool:
        return (self.use_motion_module and 2 ** i in self.motion_module_resolutions
                and not self.motion_module_decoder_only)

    def up_has_motion(self, i: int) -> bool:
        return self.use_motion_module and 2 ** (len(self.block_out_channels) - 1 - i) in self.motion_module_resolutions

    @property
    def mid_has_motion(self) -> bool:
        return self.use_motion_module and self.motion_module_mid_block

    def to_dict(self) -> dict[str, Any]:
        """Back to a plain LatentSync-style mapping (JSON-serialisable)."""
        out = dataclasses.asdict(self)
        out["motion_module_kwargs"] = out.pop("motion_module")
        out["motion_module_kwargs"].pop("norm_num_groups")
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}
