"""Evaluate a checkpoint on one of the paper's benchmarks.

  python -m lion_jax.evaluate --config=configs/eval/coco_caption.py --checkpoint=DIR \
      --config.records=coco_karpathy_test.jsonl --config.image_root=/data/coco [--output=DIR]

Records are our JSONL (see lion_jax.data.adapters for the converters of the original files). Writes
`<name>_predictions.jsonl` and `<name>_results.json` to --output (default: the checkpoint directory)
and prints the score next to the paper's LION numbers.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from lion_jax.convert.converted import load_converted, tokenizer_files
from lion_jax.data.records import load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.evaluation import benchmarks, runner

_CONFIG = config_flags.DEFINE_config_file("config", None, "Benchmark config, e.g. configs/eval/okvqa.py.",
                                          lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Converted or exported checkpoint directory.")
_OUTPUT = flags.DEFINE_string("output", None, "Where predictions and results go (default: the checkpoint).")
flags.mark_flags_as_required(["config", "checkpoint"])


def evaluate(config, checkpoint: str | Path, output: str | Path | None = None) -> dict[str, float]:
  if not config.records or not config.image_root:
    raise ValueError(f"set --config.records and --config.image_root for {config.name}")
  model_config, params = load_converted(checkpoint)
  files = tokenizer_files(checkpoint)
  if set(files) != {"t5", "bert"}:
    raise FileNotFoundError(f"{checkpoint}/tokenizer must hold spiece.model and bert_vocab.txt")
  records, _ = load_records(config.records)
  if config.limit:
    records = records[: config.limit]
  predictions = runner.predict_records(
      model_config, params, T5Tokenizer(files["t5"]), BertTokenizer(files["bert"]), records, config.image_root,
      batch_size=config.batch_size, max_input_len=config.max_input_len, max_qformer_len=config.max_qformer_len,
      use_tags=config.use_tags, num_beams=config.num_beams, max_new_tokens=config.max_new_tokens,
      repetition_penalty=config.repetition_penalty, length_penalty=config.length_penalty)
  scores = runner.score(config.kind, records, predictions)
  runner.write_results(output or checkpoint, config.name, records, predictions, scores)
  paper = {config.name: benchmarks.BENCHMARKS[config.name][1]}
  print(runner.format_table({config.name: scores}, paper))
  return scores


def main(argv) -> int:
  del argv
  logging.getLogger("absl").setLevel(logging.WARNING)
  try:
    evaluate(_CONFIG.value, _CHECKPOINT.value, _OUTPUT.value)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)))
