"""Training metrics: one JSON line per step in ``<workdir>/metrics.jsonl`` (step, loss and each
loss term, grad norm, lr, steps/s), a tqdm progress bar, and TensorBoard event files through
tensorboardX when it is installed (no TensorFlow needed). Only process 0 writes."""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Mapping

import numpy as np


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All lines of ``<workdir>/metrics.jsonl`` (a resumed run appends to the same file)."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class MetricsLogger:
    def __init__(self, workdir: str, total_steps: int, initial_step: int = 0, enabled: bool = True,
                 progress: bool = True):
        self.enabled = enabled
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._file = open(self.path, "a", encoding="utf-8") if enabled else None
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter
                self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
            except ImportError:
                self._tb = None
        self._bar = None
        if enabled and progress:
            from tqdm import tqdm
            self._bar = tqdm(total=total_steps, initial=initial_step, desc="steps", dynamic_ncols=True)
        self._last_time = time.perf_counter()

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """Write one record (arrays are fetched to host floats). Returns the record."""
        now = time.perf_counter()
        record: dict[str, Any] = {"step": int(step)}
        for name, value in metrics.items():
            if isinstance(value, str):  # e.g. val/error
                record[prefix + name] = value
                continue
            value = float(np.asarray(value))
            record[prefix + name] = value if math.isfinite(value) else str(value)
        if not prefix:
            record["steps_per_s"] = 1.0 / max(now - self._last_time, 1e-9)
            self._last_time = now
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._tb is not None:
                for name, value in record.items():
                    if name != "step" and isinstance(value, float):
                        self._tb.add_scalar(name, value, step)
            if self._bar is not None and not prefix:
                self._bar.update(1)
                self._bar.set_postfix(loss=f"{record.get('loss', float('nan')):.4g}")
        return record

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
