"""Run directories that are local or in a bucket (`gs://`, `s3://`): one path type for both, and how
Orbax writes arrays there.

Workdirs, checkpoints and exports go through `etils.epath`, which Orbax uses too, so the same code
writes to a local disk or to Cloud Storage. Bucket paths need a filesystem driver on the host:
`pip install -e '.[gcs]'` (gcsfs, which also brings google-cloud-storage).
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp
from etils import epath

# Orbax saves a replicated array cooperatively by default: each replica copies a slice to the host,
# one dispatched slice op per replica and array. That pays for large arrays and is pure overhead for
# the many small ones (norm scales, biases, gates): a tiny stage checkpoint on 8 CPU devices took
# 7.7 s to save, 1.6 s with this handler (benchmarks/RESULTS.md, "Checkpoint save"). Slices under
# 1 MiB are written whole by one replica, in every process that imports lion_jax's checkpoint code.
REPLICA_PARALLEL_MIN_SLICE_BYTES = 2**20


def _use_lion_array_handler() -> None:
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)  # Orbax warns on any handler override; this one is intended
  try:
    ocp.type_handlers.register_type_handler(
      jax.Array,
      ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_SLICE_BYTES),
      override=True,
    )
  finally:
    absl_logger.setLevel(level)


_use_lion_array_handler()

CLOUD_SCHEMES = ("gs://", "s3://")


def is_cloud(path: str | os.PathLike) -> bool:
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A bucket URI as it is; a local path made absolute (tests and jobs change directories)."""
  return epath.Path(path) if is_cloud(path) else epath.Path(os.path.abspath(os.fspath(path)))
