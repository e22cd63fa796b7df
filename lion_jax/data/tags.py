"""Image tags for LION's tag prompt: the tagger interface, and merging tags computed elsewhere.

    python -m lion_jax.data.tags --records X.jsonl --tags TAGS.jsonl --out Y.jsonl

TAGS.jsonl holds one object per image, `{"image": <the path as the records name it>, "tags": [...]}`
(a list of strings or one comma string), for example written by the Recognize Anything model run in
PyTorch in eval mode. Every record of a listed image gets those tags (replacing any it had); records
of other images keep theirs. The one summary line counts the records that got tags, the records
still without any, the invalid records the input file held (skipped, as training skips them) and the
images of TAGS.jsonl that no record names. A malformed line of TAGS.jsonl fails naming file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image

from lion_jax import errors
from lion_jax.data.records import BadRecord, Record, load_records, parse_tags, write_jsonl

# Image -> its tags, used where a record or a call gives none (e.g. a RAM model wrapped by the user).
Tagger = Callable[[Image.Image], Sequence[str]]


def missing_tags_warning(without: int, total: int) -> str:
  """The one line for a soft-prompt model asked without tags (predict, evaluate, the notebook)."""
  return (
    f"{without} of {total} inputs have no image tags: this checkpoint has LION's soft prompt, which the "
    "released model was trained with RAM tags behind, so they get an empty tag list []; give tags (the "
    "records' 'tags' field, `python -m lion_jax.data.tags` to merge a tags file, `tags=` or a `tagger`)"
  )


def read_tags(path: str | Path) -> dict[str, list[str]]:
  """{image: tags} from a TAGS.jsonl file; a bad or repeated line raises UserError naming it."""
  path = Path(path)
  if not path.is_file():
    raise errors.MissingFile(f"--tags: no such file: {path}")
  tags_by_image: dict[str, list[str]] = {}
  for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    if not line.strip():
      continue
    where = f"{path}:{line_no}"
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise errors.UserError(f"{where}: not JSON: {e}") from None
    if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or "tags" not in entry:
      raise errors.UserError(f'{where}: expected {{"image": "<path>", "tags": [...]}}, got {line.strip()[:120]}')
    try:
      tags = parse_tags(entry["tags"])
    except BadRecord as e:
      raise errors.UserError(f"{where}: {e.detail}") from None
    if entry["image"] in tags_by_image:
      raise errors.UserError(f"{where}: image {entry['image']!r} is listed twice")
    tags_by_image[entry["image"]] = tags
  return tags_by_image


def merge_tags(records: Sequence[Record], tags_by_image: dict[str, list[str]]) -> tuple[list[Record], dict[str, int]]:
  """Records with the tags of their image set (others unchanged), and the counts the summary prints."""
  merged, tagged = [], 0
  for record in records:
    if record.image in tags_by_image:
      record = dataclasses.replace(record, tags=list(tags_by_image[record.image]))
      tagged += 1
    merged.append(record)
  named = {r.image for r in records}
  counts = {
    "tagged": tagged,
    "without_tags": sum(not r.tags for r in merged),
    "unused_images": sum(image not in named for image in tags_by_image),
  }
  return merged, counts


def _merge_from_flags(args: argparse.Namespace) -> None:
  tags_by_image = read_tags(args.tags)
  records, report = load_records(args.records)
  merged, counts = merge_tags(records, tags_by_image)
  write_jsonl(merged, args.out)
  invalid = sum(report.invalid.values())
  print(
    f"wrote {args.out}: {len(merged)} records, {counts['tagged']} given tags from {args.tags}, "
    f"{counts['without_tags']} still without tags, {invalid} invalid records skipped"
    + (f" {dict(report.invalid)}" if invalid else "")
    + f", {counts['unused_images']} images of {args.tags} named by no record"
  )


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.data.tags", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--records", required=True, metavar="FILE", help="JSONL records or the official LION JSON list")
  parser.add_argument("--tags", required=True, metavar="FILE", help='TAGS.jsonl: {"image": ..., "tags": [...]} lines')
  parser.add_argument("--out", required=True, metavar="FILE", help="the JSONL records to write (its folder is created)")
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: _merge_from_flags(args))


if __name__ == "__main__":
  sys.exit(main())
