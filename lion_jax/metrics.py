"""Training metrics: JSONL and TensorBoard (tensorboardX, no TensorFlow), written by process 0 only,
and a one-line progress report with an ETA."""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from typing import Any

import jax
from etils import epath

from lion_jax import paths

log = logging.getLogger(__name__)


class MetricWriter:
  """`DIR/metrics.jsonl` (one object per logged step, with `step`) + TensorBoard events in DIR/tb.

  A bucket DIR (`gs://...`) cannot be appended to, so the files are written in a local staging
  directory (starting from DIR's existing metrics.jsonl on resume) and copied to DIR after every
  write. `stage_locally` forces that mode for a local DIR too.
  """

  def __init__(self, directory: str | os.PathLike, enabled: bool | None = None, stage_locally: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = self._tb = self._staging = None
    if not self.enabled:
      return
    self.directory = paths.as_path(directory)
    self.directory.mkdir(parents=True, exist_ok=True)
    local = self.directory
    if paths.is_cloud(self.directory) if stage_locally is None else stage_locally:
      self._staging = tempfile.TemporaryDirectory(prefix="lion-metrics-")
      local = epath.Path(self._staging.name)
      if (self.directory / "metrics.jsonl").exists():
        (self.directory / "metrics.jsonl").copy(local / "metrics.jsonl")
    self._local = local
    self._jsonl = open(local / "metrics.jsonl", "a", encoding="utf-8")
    from tensorboardX import SummaryWriter

    self._tb = SummaryWriter(os.fspath(local / "tb"))

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
    self._upload()

  def _upload(self) -> None:
    """Copies the staged files to DIR (whole files: objects in a bucket are replaced, not appended)."""
    if self._staging is None:
      return
    for src in [self._local / "metrics.jsonl", *(self._local / "tb").glob("*")]:
      dst = self.directory / src.relative_to(self._local)
      dst.parent.mkdir(parents=True, exist_ok=True)
      src.copy(dst, overwrite=True)

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      self._upload()
      if self._staging is not None:
        self._staging.cleanup()


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
    return (
      f"{self.name} step {step}/{self.num_steps} ({100 * step / max(self.num_steps, 1):.0f}%) "
      f"loss {loss:.4f} | {rate:.2f} steps/s | ETA {eta_text}"
    )
