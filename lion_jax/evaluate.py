r"""Evaluate a checkpoint on one of the paper's benchmarks.

  python -m lion_jax.evaluate --config=configs/eval/coco_caption.py --checkpoint=DIR \
      --config.records=coco_karpathy_test.jsonl --config.image_root=/data/coco [--output=DIR]

Records are our JSONL (see lion_jax.data.adapters for the converters of the original files). Writes
`<name>_predictions.jsonl` and `<name>_results.json` to --output (default: the checkpoint directory)
and prints the score next to the paper's LION numbers. Runs sharded on `--config.mesh.{data,fsdp,
tensor}` (default: all devices data-parallel), also on several hosts (`--config.distributed=True`,
e.g. `LION_MODULE=lion_jax.evaluate launch/local.sh 2 --config=... --checkpoint=...`); an interrupted
evaluation resumes where it stopped (runner.run_benchmark).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from lion_jax import cli, errors, paths
from lion_jax.distributed import start_distributed
from lion_jax.evaluation import runner

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Benchmark config, e.g. configs/eval/okvqa.py.", lock_config=True
)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted or exported checkpoint directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Where predictions and results go (default: the checkpoint).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv) -> int:
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  return errors.exit_code(lambda: evaluate_checkpoint(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value))


def evaluate_checkpoint(config, checkpoint: str, output: str | None) -> None:
  """Checks the checkpoint flag before the benchmark loads it, then runs the benchmark (on every
  process of a multi-host job with `--config.distributed`; process 0 writes)."""
  if not paths.as_path(checkpoint).is_dir():
    raise errors.MissingFile(f"--checkpoint: no such folder: {checkpoint}")
  if config.distributed:
    start_distributed()
  runner.run_benchmark(config, checkpoint, output)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
