"""Shared pieces of the evaluation command lines (eval/*.py): the input errors they report as
one line (exit status 1) and the JSON / CSV writers."""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Iterable, Mapping, Sequence

from lipsync_jax.audio import AudioLoadError
from lipsync_jax.config_utils import ConfigError
from lipsync_jax.convert.errors import CheckpointFormatError
from lipsync_jax.eval.frame_metrics import FrameMetricsError
from lipsync_jax.eval.sync_eval import SyncEvalError
from lipsync_jax.eval.sync_score import SyncScoreError
from lipsync_jax.face import FaceError
from lipsync_jax.media import MediaError
from lipsync_jax.models.syncnet import SyncNetConfigError

# Bad input of any kind: printed as "error: <message naming the file>", exit status 1.
INPUT_ERRORS = (AudioLoadError, ConfigError, CheckpointFormatError, FrameMetricsError, SyncEvalError, SyncScoreError,
                FaceError, MediaError, SyncNetConfigError, OSError)


def _json_safe(value: Any) -> Any:
    """Non-finite floats -> "inf" / "-inf" / None so the file is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, data: Any) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_json_safe(data), f, indent=2, allow_nan=False)
        f.write("\n")


def write_csv(path: str, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    """One row per mapping; only ``columns`` (scalars), missing values left empty."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in columns})
