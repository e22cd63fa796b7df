"""Run directories that are local or in a bucket (`gs://`, `s3://`): one path type for both.

Workdirs, checkpoints and exports go through `etils.epath`, which Orbax uses too, so the same code
writes to a local disk or to Cloud Storage. Bucket paths need a filesystem driver on the host:
`pip install -e '.[gcs]'` (gcsfs, which also brings google-cloud-storage).
"""

from __future__ import annotations

import os

from etils import epath

CLOUD_SCHEMES = ("gs://", "s3://")


def is_cloud(path: str | os.PathLike) -> bool:
  return os.fspath(path).startswith(CLOUD_SCHEMES)


def as_path(path: str | os.PathLike) -> epath.Path:
  """A bucket URI as it is; a local path made absolute (tests and jobs change directories)."""
  return epath.Path(path) if is_cloud(path) else epath.Path(os.path.abspath(os.fspath(path)))
