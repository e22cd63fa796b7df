"""Preemption: SIGTERM (what a TPU VM or SLURM sends before it takes the machine) becomes a checkpoint
at a step boundary that every process agrees on, and a clean exit.

Multi-host (`jax.distributed` initialised): JAX's preemption service catches SIGTERM on any process
and agrees a sync step across all of them; `multihost_utils.reached_preemption_sync_point(step)` is
True on every process at that step. It must be asked at every step, from the same first step on all
processes. One process: a SIGTERM handler sets a flag that the loop reads at the next step.
"""

from __future__ import annotations

import logging
import signal
import threading

from jax._src import distributed
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


class PreemptionWatch:
  """`watch.reached(step)` after each step: True once a SIGTERM has arrived (multi-host: at the step
  all processes agreed on). A context manager: the previous SIGTERM handler is put back on exit."""

  def __init__(self):
    self.multihost = distributed.global_state.client is not None
    self._signalled = False
    self._previous = None

  def __enter__(self) -> PreemptionWatch:
    if not self.multihost and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    log.warning("SIGTERM: saving a checkpoint at the end of this step, then exiting")
    self._signalled = True

  def reached(self, step: int) -> bool:
    if self.multihost:
      return multihost_utils.reached_preemption_sync_point(step)
    return self._signalled
