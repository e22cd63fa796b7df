"""Entry point: `python -m lion_jax.main --config=configs/stage3.py --workdir=DIR [--config.x=y ...]`.

Parses the config (a Python config file the user chose; any field overridable on the command line),
starts multi-host JAX when `config.distributed` is set, prepares the embedded synthetic data when
`config.synthetic.enabled` (the demo), and runs the configured stages. Re-running the same command
resumes from the newest checkpoints.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import jax
from absl import app, flags
from ml_collections import config_flags

from lion_jax import errors, paths, train
from lion_jax.demo import evaluate_export, prepare_synthetic_data

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/stage1.py[:size=xxl].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports: local or a bucket (gs://...).")
flags.mark_flags_as_required(["config", "workdir"])

log = logging.getLogger("lion_jax")


def start_distributed() -> None:
  """`jax.distributed.initialize()`: arguments from LION_COORDINATOR / LION_NUM_PROCESSES /
  LION_PROCESS_ID when set (local multi-process runs), else auto-detected (TPU VMs, SLURM, ...)."""
  if "LION_COORDINATOR" in os.environ:
    jax.distributed.initialize(os.environ["LION_COORDINATOR"], int(os.environ["LION_NUM_PROCESSES"]),
                               int(os.environ["LION_PROCESS_ID"]))
  else:
    jax.distributed.initialize()


def main(argv) -> int:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file operation at INFO
  return errors.exit_code(lambda: run(_CONFIG.value, paths.as_path(_WORKDIR.value)))


def run(config, workdir) -> int:
  """The job: demo data if asked for, every configured stage, the demo's final evaluation. A NaN
  loss (FloatingPointError) is reported like a user error: the message says which step and what to change."""
  if config.synthetic.enabled and paths.is_cloud(workdir):
    raise errors.UserError(f"the synthetic demo generates its images into the workdir and reads them back with "
                           f"local file access: give a local --workdir (got {workdir})")
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
      head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10):]
      log.info("%s: %d steps, loss %.4f -> %.4f", s["stage"], s["steps"], sum(head) / len(head), sum(tail) / len(tail))
  if config.synthetic.enabled and config.synthetic.eval_limit and jax.process_index() == 0:
    evaluate_export(config, Path(workdir))
  return 0


def config_file_error(e: BaseException) -> str | None:
  """The message of a UserError that a config file's get_config(arg) raised (e.g. size=xxxl).
  ml_collections re-raises it with the formatted traceback as its text, and absl wraps that in a
  flag error: the original message is what follows the traceback's last `UserError: `."""
  while e is not None and not isinstance(e, errors.UserError):
    e = e.__cause__ or e.__context__
  return None if e is None else str(e).rpartition("UserError: ")[2].strip()


def parse_flags(argv: list[str]) -> list[str]:
  """absl parsing, with a one-line error for a config override that names no config field."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    bad = [a for a in argv if a.startswith("--config.")]
    name = str(e).strip("\"'")
    print(f"error: the config has no field {name!r} (overrides given: {bad}); only the fields the config "
          f"file defines can be set", file=sys.stderr)
    sys.exit(2)
  except flags.Error as e:
    print(f"error: {config_file_error(e) or e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
