"""Training metrics: one JSON line per step in ``<workdir>/metrics.jsonl`` (step, loss and each
loss term, grad norm, lr; at log steps also steps/s and data-wait time), a tqdm progress bar,
and TensorBoard event files through tensorboardX when it is installed (no TensorFlow needed).
Only process 0 writes.

The loop keeps each step's metrics on the device (``PendingMetrics``) and fetches them every
``run.log_every_steps`` steps in one ``jax.device_get``: no host sync per step. The fetched
records are checked for non-finite values (``first_nonfinite``) before anything is saved.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

# metrics that are not loss terms: never a reason to stop (lr, counters, timings)
NOT_CHECKED = ("lr", "skipped_update", "steps_per_s", "data_wait_s")


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All lines of ``<workdir>/metrics.jsonl`` (a resumed run appends to the same file)."""
    path = os.path.join(workdir, "metrics.jsonl")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class PendingMetrics:
    """Per-step metric dicts left on the device until ``fetch`` moves them all to the host in one
    ``jax.device_get`` (``fetches`` counts those calls: the tests check it)."""

    def __init__(self):
        self.items: list[tuple[int, Mapping[str, Any]]] = []
        self.fetches = 0

    def add(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.items.append((int(step), metrics))

    def __len__(self) -> int:
        return len(self.items)

    def fetch(self) -> list[tuple[int, dict[str, float]]]:
        if not self.items:
            return []
        steps = [s for s, _ in self.items]
        with jax.transfer_guard_device_to_host("allow"):
            values = jax.device_get([m for _, m in self.items])
        self.items = []
        self.fetches += 1
        return [(s, {k: float(np.asarray(v)) for k, v in m.items()}) for s, m in zip(steps, values)]


def first_nonfinite(records: Sequence[tuple[int, Mapping[str, float]]]) -> tuple[int, str, float] | None:
    """(step, term, value) of the first non-finite loss term / loss / grad norm, or None. Within a
    step the individual terms are named before their sum (``loss``) and the grad norm."""
    for step, record in records:
        totals = [n for n in ("loss", "grad_norm") if n in record]
        names = [n for n in record if n not in NOT_CHECKED and n not in totals] + totals
        for name in names:
            if not math.isfinite(record[name]):
                return step, name, record[name]
    return None


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

    def log(self, step: int, metrics: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        """Write one record of host values (numbers, or strings such as ``val/error``); a
        non-finite number is written as its string ("nan", "inf"). Returns the record."""
        record: dict[str, Any] = {"step": int(step)}
        for name, value in metrics.items():
            if isinstance(value, str):
                record[prefix + name] = value
                continue
            value = float(value)
            record[prefix + name] = value if math.isfinite(value) else str(value)
        if self.enabled:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
            if self._tb is not None:
                for name, value in record.items():
                    if name != "step" and isinstance(value, float):
                        self._tb.add_scalar(name, value, step)
            if self._bar is not None and not prefix:
                self._bar.update(max(0, int(step) - self._bar.n))
                loss = record.get("loss")
                if isinstance(loss, float):
                    self._bar.set_postfix(loss=f"{loss:.4g}")
        return record

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._file is not None:
            self._file.close()
