"""Entry point: `python -m lion_jax.main --config=configs/stage3.py --workdir=DIR [--config.x=y ...]`.

Parses the config (a Python config file the user chose; any field overridable on the command line),
starts multi-host JAX when `config.distributed` is set, prepares the embedded synthetic data when
`config.synthetic.enabled` (the demo), and runs the configured stages. Re-running the same command
resumes from the newest checkpoints.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from lion_jax import cli, errors, paths, train
from lion_jax.demo import evaluate_export, prepare_synthetic_data
from lion_jax.distributed import start_distributed

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Run config file, e.g. configs/stage1.py[:size=xxl].", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Directory for checkpoints, metrics and exports: local or a bucket (gs://...)."
)
flags.mark_flags_as_required(["config", "workdir"])

log = logging.getLogger("lion_jax")


def main(argv) -> int:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file operation at INFO
  return errors.exit_code(lambda: run(_CONFIG.value, paths.as_path(_WORKDIR.value)))


def run(config, workdir) -> int:
  """The job: demo data if asked for, every configured stage, the demo's final evaluation. A NaN
  loss (FloatingPointError) is reported like a user error: the message says which step and what to change."""
  if config.synthetic.enabled and paths.is_cloud(workdir):
    raise errors.UserError(
      f"the synthetic demo generates its images into the workdir and reads them back with "
      f"local file access: give a local --workdir (got {workdir})"
    )
  if config.distributed:
    start_distributed()
  if config.synthetic.enabled:
    prepare_synthetic_data(config, Path(workdir))
  try:
    summaries = train.run(config, workdir)
  except FloatingPointError as e:
    raise errors.UserError(str(e)) from e
  for s in summaries:
    losses = s.get("losses") or []
    if losses:
      head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
      log.info("%s: %d steps, loss %.4f -> %.4f", s["stage"], s["steps"], sum(head) / len(head), sum(tail) / len(tail))
  if summaries and summaries[-1].get("preempted"):
    return 0  # the checkpoint is saved; the same command resumes
  if config.synthetic.enabled and config.synthetic.eval_limit:
    evaluate_export(config, Path(workdir))
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
