"""Training metrics: JSONL and TensorBoard (tensorboardX, no TensorFlow), written by process 0 only,
and a one-line progress report with an ETA."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import jax

log = logging.getLogger(__name__)


class MetricWriter:
  """`DIR/metrics.jsonl` (one object per logged step, with `step`) + TensorBoard events in DIR/tb."""

  def __init__(self, directory: str | Path, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = None
    if self.enabled:
      directory = Path(directory)
      directory.mkdir(parents=True, exist_ok=True)
      self._jsonl = open(directory / "metrics.jsonl", "a", encoding="utf-8")
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(str(directory / "tb"))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    if not self.enabled:
      return
    clean = {k: float(v) for k, v in scalars.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    self._jsonl.flush()
    for k, v in clean.items():
      if math.isfinite(v):
        self._tb.add_scalar(k, v, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """`stage1 step 120/600 (20%) loss 3.21 | 2.4 steps/s | ETA 3m20s`."""

  def __init__(self, name: str, first_step: int, num_steps: int):
    self.name, self.first_step, self.num_steps = name, first_step, num_steps
    self.start = time.perf_counter()

  def line(self, step: int, loss: float) -> str:
    done = step - self.first_step
    elapsed = time.perf_counter() - self.start
    rate = done / elapsed if elapsed > 0 and done > 0 else 0.0
    eta = (self.num_steps - step) / rate if rate else float("nan")
    eta_text = f"{int(eta // 60)}m{int(eta % 60):02d}s" if math.isfinite(eta) else "?"
    return (f"{self.name} step {step}/{self.num_steps} ({100 * step / max(self.num_steps, 1):.0f}%) "
            f"loss {loss:.4f} | {rate:.2f} steps/s | ETA {eta_text}")
