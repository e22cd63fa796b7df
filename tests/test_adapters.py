"""Dataset adapters and the TFDS reader on tiny fixtures written here in the datasets' real formats.

Every fixture holds one bad entry where the real data can have one (an empty caption, a zero-size box, a
region outside its image), so the tests check both the exact records and the skip counts.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lion_jax.data import adapters
from lion_jax.data.adapters import (
  ADAPTERS,
  aokvqa,
  coco_karpathy,
  convert_to_jsonl,
  load_plain_pickle,
  refcoco,
  textcaps,
  visual_genome,
  vqa_v2,
)
from lion_jax.data.records import Record, load_records
from lion_jax.data.tfds_source import load_tfds_records


def write_json(path: Path, data: Any) -> Path:
  path.write_text(json.dumps(data), encoding="utf-8")
  return path


def skip_summary(caplog: pytest.LogCaptureFixture) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.name == adapters.__name__ and r.levelno == logging.WARNING]


# --- COCO Karpathy ---------------------------------------------------------------------------------------

KARPATHY = {
  "dataset": "coco",
  "images": [
    {
      "filepath": "train2014",
      "filename": "COCO_train2014_000000000009.jpg",
      "split": "train",
      "cocoid": 9,
      "imgid": 0,
      "sentences": [{"raw": "A plate of food. ", "tokens": ["a"]}, {"raw": "Food on a table."}],
    },
    {
      "filepath": "val2014",
      "filename": "COCO_val2014_000000000042.jpg",
      "split": "restval",
      "cocoid": 42,
      "imgid": 1,
      "sentences": [{"raw": "A dog on a couch."}],
    },
    {
      "filepath": "val2014",
      "filename": "COCO_val2014_000000000073.jpg",
      "split": "val",
      "cocoid": 73,
      "imgid": 2,
      "sentences": [{"raw": "A motorbike."}],
    },
    {
      "filepath": "train2014",
      "filename": "COCO_train2014_000000000025.jpg",
      "split": "train",
      "cocoid": 25,
      "imgid": 3,
      "sentences": [{"raw": "   "}],
    },
  ],
}


def test_coco_karpathy_train_includes_restval(tmp_path, caplog):
  path = write_json(tmp_path / "dataset_coco.json", KARPATHY)
  records = coco_karpathy(path)
  assert records == [
    Record(
      "image_level",
      "caption",
      image="train2014/COCO_train2014_000000000009.jpg",
      answers=["A plate of food.", "Food on a table."],
      source="coco",
      id="9",
    ),
    Record(
      "image_level",
      "caption",
      image="val2014/COCO_val2014_000000000042.jpg",
      answers=["A dog on a couch."],
      source="coco",
      id="42",
    ),
  ]
  assert len(skip_summary(caplog)) == 1 and "empty_answer: 1" in skip_summary(caplog)[0]
  assert [r.id for r in coco_karpathy(path, split="val")] == ["73"]


def test_coco_karpathy_file_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.json"):
    coco_karpathy(tmp_path / "missing.json")
  (tmp_path / "broken.json").write_text('{"images": [', encoding="utf-8")
  with pytest.raises(ValueError, match="broken.json: not valid JSON"):
    coco_karpathy(tmp_path / "broken.json")
  write_json(tmp_path / "list.json", KARPATHY["images"])
  with pytest.raises(ValueError, match=r"list.json: expected a JSON object with 'images' \(Karpathy"):
    coco_karpathy(tmp_path / "list.json")
  with pytest.raises(ValueError, match="unknown Karpathy split"):
    coco_karpathy(write_json(tmp_path / "ok.json", KARPATHY), split="minival")


# --- VQAv2 / OK-VQA --------------------------------------------------------------------------------------


def vqa_files(tmp_path: Path, data_subtype: str | None) -> tuple[Path, Path]:
  questions = {
    "info": {},
    "task_type": "Open-Ended",
    "data_type": "mscoco",
    "license": {},
    "questions": [
      {"image_id": 9, "question": "What is on the plate?", "question_id": 90},
      {"image_id": 42, "question": "Is the dog asleep?", "question_id": 420},
      {"image_id": 73, "question": "What color is the bike?", "question_id": 730},
    ],
  }
  if data_subtype:
    questions["data_subtype"] = data_subtype
  ten = lambda *answers: [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]
  annotations = {
    "annotations": [
      {
        "question_id": 90,
        "image_id": 9,
        "question_type": "what",
        "answer_type": "other",
        "multiple_choice_answer": "food",
        "answers": ten(*["food"] * 7, "pasta", "pasta", "meal"),
      },
      {
        "question_id": 420,
        "image_id": 42,
        "question_type": "is the",
        "answer_type": "yes/no",
        "multiple_choice_answer": "yes",
        "answers": ten(*["yes"] * 9, "no"),
      },
    ]
  }
  return write_json(tmp_path / "questions.json", questions), write_json(tmp_path / "annotations.json", annotations)


def test_vqa_v2(tmp_path, caplog):
  questions, annotations = vqa_files(tmp_path, "train2014")
  records = vqa_v2(questions, annotations)
  assert records == [
    Record(
      "image_level",
      "vqa",
      image="train2014/COCO_train2014_000000000009.jpg",
      question="What is on the plate?",
      answers=["food"] * 7 + ["pasta", "pasta", "meal"],
      source="vqav2",
      id="90",
    ),
    Record(
      "image_level",
      "vqa",
      image="train2014/COCO_train2014_000000000042.jpg",
      question="Is the dog asleep?",
      answers=["yes"] * 9 + ["no"],
      source="vqav2",
      id="420",
    ),
  ]
  assert "no_annotation: 1" in skip_summary(caplog)[0]


def test_okvqa_takes_the_subtype_from_image_dir(tmp_path):
  questions, annotations = vqa_files(tmp_path, None)
  records = vqa_v2(questions, annotations, image_dir="val2014", source="okvqa")
  assert [r.image for r in records] == [
    "val2014/COCO_val2014_000000000009.jpg",
    "val2014/COCO_val2014_000000000042.jpg",
  ]
  assert {r.source for r in records} == {"okvqa"}


def test_vqa_v2_wrong_structure(tmp_path):
  questions, _ = vqa_files(tmp_path, "train2014")
  with pytest.raises(ValueError, match=r"questions.json: expected a JSON object with 'annotations'"):
    vqa_v2(questions, questions)


# --- A-OKVQA ---------------------------------------------------------------------------------------------


def test_aokvqa(tmp_path, caplog):
  path = write_json(
    tmp_path / "aokvqa_v1p0_train.json",
    [
      {
        "split": "train",
        "image_id": 9,
        "question_id": "22MexNkBi7bQgfZoMx5Gvs",
        "question": "What is eaten here?",
        "choices": ["pasta", "soup", "cake", "bread"],
        "correct_choice_idx": 0,
        "direct_answers": ["pasta"] * 8 + ["noodles", "food"],
        "difficult_direct_answer": False,
        "rationales": ["It is on the plate."],
      },
      {
        "split": "train",
        "image_id": 581857,
        "question_id": "2fF9Bh4W7HrAJvDBqmsWGd",
        "question": "Why?",
        "choices": ["a", "b", "c", "d"],
        "correct_choice_idx": 1,
        "direct_answers": [],
      },
    ],
  )
  assert aokvqa(path) == [
    Record(
      "image_level",
      "vqa",
      image="train2017/000000000009.jpg",
      question="What is eaten here?",
      answers=["pasta"] * 8 + ["noodles", "food"],
      source="aokvqa",
      id="22MexNkBi7bQgfZoMx5Gvs",
    )
  ]
  assert "empty_answer: 1" in skip_summary(caplog)[0]
  with pytest.raises(ValueError, match="expected a JSON list"):
    aokvqa(write_json(tmp_path / "object.json", {"questions": []}))


# --- TextCaps --------------------------------------------------------------------------------------------


def test_textcaps_groups_captions_per_image(tmp_path, caplog):
  refs = ["A sign that says OPEN.", "An open sign."]
  path = write_json(
    tmp_path / "TextCaps_0.1_train.json",
    {
      "dataset_type": "train",
      "dataset_name": "textcaps",
      "data": [
        {
          "image_id": "011e7e629fb9ae7b",
          "image_classes": ["Sign"],
          "image_width": 1024,
          "image_height": 768,
          "image_path": "train/011e7e629fb9ae7b.jpg",
          "caption_id": 1,
          "caption_str": refs[0],
          "reference_strs": refs,
          "set_name": "train",
        },
        {
          "image_id": "011e7e629fb9ae7b",
          "image_width": 1024,
          "image_height": 768,
          "image_path": "train/011e7e629fb9ae7b.jpg",
          "caption_id": 2,
          "caption_str": refs[1],
          "reference_strs": refs,
          "set_name": "train",
        },
        {"image_id": "0a1b2c3d4e5f6a7b", "caption_id": 3, "caption_str": "A bottle of Coke."},
        {"image_id": "ffffffffffffffff", "caption_id": 4, "caption_str": ""},
      ],
    },
  )
  assert textcaps(path) == [
    Record(
      "image_level",
      "caption",
      image="train/011e7e629fb9ae7b.jpg",
      answers=refs,
      width=1024,
      height=768,
      source="textcaps",
      id="011e7e629fb9ae7b",
    ),
    Record(
      "image_level",
      "caption",
      image="train_images/0a1b2c3d4e5f6a7b.jpg",
      answers=["A bottle of Coke."],
      source="textcaps",
      id="0a1b2c3d4e5f6a7b",
    ),
  ]
  assert "empty_answer: 1" in skip_summary(caplog)[0]


# --- RefCOCO ---------------------------------------------------------------------------------------------

INSTANCES = {
  "info": {},
  "categories": [{"id": 1, "name": "person"}],
  "images": [
    {"id": 9, "file_name": "COCO_train2014_000000000009.jpg", "width": 640, "height": 480},
    {"id": 25, "file_name": "COCO_train2014_000000000025.jpg", "width": 500, "height": 375},
  ],
  "annotations": [
    {"id": 101, "image_id": 9, "bbox": [10.5, 20.0, 30.0, 40.0], "category_id": 1, "area": 1200.0, "iscrowd": 0},
    {"id": 102, "image_id": 9, "bbox": [5.0, 5.0, 0.0, 10.0], "category_id": 1, "area": 0.0, "iscrowd": 0},
    {"id": 103, "image_id": 25, "bbox": [0.0, 0.0, 500.0, 375.0], "category_id": 1, "area": 1.0, "iscrowd": 0},
  ],
}


def ref(ref_id: int, ann_id: int, image_id: int, split: str, *sentences: str) -> dict[str, Any]:
  return {
    "ref_id": ref_id,
    "ann_id": ann_id,
    "image_id": image_id,
    "split": split,
    "category_id": 1,
    "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
    "sent_ids": [],
    "sentences": [
      {"raw": s, "sent": s.lower(), "tokens": s.lower().split(), "sent_id": 10 * ref_id + i}
      for i, s in enumerate(sentences)
    ],
  }


def refcoco_files(tmp_path: Path) -> tuple[Path, Path]:
  refs = [
    ref(0, 101, 9, "train", "Man on the left", "left guy"),
    ref(1, 102, 9, "train", "empty box"),
    ref(2, 103, 25, "val", "whole picture"),
    ref(3, 999, 9, "train", "unknown annotation"),
  ]
  refs_path = tmp_path / "refs(unc).p"
  refs_path.write_bytes(pickle.dumps(refs, protocol=2))  # refer's files come from Python 2
  return refs_path, write_json(tmp_path / "instances.json", INSTANCES)


def test_refcoco_rec_and_reg_per_sentence(tmp_path, caplog):
  refs_path, instances_path = refcoco_files(tmp_path)
  common = dict(
    task_type="region_level",
    image="train2014/COCO_train2014_000000000009.jpg",
    boxes=[[10.5, 20.0, 40.5, 60.0]],
    width=640,
    height=480,
    source="refcoco",
  )
  assert refcoco(refs_path, instances_path) == [
    Record(task="rec", expression="Man on the left", id="0_0", **common),
    Record(task="reg", expression="Man on the left", answers=["Man on the left"], id="0_0", **common),
    Record(task="rec", expression="left guy", id="0_1", **common),
    Record(task="reg", expression="left guy", answers=["left guy"], id="0_1", **common),
  ]
  summary = skip_summary(caplog)
  assert len(summary) == 1 and "empty_box: 1" in summary[0] and "unknown_annotation: 1" in summary[0]
  val = refcoco(refs_path, instances_path, split="val", dataset="refcoco+")
  assert [(r.task, r.boxes, r.source, r.id) for r in val] == [
    ("rec", [[0.0, 0.0, 500.0, 375.0]], "refcoco+", "2_20"),
    ("reg", [[0.0, 0.0, 500.0, 375.0]], "refcoco+", "2_20"),
  ]


@pytest.mark.parametrize(
  "payload, global_name",
  [
    (collections.OrderedDict(a=1), "collections.OrderedDict"),
    (os.path.join, "posixpath.join"),
  ],
)
def test_refs_pickle_refuses_every_global(tmp_path, payload, global_name):
  refs_path = tmp_path / "refs(google).p"
  refs_path.write_bytes(pickle.dumps([{"ref_id": 0, "payload": payload}]))
  with pytest.raises(pickle.UnpicklingError, match=rf"refs\(google\)\.p: refusing to load the global {global_name}"):
    load_plain_pickle(refs_path)
  with pytest.raises(pickle.UnpicklingError, match=r"refs\(google\)\.p"):
    refcoco(refs_path, write_json(tmp_path / "instances.json", INSTANCES))


def test_refs_pickle_reads_python2_utf8_strings(tmp_path):
  path = tmp_path / "refs(umd).p"
  # What Python 2 writes for [{"raw": "café"}] with a UTF-8 byte string: SHORT_BINSTRING, not unicode.
  raw = "café".encode()
  path.write_bytes(b"\x80\x02]q\x00}q\x01U\x03rawq\x02U" + bytes([len(raw)]) + raw + b"q\x03sa.")
  assert load_plain_pickle(path) == [{"raw": "café"}]


# --- Visual Genome ---------------------------------------------------------------------------------------


def vg_files(tmp_path: Path) -> tuple[Path, Path]:
  regions = [
    {
      "id": 1,
      "regions": [
        {"region_id": 11, "image_id": 1, "phrase": "a red car ", "x": 10, "y": 20, "width": 30, "height": 40},
        {"region_id": 12, "image_id": 1, "phrase": "nothing", "x": 5, "y": 5, "width": 0, "height": 9},
      ],
    },
    {
      "id": 2,
      "regions": [
        {"region_id": 21, "image_id": 2, "phrase": "the sky", "x": 0, "y": 0, "width": 100, "height": 50},
        {"region_id": 22, "image_id": 2, "phrase": "too wide", "x": 790, "y": 0, "width": 50, "height": 10},
      ],
    },
  ]
  image_data = [
    {
      "image_id": 1,
      "url": "https://cs.stanford.edu/people/rak248/VG_100K_2/1.jpg",
      "width": 800,
      "height": 600,
      "coco_id": None,
      "flickr_id": None,
    },
    {
      "image_id": 2,
      "url": "https://cs.stanford.edu/people/rak248/VG_100K/2.jpg",
      "width": 800,
      "height": 600,
      "coco_id": None,
      "flickr_id": None,
    },
  ]
  return write_json(tmp_path / "region_descriptions.json", regions), write_json(
    tmp_path / "image_data.json", image_data
  )


def test_visual_genome_with_image_data(tmp_path, caplog):
  regions_path, image_data_path = vg_files(tmp_path)
  records = visual_genome(regions_path, image_data_path)
  car = dict(
    task_type="region_level",
    image="VG_100K_2/1.jpg",
    expression="a red car",
    boxes=[[10, 20, 40, 60]],
    width=800,
    height=600,
    source="visual_genome",
    id="11",
  )
  sky = dict(car, image="VG_100K/2.jpg", expression="the sky", boxes=[[0, 0, 100, 50]], id="21")
  assert records == [
    Record(task="reg", answers=["a red car"], **car),
    Record(task="rec", **car),
    Record(task="reg", answers=["the sky"], **sky),
    Record(task="rec", **sky),
  ]
  summary = skip_summary(caplog)
  assert len(summary) == 1 and "empty_box: 1" in summary[0] and "box_outside_image: 2" in summary[0]


def test_visual_genome_without_image_data(tmp_path):
  regions_path, _ = vg_files(tmp_path)
  records = visual_genome(regions_path)
  assert [(r.task, r.image, r.id, r.width) for r in records] == [
    ("reg", "VG_100K/1.jpg", "11", None),
    ("rec", "VG_100K/1.jpg", "11", None),
    ("reg", "VG_100K/2.jpg", "21", None),
    ("rec", "VG_100K/2.jpg", "21", None),
    ("reg", "VG_100K/2.jpg", "22", None),
    ("rec", "VG_100K/2.jpg", "22", None),
  ]
  with pytest.raises(ValueError, match=r"image_data.json: expected a JSON list of images \(Visual Genome"):
    visual_genome(regions_path, write_json(tmp_path / "image_data.json", {"images": []}))


# --- convert_to_jsonl ------------------------------------------------------------------------------------


def test_convert_to_jsonl_round_trips_through_the_loader(tmp_path):
  refs_path, instances_path = refcoco_files(tmp_path)
  out = tmp_path / "out" / "refcoco.jsonl"
  count = convert_to_jsonl("refcoco", out, refs_path=refs_path, instances_path=instances_path)
  loaded, report = load_records(out)
  assert count == 4 and report.valid == 4 and not report.invalid
  assert loaded == refcoco(refs_path, instances_path)
  assert ADAPTERS == {
    "coco_karpathy": coco_karpathy,
    "vqa_v2": vqa_v2,
    "aokvqa": aokvqa,
    "textcaps": textcaps,
    "refcoco": refcoco,
    "visual_genome": visual_genome,
  }
  with pytest.raises(ValueError, match="unknown adapter 'coco'"):
    convert_to_jsonl("coco", out)
  with pytest.raises(ValueError, match="produced no valid record"):
    convert_to_jsonl("refcoco", out, refs_path=refs_path, instances_path=instances_path, split="testA")


# --- TFDS array_record -----------------------------------------------------------------------------------


def jpeg_bytes(width: int, height: int) -> bytes:
  buffer = io.BytesIO()
  Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="JPEG")
  return buffer.getvalue()


TOY_EXAMPLES = [
  {
    "jpeg": jpeg_bytes(32, 24),
    "caption": "a red square",
    "captions": ["a red square", "red"],
    "id": 7,
    "box": np.array([1, 2, 30, 20], np.float32),
  },
  {
    "jpeg": jpeg_bytes(16, 40),
    "caption": "a tall red box",
    "captions": ["a tall red box"],
    "id": 8,
    "box": np.array([0, 0, 16, 40], np.float32),
  },
  {
    "jpeg": jpeg_bytes(8, 8),
    "caption": "no captions",
    "captions": [],
    "id": 9,
    "box": np.array([4, 4, 4, 8], np.float32),
  },
]


class LionAdaptersToyCaptions(tfds.core.GeneratorBasedBuilder):
  """Images as raw JPEG bytes, since tfds.features.Image needs TensorFlow to encode."""

  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> None:
    """No checksums file to find: tfds' lookup for a builder inside a package imports
    `importlib_resources`, which tensorflow-datasets 4.9.10 does not install."""
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      features=tfds.features.FeaturesDict(
        {
          "jpeg": tfds.features.Tensor(shape=(), dtype=np.object_),
          "caption": tfds.features.Text(),
          "captions": tfds.features.Sequence(tfds.features.Text()),
          "id": np.int64,
          "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
        }
      ),
    )

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for example in TOY_EXAMPLES:
      yield example["id"], example


@pytest.fixture(scope="module")
def toy_builder_dir(tmp_path_factory) -> Path:
  builder = LionAdaptersToyCaptions(data_dir=tmp_path_factory.mktemp("tfds"), file_format="array_record")
  builder.download_and_prepare()
  return Path(builder.data_dir)


def test_load_tfds_records(toy_builder_dir, caplog):
  records = load_tfds_records(
    toy_builder_dir,
    "train",
    fields={"image": "jpeg", "answers": "captions", "id": "id"},
    task_type="image_level",
    task="caption",
    source="toy",
  )
  assert sorted((r.id, r.answers, r.task, r.task_type, r.source, r.image) for r in records) == [
    ("7", ["a red square", "red"], "caption", "image_level", "toy", ""),
    ("8", ["a tall red box"], "caption", "image_level", "toy", ""),
  ]
  assert {r.id: r.image_bytes for r in records} == {"7": TOY_EXAMPLES[0]["jpeg"], "8": TOY_EXAMPLES[1]["jpeg"]}
  assert any("empty_answer: 1" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)

  single = load_tfds_records(
    toy_builder_dir,
    "train",
    fields={"image": "jpeg", "answers": "caption", "question": "caption", "id": "id"},
    task_type="image_level",
    task="vqa",
    source="toy",
  )
  assert sorted((r.id, r.question, r.answers) for r in single) == [
    ("7", "a red square", ["a red square"]),
    ("8", "a tall red box", ["a tall red box"]),
    ("9", "no captions", ["no captions"]),
  ]

  regions = load_tfds_records(
    toy_builder_dir,
    "train",
    fields={"image": "jpeg", "expression": "caption", "answers": "caption", "boxes": "box", "id": "id"},
    task_type="region_level",
    task="reg",
    source="toy",
  )
  assert sorted((r.id, r.expression, r.boxes) for r in regions) == [  # id 9 has a zero-width box
    ("7", "a red square", [[1.0, 2.0, 30.0, 20.0]]),
    ("8", "a tall red box", [[0.0, 0.0, 16.0, 40.0]]),
  ]


def test_load_tfds_records_errors(toy_builder_dir, tmp_path):
  kwargs = dict(task_type="image_level", task="caption", source="toy")
  with pytest.raises(ValueError, match=rf"{toy_builder_dir}: no feature 'pixels'; the dataset has"):
    load_tfds_records(toy_builder_dir, "train", fields={"image": "pixels", "answers": "captions"}, **kwargs)
  with pytest.raises(ValueError, match="no split 'validation'"):
    load_tfds_records(toy_builder_dir, "validation", fields={"image": "jpeg", "answers": "captions"}, **kwargs)
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no dataset_info.json"):
    load_tfds_records(tmp_path, "train", fields={"image": "jpeg"}, **kwargs)
  with pytest.raises(ValueError, match="cannot map features to record fields"):
    load_tfds_records(toy_builder_dir, "train", fields={"picture": "jpeg"}, **kwargs)


def test_a_tfds_source_in_the_data_config_feeds_the_pipeline(toy_builder_dir, tmp_path):
  """`format: tfds` with a builder name and data_dir (newest version found), read without TensorFlow."""
  from lion_jax import run_config
  from lion_jax.data import pipeline, synthetic

  synthetic.generate(tmp_path / "vocab", num_images=4, seed=0, image_size=32)  # only for its tokenizers
  config = pipeline.default_config()
  toy = run_config.source(fmt="tfds")
  toy["tfds"].update(
    name=toy_builder_dir.parent.name,
    data_dir=str(toy_builder_dir.parents[1]),
    split="train",
    fields="image=jpeg, answers=captions, id=id",
    task_type="image_level",
    task="caption",
  )
  config.sources = {"toy": toy}
  config.mixture = {"toy": 1.0}
  config.update(
    t5_vocab=str(tmp_path / "vocab" / "spiece.model"),
    bert_vocab=str(tmp_path / "vocab" / "bert_vocab.txt"),
    image_size=32,
    augment=False,
  )
  mixture = pipeline.load_mixture(config)
  assert sorted((r.id, r.answers) for r in mixture.sources[0].records) == [
    ("7", ["a red square", "red"]),
    ("8", ["a tall red box"]),
  ]
  batch = next(pipeline.make_iterator(config, batch_size=4, mixture=mixture))
  assert batch["image"].shape == (4, 32, 32, 3) and batch["skipped"].sum() == 0
  config.sources.toy.tfds.fields = "image"
  with pytest.raises(ValueError, match=r"data.sources.toy.tfds.fields='image': expected record_field=feature"):
    pipeline.load_mixture(config)
  config.sources.toy.tfds.name = "no_such_dataset"
  with pytest.raises(FileNotFoundError, match="no prepared version of TFDS dataset 'no_such_dataset'"):
    pipeline.load_mixture(config)
