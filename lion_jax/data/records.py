"""The record format every data source is turned into, and the readers of record files.

A record is one training or evaluation example before images are decoded and text is tokenised:

  image        path relative to the source's image root (or `image_bytes`, encoded, from TFDS)
  task_type    "image_level" | "region_level"
  task         "caption" | "vqa" | "rec" | "reg" | "grounded_caption" | "instruction"
  question     the question (vqa) or the full instruction (instruction)
  expression   the referring expression (rec, reg)
  answers      list of acceptable answers / captions (the target is chosen from them)
  boxes        pixel boxes [[x1, y1, x2, y2], ...] (rec: the referred box; reg: the box to describe;
               grounded_caption: one per `<boxes>` placeholder in the answer)
  tags         image tags, list or comma-separated string (go behind the soft prompt)
  width/height original image size in pixels, when known (boxes are checked against it)
  source, id   dataset name and the example's id there

Files: JSONL (one record per line, docs/data.md) or the official LION JSON list (`image`,
`question`, `answer`, `category`, `tags`). Loading validates every record, also the boxes written in
the text of an instruction record (`Answer: [x1,y1,x2,y2]`); a bad one is skipped with its reason and
line (or raises, with `strict`), and a file with no valid record fails.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lion_jax.data.boxes import parse_boxes
from lion_jax.errors import MissingFile, UserError

TASK_TYPES = ("region_level", "image_level")  # index = the MoA task id (0 region, 1 image)
TASKS = ("caption", "vqa", "rec", "reg", "grounded_caption", "instruction")
REGION_TASKS = ("rec", "reg", "grounded_caption")
BOXES_PLACEHOLDER = "<boxes>"
# Official LION categories that mean region-level (anything else is image-level).
LION_REGION_CATEGORIES = ("ref", "region", "region_level", "grounding")


class BadRecord(UserError):
  """A record that cannot be used; `reason` is a short category for counters."""

  def __init__(self, reason: str, detail: str):
    super().__init__(f"{reason}: {detail}")
    self.reason, self.detail = reason, detail


@dataclasses.dataclass
class Record:
  task_type: str
  task: str
  image: str = ""
  image_bytes: bytes | None = None
  question: str = ""
  expression: str = ""
  answers: list[str] = dataclasses.field(default_factory=list)
  boxes: list[list[float]] = dataclasses.field(default_factory=list)
  tags: list[str] = dataclasses.field(default_factory=list)
  width: int | None = None
  height: int | None = None
  source: str = ""
  id: str = ""

  @property
  def task_id(self) -> int:
    return TASK_TYPES.index(self.task_type)

  def image_source(self, image_root: str | os.PathLike) -> bytes | Path:
    """What to decode: the embedded bytes (TFDS) or the file under `image_root`."""
    return self.image_bytes if self.image_bytes is not None else Path(image_root) / self.image

  def to_json(self) -> dict[str, Any]:
    d = {k: v for k, v in dataclasses.asdict(self).items() if v not in (None, "", [])}
    d.pop("image_bytes", None)
    return d


def parse_tags(tags: Any) -> list[str]:
  if tags is None or tags == "":
    return []
  if isinstance(tags, str):
    return [t.strip() for t in tags.split(",") if t.strip()]
  if isinstance(tags, (list, tuple)) and all(isinstance(t, str) for t in tags):
    return [t.strip() for t in tags if t.strip()]
  raise BadRecord("bad_tags", f"tags must be a list of strings or a comma string, got {tags!r}")


def check_box(box: Any, width: int | None, height: int | None) -> list[float]:
  if not (isinstance(box, (list, tuple)) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
    raise BadRecord("bad_box", f"a box must be 4 numbers [x1, y1, x2, y2], got {box!r}")
  x1, y1, x2, y2 = (float(v) for v in box)
  if x2 <= x1 or y2 <= y1:
    raise BadRecord("bad_box", f"box {box} has x2 <= x1 or y2 <= y1")
  if x1 < 0 or y1 < 0 or (width is not None and x2 > width) or (height is not None and y2 > height):
    raise BadRecord("box_outside_image", f"box {box} is outside the {width}x{height} image")
  return [x1, y1, x2, y2]


def check_text_boxes(text: str, field: str) -> None:
  """Boxes written in the text are normalised, so they are checked as the boxes of a 1x1 image."""
  for box in parse_boxes(text):
    try:
      check_box(box, 1, 1)
    except BadRecord as e:
      raise BadRecord(e.reason, f"in the {field} text: {e.detail} (text boxes are normalised)") from None


def validate(record: Record) -> Record:
  """Checks the fields a task needs; returns the record or raises BadRecord."""
  if record.task_type not in TASK_TYPES:
    raise BadRecord("unknown_task_type", f"task_type {record.task_type!r} is not one of {TASK_TYPES}")
  if record.task not in TASKS:
    raise BadRecord("unknown_task", f"task {record.task!r} is not one of {TASKS}")
  if not record.image and record.image_bytes is None:
    raise BadRecord("no_image", "the record names no image")
  answers = [a for a in record.answers if isinstance(a, str) and a.strip()]
  if not answers and record.task != "rec":
    raise BadRecord("empty_answer", "no non-empty answer")
  record.answers = answers
  record.boxes = [check_box(b, record.width, record.height) for b in record.boxes]
  if record.task in ("rec", "reg") and len(record.boxes) != 1:
    raise BadRecord("bad_box", f"task {record.task} needs exactly one box, got {len(record.boxes)}")
  if record.task in ("rec", "reg") and not record.expression.strip():
    raise BadRecord("empty_expression", f"task {record.task} needs a referring expression")
  if record.task in ("vqa", "instruction") and not record.question.strip():
    raise BadRecord("empty_question", f"task {record.task} needs a question")
  if record.task == "instruction":  # the official format: boxes live in the question and answer text
    check_text_boxes(record.question, "question")
    for a in answers:
      check_text_boxes(a, "answer")
  if record.task == "grounded_caption":
    for a in answers:
      if a.count(BOXES_PLACEHOLDER) != len(record.boxes):
        raise BadRecord(
          "bad_box",
          f"answer has {a.count(BOXES_PLACEHOLDER)} {BOXES_PLACEHOLDER} placeholders for {len(record.boxes)} boxes",
        )
  return record


def record_from_json(d: Any) -> Record:
  """Our JSONL schema -> Record (validated)."""
  if not isinstance(d, dict):
    raise BadRecord("malformed", f"a record must be a JSON object, got {type(d).__name__}")
  known = {f.name for f in dataclasses.fields(Record)} | {"answer"}
  unknown = sorted(set(d) - known)
  if unknown:
    raise BadRecord("malformed", f"unknown fields {unknown}")
  answers = d.get("answers", d.get("answer", []))
  answers = [answers] if isinstance(answers, str) else list(answers)
  try:
    record = Record(
      task_type=d.get("task_type", ""),
      task=d.get("task", ""),
      image=d.get("image", ""),
      question=d.get("question", ""),
      expression=d.get("expression", ""),
      answers=answers,
      boxes=list(d.get("boxes", [])),
      tags=parse_tags(d.get("tags")),
      width=d.get("width"),
      height=d.get("height"),
      source=d.get("source", ""),
      id=str(d.get("id", "")),
    )
  except TypeError as e:
    raise BadRecord("malformed", str(e)) from e
  return validate(record)


def record_from_lion_json(d: Any, source: str = "lion") -> Record:
  """Official LION training JSON entry -> Record: the question is the full instruction."""
  if not isinstance(d, dict):
    raise BadRecord("malformed", f"a record must be a JSON object, got {type(d).__name__}")
  image = d.get("image", d.get("image_path", d.get("image_id", "")))
  answer = d.get("answer", "")
  if isinstance(answer, list):
    answer = answer[0] if answer else ""
  category = str(d.get("category", "")).lower()  # the official loader lower-cases it
  task_type = "region_level" if category in LION_REGION_CATEGORIES else "image_level"
  return validate(
    Record(
      task_type=task_type,
      task="instruction",
      image=str(image),
      question=str(d.get("question", "")),
      answers=[str(answer)],
      tags=parse_tags(d.get("tags")),
      source=source,
      id=str(d.get("id", "")),
    )
  )


@dataclasses.dataclass
class LoadReport:
  """What loading a record file found: valid count and invalid counts per reason."""

  path: str
  valid: int = 0
  invalid: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first_errors: list[str] = dataclasses.field(default_factory=list)

  def add_error(self, where: str, error: BadRecord) -> None:
    self.invalid[error.reason] += 1
    if len(self.first_errors) < 20:
      self.first_errors.append(f"{where}: {error}")


def _iter_file(path: Path, fmt: str) -> Iterable[tuple[str, Any]]:
  """(location, raw object) pairs; a malformed JSON line yields (location, BadRecord)."""
  text = path.read_text(encoding="utf-8")
  if fmt == "lion_json":
    try:
      items = json.loads(text)
    except json.JSONDecodeError as e:
      raise UserError(f"{path}: not a JSON list of LION records: {e}") from e
    if not isinstance(items, list):
      raise UserError(f"{path}: the official LION format is a JSON list, got {type(items).__name__}")
    for i, item in enumerate(items):
      yield f"{path}[{i}]", item
    return
  for line_no, line in enumerate(text.splitlines(), 1):
    if not line.strip():
      continue
    try:
      yield f"{path}:{line_no}", json.loads(line)
    except json.JSONDecodeError as e:
      yield f"{path}:{line_no}", BadRecord("malformed_json", str(e))


def detect_format(path: Path) -> str:
  """'lion_json' for a file that starts with '[' (a JSON list), else 'jsonl'."""
  with open(path, encoding="utf-8") as f:
    head = f.read(4096).lstrip()
  return "lion_json" if head.startswith("[") else "jsonl"


def load_records(
  path: str | os.PathLike,
  *,
  fmt: str = "auto",
  source: str | None = None,
  strict: bool = False,
  require_valid: bool = True,
  logger: logging.Logger | None = None,
) -> tuple[list[Record], LoadReport]:
  """Reads and validates a record file. Bad records are skipped, counted and logged with their
  line (the first raises under `strict`); a file without any valid record raises ValueError
  (unless `require_valid=False`)."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"record file not found: {path}")
  fmt = detect_format(path) if fmt == "auto" else fmt
  if fmt not in ("jsonl", "lion_json"):
    raise UserError(f"unknown record format {fmt!r} for {path}; expected 'jsonl' or 'lion_json'")
  logger = logger or logging.getLogger(__name__)
  source = source or path.stem
  records, report = [], LoadReport(str(path))
  for where, raw in _iter_file(path, fmt):
    try:
      if isinstance(raw, BadRecord):
        raise raw
      record = record_from_lion_json(raw, source) if fmt == "lion_json" else record_from_json(raw)
      record.source = record.source or source
    except BadRecord as e:
      if strict:
        raise BadRecord(e.reason, f"{where}: {e.detail}") from None
      report.add_error(where, e)
      logger.warning("skipping record %s: %s", where, e)
      continue
    records.append(record)
    report.valid += 1
  if not records and require_valid:
    raise UserError(f"{path}: no valid record ({dict(report.invalid)}); first problems: {report.first_errors[:3]}")
  return records, report


def write_jsonl(records: Sequence[Record], path: str | os.PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
  return path
