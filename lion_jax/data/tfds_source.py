"""Records from a TFDS dataset prepared in array_record format, read without TensorFlow.

`tfds.load` and `as_dataset` need TensorFlow; `builder_from_directory(...).as_data_source()` does not, and
gives random access to the examples as numpy values and bytes (docs: environment.md, section 6). Images
must be stored as encoded bytes (`Tensor(shape=(), dtype=np.object_)`) or as a `Text` path, because
`tfds.features.Image` cannot encode without TensorFlow.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from lion_jax.data.records import BadRecord, Record, parse_tags, validate
from lion_jax.errors import MissingFile, UserError

logger = logging.getLogger(__name__)

# Record fields a TFDS feature can fill; "image" takes encoded bytes (-> image_bytes) or a Text path.
MAPPABLE_FIELDS = ("image", "question", "expression", "answers", "boxes", "tags", "width", "height", "id")


def _to_python(value: Any) -> Any:
  """numpy arrays/scalars -> lists/numbers and bytes (how Text arrives) -> str, recursively."""
  if isinstance(value, np.ndarray):
    value = value.tolist()
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, (list, tuple)):
    return [_to_python(v) for v in value]
  return value


def _record_fields(example: dict[str, Any], fields: dict[str, str], image_is_path: bool) -> dict[str, Any]:
  """Record keyword arguments from one example; raises BadRecord for values of the wrong shape."""
  kwargs: dict[str, Any] = {}
  for field, feature in fields.items():
    raw = example[feature]
    if field == "image" and not image_is_path:
      kwargs["image_bytes"] = bytes(raw.item() if isinstance(raw, np.ndarray) else raw)
      continue
    try:
      value = _to_python(raw)
    except UnicodeDecodeError as e:
      raise BadRecord("malformed", f"feature {feature!r} is not UTF-8 text: {e}") from e
    if field == "answers":
      kwargs[field] = [value] if isinstance(value, str) else [str(v) for v in value]
    elif field == "tags":
      kwargs[field] = parse_tags(value)
    elif field == "boxes":
      kwargs[field] = [value] if len(value) == 4 and not isinstance(value[0], list) else value
    elif field in ("width", "height"):
      kwargs[field] = int(value)
    else:
      kwargs[field] = str(value)
  return kwargs


def load_tfds_records(
  builder_dir: str | os.PathLike, split: str, *, fields: dict[str, str], task_type: str, task: str, source: str
) -> list[Record]:
  """Every example of `split` as a validated Record. `fields` maps record fields to feature names, e.g.
  {"image": "jpeg", "answers": "captions", "id": "id"}; `builder_dir` is the prepared version folder
  (the one holding dataset_info.json). Invalid examples are skipped and counted in one warning."""
  builder_dir = Path(builder_dir)
  if not (builder_dir / "dataset_info.json").is_file():
    raise MissingFile(
      f"{builder_dir}: no dataset_info.json; expected a prepared TFDS dataset version "
      f"folder such as data_dir/name/1.0.0"
    )
  unknown = sorted(set(fields) - set(MAPPABLE_FIELDS))
  if unknown:
    raise UserError(f"cannot map features to record fields {unknown}; expected fields from {MAPPABLE_FIELDS}")
  builder = tfds.builder_from_directory(builder_dir)
  features = builder.info.features
  missing = sorted(feature for feature in fields.values() if feature not in features)
  if missing:
    raise UserError(
      f"{builder_dir}: no feature {', '.join(map(repr, missing))}; the dataset has {sorted(features.keys())}"
    )
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise UserError(
      f"{builder_dir}: stored as {builder.info.file_format}; only array_record can be "
      f"read without TensorFlow (prepare it with file_format='array_record')"
    )
  if split not in builder.info.splits:
    raise UserError(f"{builder_dir}: no split {split!r}; the dataset has {sorted(builder.info.splits.keys())}")
  image_is_path = "image" in fields and isinstance(features[fields["image"]], tfds.features.Text)
  data_source = builder.as_data_source()[split]
  records, skipped = [], collections.Counter()
  for index in range(len(data_source)):
    try:
      kwargs = _record_fields(data_source[index], fields, image_is_path)
      records.append(validate(Record(task_type=task_type, task=task, source=source, **kwargs)))
    except BadRecord as e:
      skipped[e.reason] += 1
  if skipped:
    logger.warning(
      "%s[%s]: kept %d records, skipped %d (%s)",
      builder_dir,
      split,
      len(records),
      sum(skipped.values()),
      ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())),
    )
  return records


def builder_directory(name: str, data_dir: str | os.PathLike) -> Path:
  """The prepared version folder of TFDS dataset `name` (`name`, `name:1.0.0` or `name/config:1.0.0`
  as TFDS spells them) under `data_dir`; without a version, the newest one prepared there."""
  base, _, version = name.partition(":")
  root = Path(data_dir) / base
  if version:
    return root / version
  prepared = [d for d in root.glob("*") if (d / "dataset_info.json").is_file()] if root.is_dir() else []
  if not prepared:
    raise MissingFile(
      f"{root}: no prepared version of TFDS dataset {base!r} (expected {root}/<version>/"
      f"dataset_info.json; prepare it with file_format='array_record')"
    )
  return max(prepared, key=lambda d: tuple(int(p) if p.isdigit() else -1 for p in d.name.split(".")))


def parse_fields(text: str, where: str) -> dict[str, str]:
  """'image=jpeg,answers=captions' -> {'image': 'jpeg', 'answers': 'captions'} (record field = feature)."""
  pairs = [item.partition("=") for item in text.split(",") if item.strip()]
  bad = [f"{k}{sep}{v}" for k, sep, v in pairs if not (k.strip() and sep and v.strip())]
  if bad or not pairs:
    raise UserError(
      f"{where}={text!r}: expected record_field=feature pairs separated by commas, e.g. 'image=jpeg,answers=captions'"
    )
  return {k.strip(): v.strip() for k, _, v in pairs}
