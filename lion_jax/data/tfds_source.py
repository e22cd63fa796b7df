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


def load_tfds_records(builder_dir: str | os.PathLike, split: str, *, fields: dict[str, str], task_type: str,
                      task: str, source: str) -> list[Record]:
  """Every example of `split` as a validated Record. `fields` maps record fields to feature names, e.g.
  {"image": "jpeg", "answers": "captions", "id": "id"}; `builder_dir` is the prepared version folder
  (the one holding dataset_info.json). Invalid examples are skipped and counted in one warning."""
  builder_dir = Path(builder_dir)
  if not (builder_dir / "dataset_info.json").is_file():
    raise FileNotFoundError(f"{builder_dir}: no dataset_info.json; expected a prepared TFDS dataset version "
                            f"folder such as data_dir/name/1.0.0")
  unknown = sorted(set(fields) - set(MAPPABLE_FIELDS))
  if unknown:
    raise ValueError(f"cannot map features to record fields {unknown}; expected fields from {MAPPABLE_FIELDS}")
  builder = tfds.builder_from_directory(builder_dir)
  features = builder.info.features
  missing = sorted(feature for feature in fields.values() if feature not in features)
  if missing:
    raise ValueError(f"{builder_dir}: no feature {', '.join(map(repr, missing))}; "
                     f"the dataset has {sorted(features.keys())}")
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(f"{builder_dir}: stored as {builder.info.file_format}; only array_record can be "
                     f"read without TensorFlow (prepare it with file_format='array_record')")
  if split not in builder.info.splits:
    raise ValueError(f"{builder_dir}: no split {split!r}; the dataset has {sorted(builder.info.splits.keys())}")
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
    logger.warning("%s[%s]: kept %d records, skipped %d (%s)", builder_dir, split, len(records),
                   sum(skipped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(skipped.items())))
  return records
