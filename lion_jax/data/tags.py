"""Image tags for LION's tag prompt: the tagger interface, tagging a dataset, and merging tags
computed elsewhere.

    python -m lion_jax.data.tags --tagger DIR --records X.jsonl --image_root R --out Y.jsonl
    python -m lion_jax.data.tags --records X.jsonl --tags TAGS.jsonl --out Y.jsonl

With `--tagger` (a RAM tagger converted by `python -m lion_jax.convert ram`), the images of the
records without tags are tagged on the device mesh: all devices data-parallel, on every host of a
multi-host job (`--distributed`), each process reading only the images its devices tag. The tags
are written as they come to `Y.jsonl.tagging.jsonl` (TAGS.jsonl lines, by process 0), so the same
command after an interruption goes on after the last written batch; at the end Y.jsonl is written
(the records, with a `tags` field where the tagger gave some) and that file is removed. An image
that cannot be read is counted and named in the summary, and its records keep no tags.

With `--tags`, TAGS.jsonl holds one object per image, `{"image": <the path as the records name it>,
"tags": [...]}` (a list of strings or one comma string), for example written by the Recognize
Anything model run in PyTorch in eval mode. Every record of a listed image gets those tags
(replacing any it had); records of other images keep theirs. The one summary line counts the
records that got tags, the records still without any, the invalid records the input file held
(skipped, as training skips them) and the images of TAGS.jsonl that no record names. A malformed
line of TAGS.jsonl fails naming file and line.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from lion_jax import errors
from lion_jax.data.records import BadRecord, Record, load_records, parse_tags, write_jsonl

# Image -> its tags, used where a record or a call gives none: `inference.tagger.RamTagger`, or any
# callable (e.g. a RAM model wrapped by the user). One with a `tag_batch(images)` method is given
# whole batches (`tag_images`).
Tagger = Callable[[Image.Image], Sequence[str]]


def tag_images(tagger: Tagger, images: Sequence[Image.Image]) -> list[list[str]]:
  """The tags of each image: in one batch where the tagger takes batches, else one by one."""
  tag_batch = getattr(tagger, "tag_batch", None)
  return [list(tags) for tags in (tag_batch(images) if tag_batch is not None else map(tagger, images))]


def fill_missing_tags(
  tags: Sequence[list[str] | None], images: Sequence[Image.Image], tagger: Tagger | None
) -> list[list[str]]:
  """`tags` with each None replaced by the tagger's tags of its image (one batch for all of them),
  or by [] without a tagger."""
  missing = [i for i, t in enumerate(tags) if t is None]
  computed = tag_images(tagger, [images[i] for i in missing]) if tagger is not None and missing else []
  filled = [list(t or []) for t in tags]
  for i, image_tags in zip(missing, computed):
    filled[i] = image_tags
  return filled


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
  print(
    f"wrote {args.out}: {len(merged)} records, {counts['tagged']} given tags from {args.tags}, "
    f"{counts['without_tags']} still without tags, {_invalid(report)}"
    + f", {counts['unused_images']} images of {args.tags} named by no record"
  )


def _invalid(report) -> str:
  invalid = sum(report.invalid.values())
  return f"{invalid} invalid records skipped" + (f" {dict(report.invalid)}" if invalid else "")


def progress_path(out: str | os.PathLike) -> Path:
  """Where `tag_dataset` writes the tags as they come (removed once `out` is written)."""
  return Path(f"{out}.tagging.jsonl")


def _written(progress: Path, order: Sequence[str]) -> list[dict]:
  """The entries already in `progress` ({"image", "tags"[, "unreadable"]}), which must be the first
  images of `order` (else it belongs to another run: UserError)."""
  if not progress.exists():
    return []
  entries = []
  for line_no, line in enumerate(progress.read_text(encoding="utf-8").splitlines(), 1):
    try:
      entries.append(json.loads(line))
    except json.JSONDecodeError:
      raise errors.UserError(f"{progress}:{line_no}: not JSON (a damaged file); delete it to start over") from None
  if [e.get("image") for e in entries] != list(order[: len(entries)]):
    raise errors.UserError(
      f"{progress} holds the tags of other images than the first {len(entries)} to tag: it comes from another "
      "records file; delete it to start over"
    )
  return entries


def tag_dataset(
  tagger, records: Sequence[Record], image_root: str | os.PathLike, out: str | os.PathLike, *, progress: bool = True
) -> dict:
  """Tags the images of `records` without tags with `tagger` (a RamTagger, on its mesh) and writes
  the records to `out` (process 0); resumable (module docstring). Returns the summary counts."""
  from jax.experimental import multihost_utils

  from lion_jax.data import images as image_ops

  image_root, out = Path(image_root), Path(out)
  writer = jax.process_index() == 0
  first = {}
  for record in records:
    if not record.tags:
      first.setdefault(record.image, record)
  order = list(first)
  progress_file = progress_path(out)
  start = int(multihost_utils.broadcast_one_to_all(np.int32(len(_written(progress_file, order)) if writer else 0)))
  bar = None
  if progress and writer:
    from tqdm import tqdm

    bar = tqdm(total=len(order), initial=start, desc="tagging", unit="image")
  if writer:
    progress_file.parent.mkdir(parents=True, exist_ok=True)
  chunk_size = tagger.batch_size * 4
  for begin in range(start, len(order), chunk_size):
    chunk = order[begin : begin + chunk_size]
    failed = np.zeros(len(chunk), bool)

    def load(i: int, chunk=chunk, failed=failed) -> np.ndarray:
      try:
        return tagger.pixels(image_ops.decode_image(first[chunk[i]].image_source(image_root)))
      except BadRecord:
        failed[i] = True
        size = tagger.config.swin.image_size
        return np.zeros((size, size, 3), np.float32)

    chunk_tags = tagger.tags_of(tagger.probabilities(len(chunk), load))
    failed = np.asarray(multihost_utils.process_allgather(failed)).reshape(-1, len(chunk)).any(axis=0)
    if writer:
      with open(progress_file, "a", encoding="utf-8") as f:
        for image, tags, bad in zip(chunk, chunk_tags, failed):
          entry = {"image": image, "tags": [], "unreadable": True} if bad else {"image": image, "tags": tags}
          f.write(json.dumps(entry, ensure_ascii=False) + "\n")
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
  if not writer:
    return {}
  entries = _written(progress_file, order)
  merged, counts = merge_tags(records, {e["image"]: e["tags"] for e in entries})
  partial_out = out.with_name(out.name + ".partial")
  write_jsonl(merged, partial_out)
  partial_out.replace(out)
  progress_file.unlink(missing_ok=True)
  unreadable = [e["image"] for e in entries if e.get("unreadable")]
  return {"images": len(order), "without_tags": counts["without_tags"], "unreadable": unreadable}


def _tag_from_flags(args: argparse.Namespace) -> None:
  from lion_jax import sharding
  from lion_jax.distributed import start_distributed
  from lion_jax.inference.tagger import RamTagger

  if args.distributed:
    start_distributed()
  records, report = load_records(args.records)
  tagger = RamTagger.load(args.tagger, mesh=sharding.make_mesh(), batch_size=args.batch_size)
  counts = tag_dataset(tagger, records, args.image_root, args.out)
  if jax.process_index() == 0:
    unreadable = counts["unreadable"]
    print(
      f"wrote {args.out}: {len(records)} records, {counts['images']} images tagged by {args.tagger}, "
      f"{counts['without_tags']} records without tags, {_invalid(report)}, {len(unreadable)} images unreadable"
      + (f" {unreadable[:10]}" if unreadable else "")
    )


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.data.tags", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--records", required=True, metavar="FILE", help="JSONL records or the official LION JSON list")
  parser.add_argument("--out", required=True, metavar="FILE", help="the JSONL records to write (its folder is created)")
  given = parser.add_mutually_exclusive_group(required=True)
  given.add_argument(
    "--tags", metavar="FILE", help='TAGS.jsonl: {"image": ..., "tags": [...]} lines (default: none; or --tagger)'
  )
  given.add_argument(
    "--tagger", metavar="DIR", help="a converted RAM tagger: tag the records without tags (default: none; or --tags)"
  )
  parser.add_argument(
    "--image_root", metavar="DIR", default=".", help="where the records' images are, with --tagger (default: .)"
  )
  parser.add_argument("--batch_size", type=int, default=32, help="images per device step, all devices (default: 32)")
  parser.add_argument("--distributed", action="store_true", help="multi-host: jax.distributed first (default: off)")
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: _tag_from_flags(args) if args.tagger else _merge_from_flags(args))


if __name__ == "__main__":
  sys.exit(main())
