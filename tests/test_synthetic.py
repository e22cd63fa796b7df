"""The embedded synthetic dataset: determinism, boxes that match the drawn pixels, valid records for
every task, disjoint splits, and tokenizers that cover every instruction the pipeline builds."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm
from PIL import Image

from lion_jax.data import synthetic
from lion_jax.data.records import Record, load_records
from lion_jax.data.templates import REC_TEMPLATES, build_text
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer

NUM_IMAGES = 40
IMAGE_SIZE = 224
T5_UNK_ID = 2


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
  """Seed 0 twice (in different directories) and seed 1 once."""
  out = {}
  for name, seed in (("first", 0), ("again", 0), ("other_seed", 1)):
    root = tmp_path_factory.mktemp(name)
    out[name] = root, synthetic.generate(root, num_images=NUM_IMAGES, seed=seed, image_size=IMAGE_SIZE)
  return out


@pytest.fixture(scope="module")
def dataset(datasets) -> tuple[Path, dict]:
  return datasets["first"]


def _records(root: Path, split: str) -> list[Record]:
  records, report = load_records(root / f"{split}.jsonl", strict=True)
  assert not report.invalid
  return records


def _all_records(root: Path) -> list[Record]:
  return _records(root, "train") + _records(root, "val")


def _image_bytes(root: Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted((root / "images").glob("*.png"))}


def _pieces(model_file: Path) -> list[tuple[str, float]]:
  sp = spm.SentencePieceProcessor(model_file=str(model_file))
  return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def test_same_seed_gives_identical_files(datasets):
  (first, _), (again, _) = datasets["first"], datasets["again"]
  for name in ("train.jsonl", "val.jsonl", "bert_vocab.txt", "spiece.vocab", "dataset.json"):
    assert (first / name).read_bytes() == (again / name).read_bytes(), name
  assert _image_bytes(first) == _image_bytes(again)
  assert len(_image_bytes(first)) == NUM_IMAGES
  # spiece.model also records its own path (the trainer's model_prefix), so compare its pieces.
  assert _pieces(first / "spiece.model") == _pieces(again / "spiece.model")


def test_different_seed_gives_different_data(datasets):
  (first, _), (other, _) = datasets["first"], datasets["other_seed"]
  assert (first / "train.jsonl").read_bytes() != (other / "train.jsonl").read_bytes()
  first_images, other_images = _image_bytes(first), _image_bytes(other)
  assert all(first_images[name] != other_images[name] for name in first_images)


def test_image_depends_only_on_seed_and_index(dataset, tmp_path):
  root, _ = dataset
  synthetic.generate(tmp_path, num_images=3, seed=0, image_size=IMAGE_SIZE)
  first_three = dict(list(_image_bytes(root).items())[:3])
  assert _image_bytes(tmp_path) == first_three


def _mask_box(image: np.ndarray, color: tuple[int, int, int], box: list[float]) -> tuple[int, ...]:
  """The tight box of `color`'s pixels in `box` grown by one pixel (the gap keeps neighbours out)."""
  x1, y1, x2, y2 = (int(v) for v in box)
  left, top = max(x1 - 1, 0), max(y1 - 1, 0)
  ys, xs = np.nonzero((image[top : y2 + 1, left : x2 + 1] == color).all(-1))
  return left + xs.min(), top + ys.min(), left + xs.max() + 1, top + ys.max() + 1


def test_boxes_match_drawn_pixels(dataset):
  root, _ = dataset
  rec = [r for r in _all_records(root) if r.task == "rec"]
  assert rec
  for record in rec:
    _, color, kind = record.expression.split()
    image = np.asarray(Image.open(root / record.image).convert("RGB"))
    assert image.shape == (record.height, record.width, 3) == (IMAGE_SIZE, IMAGE_SIZE, 3)
    box = record.boxes[0]
    assert 0 <= box[0] < box[2] <= IMAGE_SIZE and 0 <= box[1] < box[3] <= IMAGE_SIZE
    centre = image[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
    assert tuple(centre) == synthetic.COLORS[color], record.id
    assert _mask_box(image, synthetic.COLORS[color], box) == tuple(int(v) for v in box), record.id


def test_every_drawn_shape_fills_its_box_and_shapes_do_not_overlap():
  for index in range(60):
    scene = synthetic.sample_scene(np.random.default_rng([7, index]), IMAGE_SIZE)
    image = np.asarray(synthetic.render(scene, IMAGE_SIZE))
    assert 1 <= len(scene.shapes) <= synthetic.MAX_SHAPES
    for i, shape in enumerate(scene.shapes):
      assert _mask_box(image, synthetic.COLORS[shape.color], shape.box) == shape.box
      for other in scene.shapes[i + 1 :]:
        a, b = shape.box, other.box
        assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_records_are_valid_and_complete(dataset):
  root, summary = dataset
  records = _all_records(root)
  assert len({r.id for r in records}) == len(records)
  by_image = collections.defaultdict(list)
  for record in records:
    assert record.source == "synthetic" and record.width == record.height == IMAGE_SIZE
    assert record.tags == sorted(record.tags) and record.tags
    assert set(record.tags) <= set(synthetic.SHAPES) | set(synthetic.COLORS)
    by_image[record.image].append(record)
  for image_records in by_image.values():
    grounded = next(r for r in image_records if r.task == "grounded_caption")
    assert all(r.tags == grounded.tags for r in image_records)
    rec_expressions = [r.expression for r in image_records if r.task == "rec"]
    assert len(rec_expressions) == len(set(rec_expressions))  # each names one box
    assert sorted(rec_expressions) == sorted(r.expression for r in image_records if r.task == "reg")
    caption = next(r for r in image_records if r.task == "caption")
    assert 1 <= len(caption.answers) <= 3
  tasks = collections.Counter(r.task for r in records)
  assert set(tasks) == {"caption", "vqa", "rec", "reg", "grounded_caption"}
  assert all(
    r.task_type == ("region_level" if r.task in ("rec", "reg", "grounded_caption") else "image_level") for r in records
  )
  existence = collections.Counter(r.answers[0] for r in records if r.question.startswith("Is there"))
  assert existence["yes"] == existence["no"] == NUM_IMAGES
  for split in ("train", "val"):
    assert summary["splits"][split]["records"] == len(_records(root, split))
    assert summary["splits"][split]["tasks"] == dict(
      sorted(collections.Counter(r.task for r in _records(root, split)).items())
    )


def test_val_holds_the_last_images_only(dataset):
  root, summary = dataset
  train_images = {r.image for r in _records(root, "train")}
  val_images = {r.image for r in _records(root, "val")}
  assert not train_images & val_images
  num_val = round(NUM_IMAGES * 0.1)
  assert summary["splits"]["val"]["images"] == len(val_images) == num_val
  assert val_images == {f"images/{i:06d}.png" for i in range(NUM_IMAGES - num_val, NUM_IMAGES)}


def test_tokenizers_cover_every_built_instruction(dataset):
  root, summary = dataset
  t5 = T5Tokenizer(root / "spiece.model")
  bert = BertTokenizer(root / "bert_vocab.txt")
  bert_unk_id = (root / "bert_vocab.txt").read_text(encoding="utf-8").splitlines().index("[UNK]")
  coordinates = synthetic.coordinate_pieces(IMAGE_SIZE)
  assert summary["t5_vocab_size"] == t5.vocab_size
  assert len(coordinates) + 100 + 150 <= t5.vocab_size <= len(coordinates) + 100 + synthetic.T5_VOCAB_SIZE
  assert summary["t5_sentinel_id"] == t5.sentinel_id(0) == t5.vocab_size - 1
  assert summary["bert_vocab_size"] == bert.vocab_size == bert.dec_id + 1

  rng = np.random.default_rng(0)
  for record in _all_records(root):
    text = build_text(record, rng, record.width, record.height)
    for part in (text.t5_input, text.target):
      assert T5_UNK_ID not in t5.encode(part), part
    assert t5.encode(text.t5_input).count(t5.sentinel_id(0)) == 1
    for part in (text.instruction, text.target):  # no sentinel: the text decodes back exactly
      assert t5.decode(t5.encode(part)) == part
    assert bert_unk_id not in bert.encode(text.instruction), text.instruction

  # Every coordinate is one piece, and whole words are pieces (BPE), so box text and captions are short.
  sp = spm.SentencePieceProcessor(model_file=str(root / "spiece.model"))
  for value in coordinates:
    assert sp.encode(f"[{value},", out_type=str)[-2:] == [value, ","], value
  assert sp.encode("which is left of", out_type=str) == ["▁which", "▁is", "▁left", "▁of"]
  box = "Answer: [0.125,0.250,0.500,0.750]"
  assert len(t5.encode(box)) == 12 and t5.decode(t5.encode(box)) == box
  # `<image>` (REC/REG templates) is no special token: it is learnt from the templates as pieces.
  assert sp.encode("<image>", out_type=str) == ["▁<", "image", ">"]
  instruction = REC_TEMPLATES[0].format(expr="the red circle")
  assert T5_UNK_ID not in t5.encode(instruction) and t5.decode(t5.encode(instruction)) == instruction


def test_cli_writes_the_dataset(tmp_path, capsys):
  out = tmp_path / "cli"
  assert (
    synthetic.main(
      ["--out", str(out), "--num-images", "6", "--seed", "3", "--image-size", "96", "--val-fraction", "0.5"]
    )
    == 0
  )
  assert "wrote" in capsys.readouterr().out
  summary = json.loads((out / "dataset.json").read_text())
  assert (summary["seed"], summary["image_size"], summary["num_images"]) == (3, 96, 6)
  assert summary["splits"]["train"]["images"] == summary["splits"]["val"]["images"] == 3
  for name in summary["files"].values():
    assert (out / name).exists(), name
  assert Image.open(out / "images" / "000000.png").size == (96, 96)
  assert synthetic.main(["--out", str(out), "--num-images", "4", "--val-fraction", "1.0"]) == 1


def test_text_lengths_hold_every_text(dataset):
  """The demo's limits (synthetic.TEXT_LENGTHS) cut nothing: every template with every record."""
  root, _ = dataset
  t5, bert = T5Tokenizer(root / "spiece.model"), BertTokenizer(root / "bert_vocab.txt")
  limits = synthetic.TEXT_LENGTHS
  longest = collections.Counter()
  for record in _all_records(root):
    for seed in range(12):  # enough draws to meet every template of the task
      text = build_text(record, np.random.default_rng(seed), record.width, record.height)
      longest["input"] = max(longest["input"], len(t5.encode(text.t5_input)))
      longest["qformer"] = max(longest["qformer"], len(bert.encode(text.instruction)))
  assert longest["input"] <= limits["max_input_len"], longest
  assert longest["qformer"] <= limits["max_qformer_len"], longest
  # Grounded captions (a box per shape) are the one text over the target limit: the demo leaves them out.
  targets = [
    len(t5.encode(build_text(r, None, r.width, r.height).target))
    for r in _all_records(root)
    if r.task != "grounded_caption"
  ]
  assert max(targets) <= limits["max_target_len"], max(targets)


def test_noisy_tags_miss_and_invent_like_a_tagger_but_never_vanish():
  """tag_noise: each true tag missing with probability p, each absent one listed with p / 3, never none."""
  rng = np.random.default_rng(0)
  scenes = [synthetic.sample_scene(rng, 48, 3, (0.2, 0.45)) for _ in range(400)]
  exact = [synthetic.tags_of(s.shapes) for s in scenes]
  assert exact == [sorted({x.kind for x in s.shapes} | {x.color for x in s.shapes}) for s in scenes]
  noisy = [synthetic.tags_of(s.shapes, np.random.default_rng(i), 0.3) for i, s in enumerate(scenes)]
  assert noisy == [synthetic.tags_of(s.shapes, np.random.default_rng(i), 0.3) for i, s in enumerate(scenes)]
  assert all(tags and tags == sorted(tags) for tags in noisy)
  true_count = sum(len(t) for t in exact)
  missing = sum(len(set(t) - set(n)) for t, n in zip(exact, noisy)) / true_count
  absent = sum(9 - len(t) for t in exact)
  invented = sum(len(set(n) - set(t)) for t, n in zip(exact, noisy)) / absent
  assert 0.25 < missing < 0.35 and 0.06 < invented < 0.14, (missing, invented)
