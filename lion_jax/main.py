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

from lion_jax import train
from lion_jax.data import synthetic
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config file, e.g. configs/stage1.py[:size=xxl].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and exports.")
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


def prepare_synthetic_data(config, workdir: Path) -> None:
  """Generates the synthetic dataset into WORKDIR/data once and points the data and vocabulary
  settings at it (sources without `records` read its train split)."""
  data_dir = workdir / "data"
  if jax.process_index() == 0 and not (data_dir / "dataset.json").exists():
    log.info("generating %d synthetic images into %s", config.synthetic.num_images, data_dir)
    synthetic.generate(data_dir, num_images=config.synthetic.num_images, seed=config.seed,
                       image_size=config.synthetic.image_size)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("synthetic data ready")
  for spec in config.data.sources.values():
    if not spec.records:
      spec.records, spec.image_root = str(data_dir / "train.jsonl"), str(data_dir)
  config.data.t5_vocab, config.data.bert_vocab = str(data_dir / "spiece.model"), str(data_dir / "bert_vocab.txt")
  t5, bert = T5Tokenizer(config.data.t5_vocab), BertTokenizer(config.data.bert_vocab)
  config.model.t5.vocab_size = -(-t5.vocab_size // 8) * 8  # padded to a multiple of 8
  config.model.soft_prompt_token_id = t5.sentinel_id(0)
  config.model.qformer.vocab_size = bert.vocab_size


def evaluate_synthetic(config, workdir: Path) -> dict:
  """The demo's last step: the final export on the synthetic validation split (caption CIDEr, VQA and
  REC accuracy), printed as a table and written to WORKDIR/results.json."""
  import json

  from lion_jax.convert.converted import load_converted
  from lion_jax.data.records import load_records
  from lion_jax.evaluation import runner

  last_stage = [s.strip() for s in config.run_stages.split(",")][-1]
  export = workdir / last_stage / config.export_dir_name
  if not (export / "config.json").exists():
    log.info("%s wrote no export (stages.%s.export is off): nothing to evaluate", last_stage, last_stage)
    return {}
  model_config, params = load_converted(export)
  t5, bert = T5Tokenizer(config.data.t5_vocab), BertTokenizer(config.data.bert_vocab)
  records, _ = load_records(workdir / "data" / "val.jsonl")
  rows = {}
  for task, kind in (("caption", "caption"), ("vqa", "exact_match"), ("rec", "rec")):
    subset = [r for r in records if r.task == task][: config.synthetic.eval_limit]
    predictions = runner.predict_records(
        model_config, params, t5, bert, subset, workdir / "data", batch_size=16,
        max_input_len=config.data.max_input_len, max_qformer_len=config.data.max_qformer_len, progress=False,
        num_beams=config.synthetic.eval_num_beams, max_new_tokens=config.data.max_target_len, repetition_penalty=1.0)
    rows[f"synthetic_{task}"] = runner.score(kind, subset, predictions)
    runner.write_results(workdir / "eval", f"synthetic_{task}", subset, predictions, rows[f"synthetic_{task}"])
  (workdir / "results.json").write_text(json.dumps(rows, indent=2))
  print(runner.format_table(rows))
  return rows


def main(argv) -> int:
  del argv
  logging.getLogger().setLevel(logging.INFO)
  logging.getLogger("absl").setLevel(logging.WARNING)  # Orbax logs every file operation at INFO
  config = _CONFIG.value
  workdir = Path(_WORKDIR.value).absolute()
  if config.distributed:
    start_distributed()
  if config.synthetic.enabled:
    prepare_synthetic_data(config, workdir)
  try:
    summaries = train.run(config, workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    log.error("%s", e)
    return 1
  for s in summaries:
    losses = s.get("losses") or []
    if losses:
      head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10):]
      log.info("%s: %d steps, loss %.4f -> %.4f", s["stage"], s["steps"], sum(head) / len(head), sum(tail) / len(tail))
  if config.synthetic.enabled and config.synthetic.eval_limit and jax.process_index() == 0:
    evaluate_synthetic(config, workdir)
  return 0


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
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=parse_flags)
