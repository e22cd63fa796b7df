"""Validate a record file before a run: every record parsed, every image decoded, every text built.

  python -m lion_jax.data.inspect --records FILE --image_root DIR [--strict] [--json] [--soft_prompt off]
      [--t5_vocab spiece.model --bert_vocab vocab.txt [--max_input_len N] [--max_target_len N]
       [--max_qformer_len N]]

Prints the number of valid records, the invalid ones per reason and a few rendered examples
(instruction, T5 input with the tag prompt, target); the tag prompt is rendered for a model with
LION's soft prompt (every input, `[]` without tags) unless `--soft_prompt off` (a plain InstructBLIP).
With both vocabularies it also counts the valid records whose T5 input, target or Q-Former text the
length limits would cut (for the template drawn for each record; limits default to the pipeline's).
With --json it prints only `{"valid": N, "invalid": {reason: count, ...}}`, plus
`"truncated": {text: count}` with the vocabularies. Exit status 1 when nothing is valid, or under
--strict when anything is invalid.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from pathlib import Path

import ml_collections
import numpy as np

from lion_jax import errors
from lion_jax.data import images, pipeline, templates
from lion_jax.data.records import BadRecord, Record, load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer


def check_record(
  record: Record, image_root: Path, rng: np.random.Generator, soft_prompt: bool = True
) -> templates.ExampleText:
  """Decodes the image and builds the text, as training would; raises BadRecord."""
  width, height = images.decode_image(record.image_source(image_root)).size
  return templates.build_checked_text(record, rng, width, height, soft_prompt=soft_prompt)


def inspect_file(
  records_path: Path,
  image_root: Path,
  num_examples: int = 3,
  seed: int = 0,
  data_config: ml_collections.ConfigDict | None = None,
  soft_prompt: bool = True,
) -> dict:
  """{'valid': n, 'invalid': {reason: n}, 'examples': [...], 'problems': [...]} for one file; with a
  `data_config` (pipeline.default_config() with both vocabularies set) also 'truncated': {text: n},
  the valid records cut by its length limits."""
  records, report = load_records(records_path, require_valid=False, logger=logging.getLogger("quiet"))
  invalid = collections.Counter(report.invalid)
  problems = list(report.first_errors)
  examples, valid = [], 0
  rng = np.random.default_rng(seed)
  if data_config is not None:
    t5, bert = T5Tokenizer(data_config.t5_vocab), BertTokenizer(data_config.bert_vocab)
    truncated = dict.fromkeys(pipeline.TRUNCATION_LIMITS, 0)
  for i, record in enumerate(records):
    try:
      text = check_record(record, image_root, rng, soft_prompt)
    except BadRecord as e:
      invalid[e.reason] += 1
      if len(problems) < 20:
        problems.append(f"{records_path} record {i} (image {record.image!r}): {e}")
      continue
    valid += 1
    if data_config is not None:
      for name in pipeline.encode_text(text, data_config, t5, bert)[1]:
        truncated[name] += 1
    if len(examples) < num_examples:
      examples.append(
        {"task": record.task, "instruction": text.instruction, "t5_input": text.t5_input, "target": text.target}
      )
  result = {"valid": valid, "invalid": dict(invalid), "examples": examples, "problems": problems}
  if data_config is not None:
    result["truncated"] = truncated
  return result


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.data.inspect", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--records", required=True, metavar="FILE", help="JSONL records or the official LION JSON list")
  parser.add_argument(
    "--image_root",
    "--image-root",
    required=True,
    metavar="DIR",
    help="the folder the records' image paths are relative to",
  )
  parser.add_argument("--strict", action="store_true", help="exit 1 if any record is invalid (default: off)")
  parser.add_argument("--json", action="store_true", help="print one JSON object with the counts (default: off)")
  parser.add_argument(
    "--soft_prompt",
    "--soft-prompt",
    choices=("on", "off"),
    default="on",
    help="render T5 inputs for a model with LION's soft prompt (stages 1-3), which always carries the tag "
    "prompt; off for a plain InstructBLIP (default: %(default)s)",
  )
  parser.add_argument(
    "--t5_vocab",
    "--t5-vocab",
    metavar="FILE",
    help="T5 SentencePiece model; with --bert_vocab, count truncated texts (default: none)",
  )
  parser.add_argument(
    "--bert_vocab",
    "--bert-vocab",
    metavar="FILE",
    help="Q-Former WordPiece vocab; with --t5_vocab, count truncated texts (default: none)",
  )
  data_config = pipeline.default_config()
  for key in pipeline.TRUNCATION_LIMITS.values():
    parser.add_argument(
      f"--{key}",
      f"--{key.replace('_', '-')}",
      type=int,
      default=data_config[key],
      metavar="N",
      help=f"the pipeline's {key}, for the truncation counts (default: %(default)s)",
    )
  args = parser.parse_args(argv)
  if bool(args.t5_vocab) != bool(args.bert_vocab):
    parser.error("--t5_vocab and --bert_vocab go together")
  if args.t5_vocab:
    data_config.update(
      t5_vocab=args.t5_vocab,
      bert_vocab=args.bert_vocab,
      **{key: getattr(args, key) for key in pipeline.TRUNCATION_LIMITS.values()},
    )
  return errors.exit_code(lambda: print_report(args, data_config if args.t5_vocab else None))


def print_report(args: argparse.Namespace, data_config: ml_collections.ConfigDict | None) -> int:
  """Inspects the file the flags name and prints the counts; the exit status (see the module doc)."""
  if not Path(args.records).is_file():
    raise errors.MissingFile(f"--records: no such file: {args.records}")
  if not Path(args.image_root).is_dir():
    raise errors.MissingFile(f"--image_root: no such folder: {args.image_root}")
  logging.getLogger("quiet").setLevel(logging.ERROR)
  result = inspect_file(
    Path(args.records), Path(args.image_root), data_config=data_config, soft_prompt=args.soft_prompt == "on"
  )
  if args.json:
    print(json.dumps({k: result[k] for k in ("valid", "invalid", "truncated") if k in result}))
  else:
    print(f"{args.records}: {result['valid']} valid, {sum(result['invalid'].values())} invalid")
    for reason, n in sorted(result["invalid"].items()):
      print(f"  {reason}: {n}")
    for name, n in result.get("truncated", {}).items():
      limit = pipeline.TRUNCATION_LIMITS[name]
      print(f"  truncated {name} ({limit}={data_config[limit]}): {n}")
    for p in result["problems"][:10]:
      print(f"  e.g. {p}")
    for ex in result["examples"]:
      print(
        f"\n[{ex['task']}]\n  T5 input:    {ex['t5_input']}\n  Q-Former:    {ex['instruction']}\n"
        f"  target:      {ex['target']}"
      )
  if result["valid"] == 0 or (args.strict and result["invalid"]):
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
