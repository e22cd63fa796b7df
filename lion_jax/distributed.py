"""Multi-host JAX: the one call every lion-jax command makes before touching a device when
`config.distributed` is set (training and evaluation alike)."""

from __future__ import annotations

import os

import jax


def start_distributed() -> None:
  """`jax.distributed.initialize()`: arguments from LION_COORDINATOR / LION_NUM_PROCESSES /
  LION_PROCESS_ID when set (local multi-process runs, launch/local.sh), else auto-detected (TPU
  VMs, SLURM, ...)."""
  if "LION_COORDINATOR" in os.environ:
    jax.distributed.initialize(
      os.environ["LION_COORDINATOR"], int(os.environ["LION_NUM_PROCESSES"]), int(os.environ["LION_PROCESS_ID"])
    )
  else:
    jax.distributed.initialize()
