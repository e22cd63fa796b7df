"""Validate a record file before a run: every record parsed, every image decoded, every text built.

  python -m lion_jax.data.inspect --records FILE --image-root DIR [--strict] [--json]

Prints the number of valid records, the invalid ones per reason and a few rendered examples
(instruction, T5 input with the tag prompt, target). With --json it prints only
`{"valid": N, "invalid": {reason: count, ...}}`. Exit status 1 when nothing is valid, or under
--strict when anything is invalid.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import sys
from pathlib import Path

import numpy as np

from lion_jax.data import images, templates
from lion_jax.data.records import BadRecord, Record, load_records


def check_record(record: Record, image_root: Path, rng: np.random.Generator) -> templates.ExampleText:
  """Decodes the image and builds the text, as training would; raises BadRecord."""
  width, height = images.decode_image(record.image_source(image_root)).size
  return templates.build_checked_text(record, rng, width, height)


def inspect_file(records_path: Path, image_root: Path, num_examples: int = 3, seed: int = 0) -> dict:
  """{'valid': n, 'invalid': {reason: n}, 'examples': [...], 'problems': [...]} for one file."""
  records, report = load_records(records_path, require_valid=False, logger=logging.getLogger("quiet"))
  invalid = collections.Counter(report.invalid)
  problems = list(report.first_errors)
  examples, valid = [], 0
  rng = np.random.default_rng(seed)
  for i, record in enumerate(records):
    try:
      text = check_record(record, image_root, rng)
    except BadRecord as e:
      invalid[e.reason] += 1
      if len(problems) < 20:
        problems.append(f"{records_path} record {i} (image {record.image!r}): {e}")
      continue
    valid += 1
    if len(examples) < num_examples:
      examples.append({"task": record.task, "instruction": text.instruction, "t5_input": text.t5_input,
                       "target": text.target})
  return {"valid": valid, "invalid": dict(invalid), "examples": examples, "problems": problems}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lion_jax.data.inspect", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--records", required=True, help="JSONL records or the official LION JSON list")
  parser.add_argument("--image-root", required=True)
  parser.add_argument("--strict", action="store_true", help="exit 1 if any record is invalid")
  parser.add_argument("--json", action="store_true", help="print one JSON object with the counts")
  args = parser.parse_args(argv)
  logging.getLogger("quiet").setLevel(logging.ERROR)
  try:
    result = inspect_file(Path(args.records), Path(args.image_root))
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  if args.json:
    print(json.dumps({"valid": result["valid"], "invalid": result["invalid"]}))
  else:
    print(f"{args.records}: {result['valid']} valid, {sum(result['invalid'].values())} invalid")
    for reason, n in sorted(result["invalid"].items()):
      print(f"  {reason}: {n}")
    for p in result["problems"][:10]:
      print(f"  e.g. {p}")
    for ex in result["examples"]:
      print(f"\n[{ex['task']}]\n  T5 input:    {ex['t5_input']}\n  Q-Former:    {ex['instruction']}\n"
            f"  target:      {ex['target']}")
  if result["valid"] == 0 or (args.strict and result["invalid"]):
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
