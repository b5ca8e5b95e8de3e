"""Convert an official PyTorch checkpoint to our Flax params (saved with orbax + config.json).

    python -m lipsync_jax.convert unet --src checkpoints/latentsync_unet.pt \\
        --config configs/unet/stage2.py --dst checkpoints/jax/unet [--dtype bfloat16]
    python -m lipsync_jax.convert whisper --src checkpoints/whisper/tiny.pt --dst checkpoints/jax/whisper
    python -m lipsync_jax.convert vae --src checkpoints/sd-vae-ft-mse --dst checkpoints/jax/vae

``--config`` is an ml_collections config file (``path.py`` or ``path.py:arg``; its ``model``
section is what the converter gets when it has one) or a ``.json`` dict; optional for
whisper (dims come from the checkpoint), vae (config.json in the folder), lpips (its
``--src`` is ``vgg16.pth,vgg.pth`` or one combined file) and videomae (TREPA's giant ViT).
Exit status: 0 converted, 1 bad input (the message says what), 2 converter not available.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from lipsync_jax.checkpoints import CheckpointFormatError, UnsafeCheckpointError
from lipsync_jax.convert.rules import ConversionError

# subcommand -> module providing convert_file(src, config) -> (params, ConversionReport)
CONVERTERS = {name: f"lipsync_jax.convert.{name}" for name in ("unet", "whisper", "vae", "syncnet", "lpips", "videomae",
                                                                   "lse_syncnet", "s3fd", "i3d", "hyperiqa")}
CONFIG_OPTIONAL = {"whisper", "vae", "lpips", "videomae", "lse_syncnet", "s3fd", "i3d", "hyperiqa"}
DTYPES = ("float32", "bfloat16", "float16")


class CliError(ValueError):
    """Bad command-line input (message printed as is)."""


def load_converter_config(path: str) -> dict[str, Any]:
    """A ``.json`` dict, or an ml_collections config file's ``model`` section (the whole
    config when it has none), as a plain dict."""
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise CliError(f"config file {path} not found")
        try:
            with open(path, encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CliError(f"config file {path}: {error}") from None
        if not isinstance(config, dict):
            raise CliError(f"config file {path}: expected a JSON object, got {type(config).__name__}")
        return config
    from lipsync_jax.config_utils import config_to_dict, load_config

    config = load_config(path)
    return config_to_dict(config.model if "model" in config else config)


def found_config(src: str) -> dict[str, Any] | None:
    """The config a checkpoint carries, to store beside converted params when no --config was
    given: ``config.json`` in (or beside) a diffusers/HF folder, else the checkpoint's ``dims``
    entry (OpenAI Whisper). None if there is none."""
    from lipsync_jax.convert.checkpoint_io import read_state_dict

    folder = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
    config_json = os.path.join(folder, "config.json")
    if os.path.isfile(config_json):
        try:
            with open(config_json, encoding="utf-8") as f:
                return json.load(f)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CheckpointFormatError(f"{config_json}: cannot read JSON ({error})") from None
    if os.path.isfile(src):
        dims = read_state_dict(src)[1].get("dims")  # storages are memory-mapped: cheap
        if isinstance(dims, Mapping):
            return {"dims": dict(dims)}
    return None


def _import_converter(kind: str):
    name = CONVERTERS[kind]
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:
            raise
        return None
    return module if callable(getattr(module, "convert_file", None)) else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lipsync_jax.convert", description=__doc__.split("\n")[0])
    parser.add_argument("kind", choices=sorted(CONVERTERS), help="which model the checkpoint holds")
    parser.add_argument("--src", required=True, help="official checkpoint file or folder")
    parser.add_argument("--config", default=None, help="config .py (ml_collections) or .json")
    parser.add_argument("--dst", required=True, help="output folder (params/, config.json, metadata.json)")
    parser.add_argument("--dtype", choices=DTYPES, default=None, help="cast floating weights (default: keep)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    return parser


def convert(kind: str, src: str, config_path: str | None, dst: str, dtype: str | None) -> int:
    from lipsync_jax.checkpoints import cast_floating, save_params

    if config_path is None and kind not in CONFIG_OPTIONAL:
        raise CliError(f"--config is required for {kind} (e.g. configs/{kind}/...py)")
    module = _import_converter(kind)
    if module is None:
        print(f"converter for {kind} is not available yet", file=sys.stderr)
        return 2
    # lpips takes two files as one comma-separated source: "vgg16.pth,vgg.pth"
    for part in (src.split(",") if kind == "lpips" else [src]):
        if not os.path.exists(part):
            raise CliError(f"{part}: no such checkpoint file or folder")
    config: Mapping[str, Any] | None = load_converter_config(config_path) if config_path else None
    params, report = module.convert_file(src, config)
    report.raise_if_problems(f"{kind} checkpoint {src}")
    if dtype is not None:
        params = cast_floating(params, dtype)
    if config is not None:
        saved_config = config
    else:  # converters that read their config off the converted shapes say so with saved_config()
        saved_config = module.saved_config(params) if hasattr(module, "saved_config") else found_config(src)
    if saved_config is None:  # converters with a built-in default (videomae: TREPA's giant ViT)
        saved_config = getattr(module, "DEFAULT_CONFIG", None)
    out = save_params(dst, params, saved_config, metadata={
        "kind": kind, "source": os.path.abspath(src),
        "config_file": os.path.abspath(config_path) if config_path else None,
        "dtype": dtype, "converted": report.converted, "skipped": len(report.skipped),
        "report": report.summary()})
    print(f"{kind}: {report.converted} converted, {len(report.skipped)} skipped, {len(report.missing)} missing, "
          f"{len(report.unexpected)} unexpected")
    if report.skipped:
        more = f", ... (+{len(report.skipped) - 10})" if len(report.skipped) > 10 else ""
        print(f"  skipped on purpose: {', '.join(report.skipped[:10])}{more}")
    print(f"saved to {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return convert(args.kind, args.src, args.config, args.dst, args.dtype)
    except (CliError, ConversionError, CheckpointFormatError, UnsafeCheckpointError, OSError, ValueError) as error:
        if args.debug:
            raise
        from lipsync_jax.config_utils import ConfigError

        label = "config error" if isinstance(error, ConfigError) else "error"
        print(f"{label}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
