"""Adapters from the public datasets' own annotation files to validated `Record`s.

Each adapter reads the files as their authors publish them and returns records whose image paths are
relative to the image root the user passes later (e.g. "train2014/COCO_train2014_000000000009.jpg").
Boxes come out in pixels, xyxy. A record that fails `validate` (or names an unknown image or an empty
region) is skipped; each file gets one warning that counts the skips per reason, so a broken download
shows up as numbers, not as thousands of log lines. A missing file, invalid JSON or a wrong top-level
structure raises a `UserError` with the file's name.

`convert_to_jsonl(name, out_path, **kwargs)` runs an adapter from `ADAPTERS` and writes our JSONL; the
command line does the same with one subcommand per adapter, its flags the adapter's parameters:

  python -m lion_jax.data.adapters coco_karpathy --path=dataset_coco.json --split=test --out=coco_test.jsonl

and ends with one line: the records kept and the entries skipped per reason.
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import logging
import os
import pickle
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lion_jax import errors
from lion_jax.data.records import BadRecord, Record, validate, write_jsonl

logger = logging.getLogger(__name__)

KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",), "test": ("test",)}


def skip_summary(kept: int, skipped: Mapping[str, int]) -> str:
  """'kept N records, skipped K (reason: n, ...)': the one line an adapter logs and the command line prints."""
  reasons = f" ({', '.join(f'{k}: {v}' for k, v in sorted(skipped.items()))})" if skipped else ""
  return f"kept {kept} records, skipped {sum(skipped.values())}{reasons}"


class AdapterRecords(list):
  """An adapter's valid records (a plain list to its callers) with `skipped`, its dropped entries per reason."""

  def __init__(self, records: list[Record], skipped: Mapping[str, int]):
    super().__init__(records)
    self.skipped = dict(skipped)


class _Collector:
  """Keeps the records that validate and counts the skipped ones per reason, for one summary line."""

  def __init__(self, description: str):
    self.description = description
    self.records: list[Record] = []
    self.skipped: collections.Counter = collections.Counter()

  def add(self, record: Record) -> None:
    try:
      self.records.append(validate(record))
    except BadRecord as e:
      self.skipped[e.reason] += 1

  def skip(self, reason: str, count: int = 1) -> None:
    self.skipped[reason] += count

  def finish(self) -> AdapterRecords:
    logger.log(
      logging.WARNING if self.skipped else logging.INFO,
      "%s: %s",
      self.description,
      skip_summary(len(self.records), self.skipped),
    )
    return AdapterRecords(self.records, self.skipped)


def _read_json(path: str | os.PathLike, expected: type, what: str) -> Any:
  """Loads a JSON file whose top level must be `expected`; `what` describes it in the error."""
  path = Path(path)
  if not path.is_file():
    raise errors.MissingFile(f"{path}: file not found ({what})")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise errors.UserError(f"{path}: not valid JSON ({what}): {e}") from e
  if not isinstance(data, expected):
    raise errors.UserError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
  return data


def _read_json_object(path: str | os.PathLike, keys: tuple[str, ...], what: str) -> dict[str, Any]:
  """A JSON object file whose `keys` must hold lists (e.g. {"images": [...]})."""
  expected = f"a JSON object with {' and '.join(repr(k) for k in keys)} ({what})"
  data = _read_json(path, dict, expected)
  if not all(isinstance(data.get(k), list) for k in keys):
    raise errors.UserError(f"{path}: expected {expected}")
  return data


def _xywh_to_xyxy(x: float, y: float, w: float, h: float) -> list[float] | None:
  """Pixel xyxy box, or None for a region of zero or negative size."""
  if w <= 0 or h <= 0:
    return None
  return [float(x), float(y), float(x + w), float(y + h)]


def coco_karpathy(path: str | os.PathLike, split: str = "train") -> AdapterRecords:
  """COCO captions in Karpathy's split (dataset_coco.json).

  One record per image, all its captions as answers. "train" includes "restval" (113k images), the usual
  training set (BLIP, InstructBLIP).

  path: Karpathy's dataset_coco.json
  split: train (with restval), restval, val or test
  """
  if split not in KARPATHY_SPLITS:
    raise errors.UserError(f"unknown Karpathy split {split!r}; expected one of {sorted(KARPATHY_SPLITS)}")
  images = _read_json_object(path, ("images",), "Karpathy dataset_coco.json")["images"]
  out = _Collector(f"{path} (coco_karpathy, split {split})")
  for image in images:
    if not isinstance(image, dict):
      out.skip("malformed")
      continue
    if image.get("split") not in KARPATHY_SPLITS[split]:
      continue
    sentences = [s.get("raw", "") for s in image.get("sentences", []) if isinstance(s, dict)]
    out.add(
      Record(
        task_type="image_level",
        task="caption",
        image=f"{image.get('filepath', '')}/{image.get('filename', '')}",
        answers=[s.strip() for s in sentences if isinstance(s, str)],
        source="coco",
        id=str(image.get("cocoid", "")),
      )
    )
  return out.finish()


def vqa_v2(
  questions_path: str | os.PathLike,
  annotations_path: str | os.PathLike,
  image_dir: str = "train2014",
  source: str = "vqav2",
) -> AdapterRecords:
  """VQAv2 or OK-VQA: the official questions + annotations.

  Both use the same format: questions joined to annotations by question_id, all ten human answers kept so
  the target can be the most common one. Images are IMAGE_DIR/COCO_<subtype>_<image_id>.jpg, the subtype
  from the questions file (OK-VQA names none: IMAGE_DIR is used).

  questions_path: the questions JSON (v2_OpenEnded_mscoco_<split>_questions.json; OK-VQA's OpenEnded_mscoco_...)
  annotations_path: the annotations JSON (v2_mscoco_<split>_annotations.json; OK-VQA's mscoco_<split>_annotations.json)
  image_dir: the COCO 2014 image folder under the image root (train2014 or val2014)
  source: the records' source name (vqav2, okvqa)
  """
  questions_data = _read_json_object(questions_path, ("questions",), "VQA questions file")
  annotations = _read_json_object(annotations_path, ("annotations",), "VQA annotations file")["annotations"]
  data_subtype = questions_data.get("data_subtype") or image_dir
  answers_by_question = {
    a["question_id"]: a.get("answers", []) for a in annotations if isinstance(a, dict) and "question_id" in a
  }
  out = _Collector(f"{questions_path} + {annotations_path} ({source})")
  for q in questions_data["questions"]:
    if not isinstance(q, dict) or not isinstance(q.get("image_id"), int):
      out.skip("malformed")
      continue
    if q.get("question_id") not in answers_by_question:
      out.skip("no_annotation")
      continue
    answers = [a.get("answer", "") for a in answers_by_question[q["question_id"]] if isinstance(a, dict)]
    out.add(
      Record(
        task_type="image_level",
        task="vqa",
        image=f"{image_dir}/COCO_{data_subtype}_{q['image_id']:012d}.jpg",
        question=str(q.get("question", "")),
        answers=[str(a) for a in answers],
        source=source,
        id=str(q["question_id"]),
      )
    )
  return out.finish()


def aokvqa(path: str | os.PathLike, image_dir: str = "train2017") -> AdapterRecords:
  """A-OKVQA questions with their ten direct answers.

  COCO 2017 images; the direct answers are kept as VQAv2's are.

  path: aokvqa_v1p0_<split>.json
  image_dir: the COCO 2017 image folder under the image root (train2017 or val2017)
  """
  entries = _read_json(path, list, "a JSON list of questions (A-OKVQA)")
  out = _Collector(f"{path} (aokvqa)")
  for q in entries:
    if not isinstance(q, dict) or not isinstance(q.get("image_id"), int):
      out.skip("malformed")
      continue
    out.add(
      Record(
        task_type="image_level",
        task="vqa",
        image=f"{image_dir}/{q['image_id']:012d}.jpg",
        question=str(q.get("question", "")),
        answers=[str(a) for a in q.get("direct_answers", [])],
        source="aokvqa",
        id=str(q.get("question_id", "")),
      )
    )
  return out.finish()


def textcaps(path: str | os.PathLike) -> AdapterRecords:
  """TextCaps captions, one record per image.

  The file holds one entry per caption; they are grouped by image and each entry's `reference_strs` (all
  captions of its image) is merged in, duplicates dropped.

  path: TextCaps_0.1_<split>.json
  """
  entries = _read_json_object(path, ("data",), "TextCaps json")["data"]
  by_image: dict[str, dict[str, Any]] = {}
  out = _Collector(f"{path} (textcaps)")
  for entry in entries:
    if not isinstance(entry, dict) or "image_id" not in entry:
      out.skip("malformed")
      continue
    image_id = str(entry["image_id"])
    group = by_image.setdefault(image_id, {"entry": entry, "captions": {}})
    for caption in [entry.get("caption_str", ""), *(entry.get("reference_strs") or [])]:
      if isinstance(caption, str) and caption.strip():
        group["captions"][caption.strip()] = None
  for image_id, group in by_image.items():
    entry = group["entry"]
    out.add(
      Record(
        task_type="image_level",
        task="caption",
        image=entry.get("image_path") or f"train_images/{image_id}.jpg",
        answers=list(group["captions"]),
        width=entry.get("image_width"),
        height=entry.get("image_height"),
        source="textcaps",
        id=image_id,
      )
    )
  return out.finish()


class _PlainDataUnpickler(pickle.Unpickler):
  """Loads only plain lists/dicts/strings/numbers: a pickle can run any code through the globals it
  names, and the refs files come from third-party mirrors."""

  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(
      f"refusing to load the global {module}.{name}: only plain lists, dicts, strings and numbers are allowed"
    )


class UnreadablePickle(errors.UserError, pickle.UnpicklingError):
  """A refs file that is no pickle of plain data: the user's file to replace, so also a `UserError`."""


def load_plain_pickle(path: str | os.PathLike) -> Any:
  """A pickle that holds only plain data (e.g. the RefCOCO refs file), with Python 2 byte strings read as
  UTF-8; anything that needs a class raises `UnreadablePickle` (a `pickle.UnpicklingError`) naming the file."""
  path = Path(path)
  if not path.is_file():
    raise errors.MissingFile(f"{path}: file not found (refs pickle)")
  with open(path, "rb") as f:
    try:
      return _PlainDataUnpickler(f, encoding="utf-8").load()
    except pickle.UnpicklingError as e:
      raise UnreadablePickle(f"{path}: {e}") from e
    except (EOFError, UnicodeDecodeError, ValueError) as e:
      raise UnreadablePickle(f"{path}: not a readable refs pickle: {e}") from e


def refcoco(
  refs_path: str | os.PathLike, instances_path: str | os.PathLike, split: str = "train", dataset: str = "refcoco"
) -> AdapterRecords:
  """RefCOCO, RefCOCO+ or RefCOCOg: REC and REG per sentence.

  For every sentence of every ref in `split` (refer's refs(unc|google|umd).p + instances.json), one REC
  record (expression -> box) and one REG record (box -> expression), both with the id "{ref_id}_{sent_id}".
  The expression is the sentence's "raw" text (cased, as people wrote it; "sent" is refer's lower-cased
  tokenisation), "sent" only where "raw" is empty. Images are train2014/<file_name>.

  refs_path: refer's refs pickle: refs(unc).p (RefCOCO, RefCOCO+), refs(umd).p or refs(google).p (RefCOCOg)
  instances_path: the same folder's instances.json (boxes and image sizes)
  split: the refs' split to keep: train, val, testA, testB (unc); train, val, test (umd)
  dataset: the records' source name (refcoco, refcoco+, refcocog)
  """
  refs = load_plain_pickle(refs_path)
  if not isinstance(refs, list):
    raise errors.UserError(f"{refs_path}: expected a pickled list of refs, got {type(refs).__name__}")
  instances = _read_json_object(instances_path, ("images", "annotations"), "COCO instances.json")
  images = {im["id"]: im for im in instances["images"] if isinstance(im, dict) and "id" in im}
  annotations = {a["id"]: a for a in instances["annotations"] if isinstance(a, dict) and "id" in a}
  out = _Collector(f"{refs_path} + {instances_path} ({dataset}, split {split})")
  for ref in refs:
    if not isinstance(ref, dict):
      out.skip("malformed")
      continue
    if ref.get("split") != split:
      continue
    image, annotation = images.get(ref.get("image_id")), annotations.get(ref.get("ann_id"))
    if image is None or annotation is None:
      out.skip("unknown_image" if image is None else "unknown_annotation")
      continue
    bbox = annotation.get("bbox")
    box = _xywh_to_xyxy(*bbox) if isinstance(bbox, list) and len(bbox) == 4 else None
    if box is None:
      out.skip("empty_box")
      continue
    for i, sentence in enumerate(ref.get("sentences", [])):
      if not isinstance(sentence, dict):
        out.skip("malformed")
        continue
      expression = str(sentence.get("raw") or sentence.get("sent", "")).strip()
      common = dict(
        task_type="region_level",
        image=f"train2014/{image['file_name']}",
        expression=expression,
        boxes=[box],
        width=image.get("width"),
        height=image.get("height"),
        source=dataset,
        id=f"{ref.get('ref_id')}_{sentence.get('sent_id', i)}",
      )
      out.add(Record(task="rec", **common))
      out.add(Record(task="reg", answers=[expression], **common))
  return out.finish()


def _vg_image_folders(image_data_path: str | os.PathLike) -> dict[int, dict[str, Any]]:
  """image_id -> {"folder", "width", "height"} from VG's image_data.json ("image_id" in v1.2, "id" in v1.0);
  the folder (VG_100K or VG_100K_2) is the url's second-to-last path component."""
  entries = _read_json(image_data_path, list, "a JSON list of images (Visual Genome image_data.json)")
  folders = {}
  for entry in entries:
    if isinstance(entry, dict) and isinstance(entry.get("url"), str):
      image_id = entry.get("image_id", entry.get("id"))
      folders[image_id] = {
        "folder": entry["url"].rstrip("/").split("/")[-2],
        "width": entry.get("width"),
        "height": entry.get("height"),
      }
  return folders


def visual_genome(
  region_descriptions_path: str | os.PathLike, image_data_path: str | os.PathLike | None = None
) -> AdapterRecords:
  """Visual Genome regions: REG and REC per region.

  With image_data.json the image folder (VG_100K or VG_100K_2) and size come from it, and boxes are checked
  against the size; without it every image is assumed in VG_100K.

  region_descriptions_path: region_descriptions.json
  image_data_path: image_data.json, for each image's folder and size
  """
  images = _read_json(
    region_descriptions_path, list, "a JSON list of images with 'regions' (Visual Genome region_descriptions.json)"
  )
  image_info = _vg_image_folders(image_data_path) if image_data_path is not None else None
  out = _Collector(f"{region_descriptions_path} (visual_genome)")
  for image in images:
    if not isinstance(image, dict) or not isinstance(image.get("regions"), list):
      out.skip("malformed")
      continue
    image_id = image.get("id", image.get("image_id"))
    info = {"folder": "VG_100K", "width": None, "height": None} if image_info is None else image_info.get(image_id)
    if info is None:
      out.skip("unknown_image", len(image["regions"]))
      continue
    for region in image["regions"]:
      try:
        box = _xywh_to_xyxy(region["x"], region["y"], region["width"], region["height"])
      except (KeyError, TypeError):
        out.skip("malformed")
        continue
      if box is None:
        out.skip("empty_box")
        continue
      phrase = str(region.get("phrase", "")).strip()
      common = dict(
        task_type="region_level",
        image=f"{info['folder']}/{image_id}.jpg",
        expression=phrase,
        boxes=[box],
        width=info["width"],
        height=info["height"],
        source="visual_genome",
        id=str(region.get("region_id", "")),
      )
      out.add(Record(task="reg", answers=[phrase], **common))
      out.add(Record(task="rec", **common))
  return out.finish()


ADAPTERS: dict[str, Callable[..., AdapterRecords]] = {
  "coco_karpathy": coco_karpathy,
  "vqa_v2": vqa_v2,
  "aokvqa": aokvqa,
  "textcaps": textcaps,
  "refcoco": refcoco,
  "visual_genome": visual_genome,
}


class Converted(int):
  """What `convert_to_jsonl` wrote: the record count (an int, as its callers compare it) and `skipped`, the
  adapter's dropped entries per reason."""

  skipped: dict[str, int]

  def __new__(cls, written: int, skipped: Mapping[str, int]) -> Converted:
    converted = super().__new__(cls, written)
    converted.skipped = dict(skipped)
    return converted


def convert_to_jsonl(name: str, out_path: str | os.PathLike, **kwargs: Any) -> Converted:
  """Runs the adapter `name` with `kwargs` and writes its records as JSONL; returns how many, with the skip
  counts. Refuses to write an empty file, which the record loader would reject later, far from the cause."""
  if name not in ADAPTERS:
    raise errors.UserError(f"unknown adapter {name!r}; expected one of {sorted(ADAPTERS)}")
  records = ADAPTERS[name](**kwargs)
  if not records:
    raise errors.UserError(
      f"adapter {name!r} with {kwargs} produced no valid record "
      f"({skip_summary(0, records.skipped)}); nothing written to {out_path}"
    )
  write_jsonl(records, out_path)
  return Converted(len(records), records.skipped)


def _documented(adapter: Callable[..., AdapterRecords]) -> tuple[str, dict[str, str]]:
  """An adapter's docstring split into its prose and its `parameter: help` lines, the help of each flag."""
  parameters = inspect.signature(adapter).parameters
  prose, helps = [], {}
  for line in inspect.getdoc(adapter).splitlines():
    name, _, text = line.partition(": ")
    if name in parameters:
      helps[name] = text
    else:
      prose.append(line)
  if missing := [name for name in parameters if name not in helps]:
    raise TypeError(f"{adapter.__name__}: its docstring has no 'parameter: help' line for {missing}")
  return "\n".join(prose).strip(), helps


def _is_file_parameter(name: str) -> bool:
  """The adapters name their input files `path` or `*_path`: the command line checks those exist."""
  return name == "path" or name.endswith("_path")


def command_line_parser() -> argparse.ArgumentParser:
  """One subcommand per adapter in `ADAPTERS`, built from its signature and docstring so it cannot drift:
  a flag per parameter (required where the parameter has no default), the first docstring line listed in --help."""
  documented = {name: _documented(adapter) for name, adapter in ADAPTERS.items()}
  width = max(map(len, ADAPTERS)) + 2
  listing = [f"  {name:<{width}}{description.splitlines()[0]}" for name, (description, _) in documented.items()]
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.data.adapters",
    description=__doc__,
    epilog="\n".join(["adapters (ADAPTER --help lists its flags):", *listing]),
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  subcommands = parser.add_subparsers(
    dest="adapter", required=True, metavar="ADAPTER", help="the dataset's adapter, one of those listed below"
  )
  for name, adapter in ADAPTERS.items():
    description, helps = documented[name]
    sub = subcommands.add_parser(name, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for param in inspect.signature(adapter).parameters.values():
      required = param.default is inspect.Parameter.empty
      shown_default = "" if required else f" (default: {'none' if param.default is None else '%(default)s'})"
      sub.add_argument(
        f"--{param.name}",
        required=required,
        default=None if required else param.default,
        help=helps[param.name] + shown_default,
      )
    sub.add_argument("--out", required=True, help="the JSONL file to write (its folder is created)")
  return parser


def _convert_from_flags(args: argparse.Namespace) -> None:
  """The command line's body: checks the input files, converts, prints the one summary line."""
  kwargs = {name: getattr(args, name) for name in inspect.signature(ADAPTERS[args.adapter]).parameters}
  for name, value in kwargs.items():
    if _is_file_parameter(name) and value is not None and not Path(value).is_file():
      raise errors.MissingFile(f"--{name}: no such file: {value}")
  level = logger.level
  logger.setLevel(logging.ERROR)  # the adapter's own summary line would repeat the one printed below
  try:
    written = convert_to_jsonl(args.adapter, args.out, **kwargs)
  finally:
    logger.setLevel(level)
  print(f"wrote {args.out}: {skip_summary(written, written.skipped)}")


def main(argv: list[str] | None = None) -> int:
  args = command_line_parser().parse_args(argv)
  return errors.exit_code(lambda: _convert_from_flags(args))


if __name__ == "__main__":
  sys.exit(main())
