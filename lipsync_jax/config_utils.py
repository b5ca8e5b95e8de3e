"""Loading the ml-collections config modules under configs/ outside of absl (notebooks, tests),
and the sweep mechanism shared with the command line (lipsync_jax/cli_flags.py).

A config module is a Python file with ``get_config()`` (optionally ``get_config(arg)``, chosen
with ``path.py:arg`` as in ``ml_collections.config_flags``) returning a ``ConfigDict``, and an
optional ``get_sweep()`` returning a list of override dicts ``{"dotted.key": value}``.

Precedence, lowest to highest: the module's ``get_config()`` values, then the selected sweep
entry, then explicit overrides (``--config.a.b=v`` on the command line, ``overrides=`` here).
What a user types wins over what a sweep file says.

Relative config paths are looked up in the working directory first and then in the project
root (the folder holding ``lipsync_jax/`` and ``configs/``), so ``load_config("configs/unet/
stage2.py")`` also works from a notebook started elsewhere in a source checkout.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import types
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ConfigError(ValueError):
    """A config file, override or sweep entry is missing or invalid (the message says which)."""


def find_config_file(path: str) -> str:
    """Returns an existing file for ``path``: as given, else relative to the project root."""
    if not path:
        raise ConfigError("empty config path")
    candidates = [path] if os.path.isabs(path) else [path, os.path.join(PROJECT_ROOT, path)]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"config file {path!r} not found (tried: {', '.join(candidates)})")


def resolve_path(path: str) -> str:
    """A path from a config (``data.mask_image_path``, ``data.syncnet_config_path``, ...): as
    given if it exists (absolute or relative to the working directory), else relative to the
    project root if it exists there, else unchanged (so the caller's error names it)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    in_project = os.path.join(PROJECT_ROOT, path)
    return in_project if os.path.exists(in_project) else path


def import_config_module(path: str) -> types.ModuleType:
    """Executes the Python file ``path`` as a fresh module (not registered in sys.modules)."""
    path = find_config_file(path)
    name = "lipsync_jax_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a broken config file: say which one
        raise ConfigError(f"config file {path}: {type(e).__name__}: {e}") from e
    return module


def import_sibling(anchor_file: str, relative_path: str) -> types.ModuleType:
    """For config modules: import another config file by its path relative to ``anchor_file``
    (``import_sibling(__file__, "../common.py")``), independent of sys.path."""
    return import_config_module(os.path.join(os.path.dirname(os.path.abspath(anchor_file)), relative_path))


def _split_config_arg(path: str) -> tuple[str, list[str]]:
    """``"configs/x.py:256"`` -> ``("configs/x.py", ["256"])`` (config_flags' convention)."""
    file_part, sep, arg = path.partition(":")
    return file_part, ([arg] if sep else [])


def _as_module(path_or_module: str | types.ModuleType) -> tuple[types.ModuleType, list[str], str]:
    if isinstance(path_or_module, types.ModuleType):
        return path_or_module, [], getattr(path_or_module, "__file__", None) or path_or_module.__name__
    file_part, args = _split_config_arg(os.fspath(path_or_module))
    return import_config_module(file_part), args, file_part


def load_config(path_or_module: str | types.ModuleType, overrides: Sequence[str] = (),
                sweep_index: int | None = None) -> ml_collections.ConfigDict:
    """The config of a module or file, with one sweep entry and then ``overrides`` applied.

    ``overrides`` use the command-line syntax without the flag name, parsed by
    ml_collections.config_flags exactly as ``--config.optimizer.lr=3e-5`` would be:
    ``load_config("configs/unet/stage2.py", ["optimizer.lr=3e-5", "data.batch_size=4"])``.
    The result is locked (no new fields), like the config of a ``--config`` flag.
    """
    module, args, label = _as_module(path_or_module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config module {label} has no get_config()")
    config = module.get_config(*args)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{label}: get_config() returned {type(config).__name__}, not a ConfigDict")
    if sweep_index is not None:
        apply_sweep(config, module, sweep_index)
    if overrides:
        config = apply_overrides(config, overrides)
    config.lock()
    return config


def apply_overrides(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``key=value`` overrides parsed by config_flags (same types and
    errors as on the command line). ``--config.key=value`` and ``config.key=value`` also work."""
    argv = ["load_config"]
    for override in overrides:
        text = override.lstrip("-")
        if text.startswith("config."):
            text = text[len("config."):]
        if "=" not in text:
            raise ConfigError(f"override {override!r} is not of the form key=value")
        argv.append("--config." + text)
    flag_values = flags.FlagValues()
    try:
        config_flags.DEFINE_config_dict("config", copy.deepcopy(config), flag_values=flag_values,
                                        lock_config=False, sys_argv=argv)
        flag_values(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        raise ConfigError(f"invalid config override in {list(overrides)}: {e}") from e
    return flag_values["config"].value


def get_sweep(path_or_module: str | types.ModuleType) -> list[dict[str, Any]]:
    """The module's ``get_sweep()`` list, validated; ConfigError if it has none."""
    module, _, label = _as_module(path_or_module)
    return _module_sweep(module, label)


def _module_sweep(module: types.ModuleType, label: str) -> list[dict[str, Any]]:
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"config {label} defines no get_sweep(); --sweep_index needs a config "
                          "module with get_sweep() returning a list of {dotted.key: value} dicts")
    sweep = module.get_sweep()
    if not isinstance(sweep, (list, tuple)) or not all(isinstance(entry, Mapping) for entry in sweep):
        raise ConfigError(f"config {label}: get_sweep() must return a list of dicts, got {sweep!r}")
    return [dict(entry) for entry in sweep]


def sweep_length(path_or_module: str | types.ModuleType) -> int:
    """How many jobs a scheduler launches for this config (``--sweep_index`` 0..n-1)."""
    return len(get_sweep(path_or_module))


def apply_sweep(config: ml_collections.ConfigDict, config_module: str | types.ModuleType,
                sweep_index: int) -> ml_collections.ConfigDict:
    """Sets, in place, the fields of entry ``sweep_index`` of the module's ``get_sweep()``.
    Every key must name an existing field (typos fail instead of adding fields)."""
    module, _, label = _as_module(config_module)
    sweep = _module_sweep(module, label)
    if isinstance(sweep_index, bool) or not isinstance(sweep_index, int) or not 0 <= sweep_index < len(sweep):
        raise ConfigError(f"--sweep_index={sweep_index} is out of range: {label} get_sweep() has "
                          f"{len(sweep)} entries (valid indices 0..{len(sweep) - 1})")
    for key, value in sweep[sweep_index].items():
        try:
            set_field(config, key, value)
        except ConfigError as e:
            raise ConfigError(f"{label} get_sweep()[{sweep_index}]: {e}") from e
    return config


def to_config_value(value: Any) -> Any:
    """Lists become tuples, the sequence type the configs (and config_flags) use."""
    if isinstance(value, (list, tuple)):
        return tuple(to_config_value(v) for v in value)
    return value


def set_field(config: ml_collections.ConfigDict, dotted_key: str, value: Any) -> None:
    """``config.a.b = value`` for ``"a.b"``, refusing keys that are not already fields and
    values of the wrong type (ConfigDict's own type check)."""
    *parents, leaf = dotted_key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"{'.'.join(parents[:i + 1])!r} (in {dotted_key!r}) is not a field of the config")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"{dotted_key!r} is not a field of the config")
    try:
        node[leaf] = to_config_value(value)
    except TypeError as e:
        raise ConfigError(f"cannot set {dotted_key!r} to {value!r}: {e}") from e


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def config_to_dict(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A plain, JSON-serialisable dict (tuples become lists), e.g. the ``model`` section as the
    mapping LatentSync's model constructors take, or a whole config to store with a checkpoint."""
    if isinstance(config, ml_collections.ConfigDict):
        config = config.to_dict()
    return _plain(config)
