"""The embedded demo's data steps: generate the synthetic dataset before training, evaluate after.

Kept apart from the command line (`lion_jax.main`) so that tests and notebooks can import them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax

from lion_jax.convert.converted import load_converted
from lion_jax.data import synthetic
from lion_jax.data.records import load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.evaluation import runner

log = logging.getLogger(__name__)


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
