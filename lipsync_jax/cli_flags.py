"""The ``--config`` / ``--sweep_index`` flags shared by train.py, infer.py and other scripts.

    from absl import app, flags
    from lipsync_jax import cli_flags

    cli_flags.define_config_flags()

    def main(argv):
        config = cli_flags.resolved_config(flags.FLAGS)
        ...

    app.run(main)

Then ``python train.py --config=configs/unet/stage2.py --config.optimizer.lr=3e-5
--sweep_index=2``. Precedence (lowest to highest): the module's ``get_config()``, the
``get_sweep()[sweep_index]`` entry, the ``--config.*`` overrides typed on the command line.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from lipsync_jax import config_utils

CONFIG_FLAG = "config"
SWEEP_FLAG = "sweep_index"


def define_config_flags(default_config: str | None = None, flag_values: flags.FlagValues = flags.FLAGS,
                        sys_argv: Sequence[str] | None = None) -> None:
    """Defines ``--config`` (a config file, overridable field by field with ``--config.a.b=v``)
    and ``--sweep_index``. ``--config`` is required unless ``default_config`` is given.
    ``sys_argv`` is for parsing an explicit argv (tests); absl uses sys.argv otherwise."""
    config_flags.DEFINE_config_file(
        CONFIG_FLAG, default_config,
        "Config file, e.g. configs/unet/stage2.py (or file.py:arg); override fields with "
        "--config.section.field=value.",
        flag_values=flag_values, lock_config=True,
        sys_argv=list(sys_argv) if sys_argv is not None else None)
    flags.DEFINE_integer(
        SWEEP_FLAG, None,
        "Apply entry N of the config module's get_sweep() list (command-line --config.* "
        "overrides still win). A scheduler launches one job per index.",
        lower_bound=0, flag_values=flag_values)
    if default_config is None:
        flags.mark_flag_as_required(CONFIG_FLAG, flag_values=flag_values)


def resolved_config(flag_values: flags.FlagValues = flags.FLAGS) -> ml_collections.ConfigDict:
    """The parsed ``--config`` with the ``--sweep_index`` entry applied under the command-line
    overrides. Returns a copy; the flag's own value is left untouched."""
    config_flag = flag_values[CONFIG_FLAG]
    config_path = config_flags.get_config_filename(config_flag)
    try:
        config = copy.deepcopy(flag_values[CONFIG_FLAG].value)
    except OSError as e:  # config_flags defers "file not found" to the first access
        raise config_utils.ConfigError(f"--config={config_path}: {e}") from e
    sweep_index = flag_values[SWEEP_FLAG].value
    if sweep_index is None:
        return config
    file_part = config_path.partition(":")[0]
    config_utils.apply_sweep(config, file_part, sweep_index)
    for key, value in config_flags.get_override_values(config_flag).items():
        config_utils.set_field(config, key, value)
    return config


def show_in_help(fv: flags.FlagValues = flags.FLAGS) -> None:
    """Make every flag of ``fv`` (but absl's own) a key flag of the running program, so ``--help`` lists
    them (absl lists the key flags of ``sys.argv[0]``; ours are defined in this package's modules)."""
    for name in list(fv):
        flag, module = fv[name], fv.find_module_defining_flag(name) or ""
        if name == flag.name and not module.startswith("absl"):
            fv.register_key_flag_for_module(sys.argv[0], flag)
