"""Adapters from the public datasets' own annotation files to validated `Record`s.

Each adapter reads the files as their authors publish them and returns records whose image paths are
relative to the image root the user passes later (e.g. "train2014/COCO_train2014_000000000009.jpg").
Boxes come out in pixels, xyxy. A record that fails `validate` (or names an unknown image or an empty
region) is skipped; each file gets one warning that counts the skips per reason, so a broken download
shows up as numbers, not as thousands of log lines. A missing file, invalid JSON or a wrong top-level
structure raises with the file's name.

`convert_to_jsonl(name, out_path, **kwargs)` runs an adapter from `ADAPTERS` and writes our JSONL.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lion_jax.data.records import BadRecord, Record, validate, write_jsonl

logger = logging.getLogger(__name__)

KARPATHY_SPLITS = {"train": ("train", "restval"), "restval": ("restval",), "val": ("val",), "test": ("test",)}


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

  def finish(self) -> list[Record]:
    if self.skipped:
      logger.warning("%s: kept %d records, skipped %d (%s)", self.description, len(self.records),
                     sum(self.skipped.values()), ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items())))
    else:
      logger.info("%s: kept %d records", self.description, len(self.records))
    return self.records


def _read_json(path: str | os.PathLike, expected: type, what: str) -> Any:
  """Loads a JSON file whose top level must be `expected`; `what` describes it in the error."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: file not found ({what})")
  try:
    data = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({what}): {e}") from e
  if not isinstance(data, expected):
    raise ValueError(f"{path}: expected {what}, got a JSON {type(data).__name__}")
  return data


def _read_json_object(path: str | os.PathLike, keys: tuple[str, ...], what: str) -> dict[str, Any]:
  """A JSON object file whose `keys` must hold lists (e.g. {"images": [...]})."""
  expected = f"a JSON object with {' and '.join(repr(k) for k in keys)} ({what})"
  data = _read_json(path, dict, expected)
  if not all(isinstance(data.get(k), list) for k in keys):
    raise ValueError(f"{path}: expected {expected}")
  return data


def _xywh_to_xyxy(x: float, y: float, w: float, h: float) -> list[float] | None:
  """Pixel xyxy box, or None for a region of zero or negative size."""
  if w <= 0 or h <= 0:
    return None
  return [float(x), float(y), float(x + w), float(y + h)]


def coco_karpathy(path: str | os.PathLike, split: str = "train") -> list[Record]:
  """COCO captions in Karpathy's split (`dataset_coco.json`): one record per image, all its captions as
  answers. "train" includes "restval" (113k images), the usual training set (BLIP, InstructBLIP)."""
  if split not in KARPATHY_SPLITS:
    raise ValueError(f"unknown Karpathy split {split!r}; expected one of {sorted(KARPATHY_SPLITS)}")
  images = _read_json_object(path, ("images",), "Karpathy dataset_coco.json")["images"]
  out = _Collector(f"{path} (coco_karpathy, split {split})")
  for image in images:
    if not isinstance(image, dict):
      out.skip("malformed")
      continue
    if image.get("split") not in KARPATHY_SPLITS[split]:
      continue
    sentences = [s.get("raw", "") for s in image.get("sentences", []) if isinstance(s, dict)]
    out.add(Record(task_type="image_level", task="caption",
                   image=f"{image.get('filepath', '')}/{image.get('filename', '')}",
                   answers=[s.strip() for s in sentences if isinstance(s, str)], source="coco",
                   id=str(image.get("cocoid", ""))))
  return out.finish()


def vqa_v2(questions_path: str | os.PathLike, annotations_path: str | os.PathLike, image_dir: str = "train2014",
           source: str = "vqav2") -> list[Record]:
  """VQAv2 / OK-VQA (the same official format): questions joined to annotations by question_id, all ten
  human answers kept so the target can be the most common one."""
  questions_data = _read_json_object(questions_path, ("questions",), "VQA questions file")
  annotations = _read_json_object(annotations_path, ("annotations",), "VQA annotations file")["annotations"]
  data_subtype = questions_data.get("data_subtype") or image_dir
  answers_by_question = {a["question_id"]: a.get("answers", []) for a in annotations
                         if isinstance(a, dict) and "question_id" in a}
  out = _Collector(f"{questions_path} + {annotations_path} ({source})")
  for q in questions_data["questions"]:
    if not isinstance(q, dict) or not isinstance(q.get("image_id"), int):
      out.skip("malformed")
      continue
    if q.get("question_id") not in answers_by_question:
      out.skip("no_annotation")
      continue
    answers = [a.get("answer", "") for a in answers_by_question[q["question_id"]] if isinstance(a, dict)]
    out.add(Record(task_type="image_level", task="vqa",
                   image=f"{image_dir}/COCO_{data_subtype}_{q['image_id']:012d}.jpg",
                   question=str(q.get("question", "")), answers=[str(a) for a in answers], source=source,
                   id=str(q["question_id"])))
  return out.finish()


def aokvqa(path: str | os.PathLike, image_dir: str = "train2017") -> list[Record]:
  """A-OKVQA (`aokvqa_v1p0_{split}.json`, COCO 2017 images): the ten direct answers, as for VQAv2."""
  entries = _read_json(path, list, "a JSON list of questions (A-OKVQA)")
  out = _Collector(f"{path} (aokvqa)")
  for q in entries:
    if not isinstance(q, dict) or not isinstance(q.get("image_id"), int):
      out.skip("malformed")
      continue
    out.add(Record(task_type="image_level", task="vqa", image=f"{image_dir}/{q['image_id']:012d}.jpg",
                   question=str(q.get("question", "")), answers=[str(a) for a in q.get("direct_answers", [])],
                   source="aokvqa", id=str(q.get("question_id", ""))))
  return out.finish()


def textcaps(path: str | os.PathLike) -> list[Record]:
  """TextCaps (`TextCaps_0.1_{split}.json`): one entry per caption, grouped into one record per image;
  each entry's `reference_strs` (all captions of its image) is merged in, duplicates dropped."""
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
    out.add(Record(task_type="image_level", task="caption",
                   image=entry.get("image_path") or f"train_images/{image_id}.jpg",
                   answers=list(group["captions"]), width=entry.get("image_width"),
                   height=entry.get("image_height"), source="textcaps", id=image_id))
  return out.finish()


class _PlainDataUnpickler(pickle.Unpickler):
  """Loads only plain lists/dicts/strings/numbers: a pickle can run any code through the globals it
  names, and the refs files come from third-party mirrors."""

  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}: only plain lists, dicts, "
                                 f"strings and numbers are allowed")


def load_plain_pickle(path: str | os.PathLike) -> Any:
  """A pickle that holds only plain data (e.g. the RefCOCO refs file), with Python 2 byte strings read as
  UTF-8; anything that needs a class raises `pickle.UnpicklingError` naming the file."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: file not found (refs pickle)")
  with open(path, "rb") as f:
    try:
      return _PlainDataUnpickler(f, encoding="utf-8").load()
    except pickle.UnpicklingError as e:
      raise pickle.UnpicklingError(f"{path}: {e}") from e
    except (EOFError, UnicodeDecodeError, ValueError) as e:
      raise pickle.UnpicklingError(f"{path}: not a readable refs pickle: {e}") from e


def refcoco(refs_path: str | os.PathLike, instances_path: str | os.PathLike, split: str = "train",
            dataset: str = "refcoco") -> list[Record]:
  """RefCOCO / RefCOCO+ / RefCOCOg (refer's `refs(unc|google|umd).p` + `instances.json`): for every
  sentence of every ref in `split`, one REC record (expression -> box) and one REG record (box ->
  expression), both with the id "{ref_id}_{sent_id}". The expression is the sentence's "raw" text (cased,
  as people wrote it; "sent" is refer's lower-cased tokenisation), "sent" only where "raw" is empty."""
  refs = load_plain_pickle(refs_path)
  if not isinstance(refs, list):
    raise ValueError(f"{refs_path}: expected a pickled list of refs, got {type(refs).__name__}")
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
      common = dict(task_type="region_level", image=f"train2014/{image['file_name']}", expression=expression,
                    boxes=[box], width=image.get("width"), height=image.get("height"), source=dataset,
                    id=f"{ref.get('ref_id')}_{sentence.get('sent_id', i)}")
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
      folders[image_id] = {"folder": entry["url"].rstrip("/").split("/")[-2], "width": entry.get("width"),
                           "height": entry.get("height")}
  return folders


def visual_genome(region_descriptions_path: str | os.PathLike,
                  image_data_path: str | os.PathLike | None = None) -> list[Record]:
  """Visual Genome region descriptions: one REG and one REC record per region. With `image_data.json`
  the image folder and size come from it (and boxes are checked against the size); without it every
  image is assumed in VG_100K."""
  images = _read_json(region_descriptions_path, list,
                      "a JSON list of images with 'regions' (Visual Genome region_descriptions.json)")
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
      common = dict(task_type="region_level", image=f"{info['folder']}/{image_id}.jpg", expression=phrase,
                    boxes=[box], width=info["width"], height=info["height"], source="visual_genome",
                    id=str(region.get("region_id", "")))
      out.add(Record(task="reg", answers=[phrase], **common))
      out.add(Record(task="rec", **common))
  return out.finish()


ADAPTERS: dict[str, Callable[..., list[Record]]] = {
    "coco_karpathy": coco_karpathy,
    "vqa_v2": vqa_v2,
    "aokvqa": aokvqa,
    "textcaps": textcaps,
    "refcoco": refcoco,
    "visual_genome": visual_genome,
}


def convert_to_jsonl(name: str, out_path: str | os.PathLike, **kwargs: Any) -> int:
  """Runs the adapter `name` with `kwargs` and writes its records as JSONL; returns how many. Refuses to
  write an empty file, which the record loader would reject later, far from the cause."""
  if name not in ADAPTERS:
    raise ValueError(f"unknown adapter {name!r}; expected one of {sorted(ADAPTERS)}")
  records = ADAPTERS[name](**kwargs)
  if not records:
    raise ValueError(f"adapter {name!r} with {kwargs} produced no valid record; nothing written to {out_path}")
  write_jsonl(records, out_path)
  return len(records)
