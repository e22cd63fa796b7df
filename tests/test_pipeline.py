"""The Grain pipeline on the embedded synthetic dataset: shapes, mixing, resumption, sharding, bad input,
augmentation that keeps the text true, counted truncation."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lion_jax.data import contract, images, pipeline, synthetic, templates
from lion_jax.data.inspect import main as inspect_main
from lion_jax.data.records import load_records, write_jsonl
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(root, num_images=40, seed=0, image_size=32)
  return root


def data_config(root, **overrides) -> ml_collections.ConfigDict:
  c = pipeline.default_config()
  c.sources = {
    "image": dict(records=str(root / "train.jsonl"), image_root=str(root), task_types=["image_level"]),
    "region": dict(records=str(root / "train.jsonl"), image_root=str(root), task_types=["region_level"]),
  }
  c.mixture = {"image": 1.0, "region": 1.0}
  c.update(
    t5_vocab=str(root / "spiece.model"),
    bert_vocab=str(root / "bert_vocab.txt"),
    image_size=28,
    max_input_len=48,
    max_target_len=24,
    max_qformer_len=32,
    prefetch_batches=2,
  )
  if "mixture" in overrides:  # replace, not merge (ConfigDict.update merges nested dicts)
    c.mixture = ml_collections.ConfigDict(overrides.pop("mixture"))
  c.update(overrides)
  return c


def take(it, n):
  return [next(it) for _ in range(n)]


def preparer_of(config, name):
  source = pipeline.load_source(name, config.sources[name])
  return pipeline.ExamplePreparer(source, 0, config, T5Tokenizer(config.t5_vocab), BertTokenizer(config.bert_vocab))


def test_batches_have_fixed_shapes_and_shifted_targets(dataset):
  config = data_config(dataset)
  it = pipeline.make_iterator(config, batch_size=4)
  for batch in take(it, 3):
    assert {k: (v.shape, v.dtype) for k, v in batch.items() if k in contract.TRAIN_KEYS} == {
      k: ((4,) + shape, np.dtype(dtype)) for k, (shape, dtype) in contract.data_spec(config).items()
    }
    assert batch["image"].shape == (4, 28, 28, 3) and batch["image"].dtype == np.float32
    assert batch["truncated"].shape == (4, len(pipeline.TRUNCATION_LIMITS)) and batch["truncated"].dtype == np.int32
    assert batch["input_ids"].shape == (4, 48) and batch["qformer_ids"].shape == (4, 32)
    assert batch["target_ids"].shape == batch["decoder_input_ids"].shape == (4, 24)
    for k in ("input_ids", "input_mask", "qformer_ids", "decoder_input_ids", "target_ids", "task"):
      assert batch[k].dtype == np.int32, k
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_input_ids"][:, 1:], batch["target_ids"][:, :-1])
    for ids, mask in zip(batch["target_ids"], batch["target_mask"]):
      assert ids[mask.sum() - 1] == 1  # </s> closes every target
  it.close()


def test_homogeneous_batches_hold_one_task_type_and_mix_by_weight(dataset):
  it = pipeline.make_iterator(data_config(dataset, mixture={"image": 3.0, "region": 1.0}), batch_size=4)
  batches = take(it, 200)
  it.close()
  tasks = np.stack([b["task"] for b in batches])
  assert (tasks == tasks[:, :1]).all()
  image_fraction = (tasks[:, 0] == 1).mean()
  assert abs(image_fraction - 0.75) < 0.03
  counters = it.counters()
  assert counters["image"]["seen"] == 4 * int((tasks[:, 0] == 1).sum())


def test_mixed_batches_mix_examples_by_weight(dataset):
  it = pipeline.make_iterator(data_config(dataset, homogeneous_batches=False), batch_size=8)
  tasks = np.concatenate([b["task"] for b in take(it, 100)])
  it.close()
  assert abs((tasks == 1).mean() - 0.5) < 0.03
  assert all(len(set(b)) == 2 for b in tasks.reshape(100, 8))  # every batch holds both task types


@pytest.mark.parametrize("num_workers", [0, 2])
def test_iterator_started_at_a_later_batch_continues_with_identical_batches(dataset, num_workers):
  config = data_config(dataset, num_workers=num_workers)
  it = pipeline.make_iterator(config, batch_size=4)
  take(it, 3)
  expected = take(it, 3)
  it.close()
  resumed = pipeline.make_iterator(config, batch_size=4, first_batch=3)  # how a checkpoint resumes
  for a, b in zip(expected, take(resumed, 3)):
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  resumed.close()


@pytest.mark.parametrize("homogeneous", [True, False])
def test_processes_read_their_rows_of_the_same_global_batches(dataset, homogeneous):
  """The global batch is the same examples on 1, 2 or 4 processes (augmentation included), so a run
  can move to a slice with another number of hosts and continue exactly."""
  config = data_config(dataset, homogeneous_batches=homogeneous)
  whole = take(pipeline.make_iterator(config, batch_size=8), 3)
  for processes in (2, 4):
    rows = 8 // processes
    parts = [take(pipeline.make_iterator(config, batch_size=8, rows=(p * rows, rows)), 3) for p in range(processes)]
    for step, expected in enumerate(whole):
      for k in expected:
        np.testing.assert_array_equal(np.concatenate([part[step][k] for part in parts]), expected[k], err_msg=k)


def test_bad_images_are_skipped_counted_or_raised_under_strict(dataset, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(dataset, broken)
  images = sorted((broken / "images").glob("*.png"))
  images[0].unlink()
  images[1].write_bytes(images[1].read_bytes()[:100])
  config = data_config(broken, mixture={"image": 1.0}, homogeneous_batches=False)
  it = pipeline.make_iterator(config, batch_size=4)
  for _ in range(60):
    next(it)
  counters = it.counters()["image"]
  assert counters["skipped_missing_image"] > 0 and counters["skipped_unreadable_image"] > 0
  strict = pipeline.make_iterator(data_config(broken, mixture={"image": 1.0}, strict=True), batch_size=4)
  with pytest.raises(Exception, match="images/000000.png|images/000001.png"):
    for _ in range(60):
      next(strict)


def test_a_source_without_any_readable_image_fails_fast(dataset, tmp_path):
  empty = tmp_path / "noimages"
  shutil.copytree(dataset, empty, ignore=shutil.ignore_patterns("*.png"))
  it = pipeline.make_iterator(data_config(empty, mixture={"image": 1.0}), batch_size=4)
  with pytest.raises(ValueError, match="consecutive records could not be prepared"):
    next(it)


def test_config_errors_name_what_to_change(dataset):
  with pytest.raises(ValueError, match=r"unknown sources \['vqav2'\]"):
    pipeline.make_iterator(data_config(dataset, mixture={"vqav2": 1.0}), batch_size=4)
  bad = data_config(dataset)
  bad.sources["image"]["task_types"] = ["pixel_level"]
  with pytest.raises(ValueError, match="no record of"):
    pipeline.make_iterator(bad, batch_size=4)


def test_tokenised_text_round_trips(dataset):
  it = pipeline.make_iterator(data_config(dataset, mixture={"region": 1.0}), batch_size=4)
  batch = next(it)
  t5 = T5Tokenizer(dataset / "spiece.model")
  targets = [t5.decode(ids[mask > 0]) for ids, mask in zip(batch["target_ids"], batch["target_mask"])]
  assert (batch["task"] == 0).all()
  for text, ids, mask in zip(targets, batch["target_ids"], batch["target_mask"]):
    assert text and t5.encode(text, max_length=24, truncation_side="right") == ids[mask > 0].tolist()


def test_a_flipped_image_gets_left_and_right_swapped_in_its_target(dataset):
  config = data_config(dataset, max_target_len=128)
  config.sources["image"]["tasks"] = ["caption"]
  preparer = preparer_of(config, "image")
  records, root = preparer.source.records, preparer.source.image_root
  spatial = [i for i, r in enumerate(records) if any(re.search(r"\b(left|right) of\b", a) for a in r.answers)]
  seen = set()
  for seed in range(40):
    i = spatial[seed % len(spatial)]
    rng = np.random.default_rng(seed)
    crop = images.random_resized_crop(images.decode_image(records[i].image_source(root)), copy.deepcopy(rng))
    example = preparer(i, rng)
    # Which of the two images did the preparer produce (the crop is its first draw from rng)?
    flipped = np.array_equal(
      example["image"], images.to_model_input(crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 28)
    )
    assert flipped or np.array_equal(example["image"], images.to_model_input(crop, 28))
    target = preparer.t5.decode(example["target_ids"][example["target_mask"] > 0])
    expected = [templates.mirror_text(a) for a in records[i].answers] if flipped else records[i].answers
    assert target in expected, (flipped, target, records[i].answers)
    if re.search(r"\b(left|right) of\b", target):
      seen.add(flipped)
  assert seen == {True, False}  # spatial targets both mirrored and kept


def test_region_level_examples_keep_their_geometry_under_augment(dataset):
  preparer = preparer_of(data_config(dataset, augment=True), "region")
  records, root = preparer.source.records, preparer.source.image_root
  for seed in range(30):
    i = 7 * seed % len(records)
    example = preparer(i, np.random.default_rng(seed))
    plain = images.to_model_input(images.decode_image(records[i].image_source(root)), 28)
    np.testing.assert_array_equal(example["image"], plain)


def test_encode_batch_reports_untruncated_lengths(dataset):
  t5, bert = T5Tokenizer(dataset / "spiece.model"), BertTokenizer(dataset / "bert_vocab.txt")
  text = "a red circle left of a blue square, which is above a green triangle"
  ids, mask, lengths = t5.encode_batch([text, "a"], max_length=6, truncation_side="right", return_lengths=True)
  assert lengths.tolist() == [len(t5.encode(text)), len(t5.encode("a"))] and lengths[0] > 6
  assert mask.sum(1).tolist() == [6, lengths[1]] and ids[0].tolist() == t5.encode(
    text, max_length=6, truncation_side="right"
  )
  ids, mask, lengths = bert.encode_batch([text], max_length=5, return_lengths=True)
  assert lengths.tolist() == [len(bert.encode(text))] and mask.sum() == 5


def test_truncated_texts_are_counted_per_source_and_survive_a_restore(dataset, tmp_path, caplog):
  records, _ = load_records(dataset / "train.jsonl")
  caption = next(r for r in records if r.task == "caption")
  vqa = next(r for r in records if r.task == "vqa")
  long = dataclasses.replace(caption, answers=[", ".join([caption.answers[0]] * 4)], id="long-caption")
  path = str(write_jsonl([long, vqa], tmp_path / "two.jsonl"))
  config = data_config(
    dataset, mixture={"long": 1.0, "short": 1.0}, max_input_len=256, max_qformer_len=256, max_target_len=12
  )
  config.sources = {
    "long": dict(records=path, image_root=str(dataset), tasks=["caption"]),
    "short": dict(records=path, image_root=str(dataset), tasks=["vqa"]),
  }
  it = pipeline.make_iterator(config, batch_size=2)
  take(it, 6)
  counters = it.counters()
  n = counters["long"]["seen"]
  assert n > 0 and counters["long"] == {"seen": n, "truncated_target": n}
  assert counters["short"] == {"seen": counters["short"]["seen"]} and counters["short"]["seen"] > 0
  warnings = [r.getMessage() for r in caplog.records if "max_target_len" in r.getMessage()]
  assert 1 <= len(warnings) < n  # warned about, not once per example
  assert all("source long" in w and "long-caption" in w and "max_target_len=12" in w for w in warnings)
  saved = json.loads(json.dumps(counters))  # what the checkpoint stores
  take(it, 4)
  it.close()
  resumed = pipeline.make_iterator(config, batch_size=2, first_batch=6)
  resumed.restore_counters(saved)
  assert resumed.counters() == counters
  take(resumed, 4)
  assert resumed.counters() == it.counters() and it.counters()["long"]["truncated_target"] > n
  resumed.close()


def test_inspect_cli_counts_truncated_texts(dataset, capsys):
  args = [
    "--records",
    str(dataset / "val.jsonl"),
    "--image-root",
    str(dataset),
    "--json",
    "--t5-vocab",
    str(dataset / "spiece.model"),
    "--bert-vocab",
    str(dataset / "bert_vocab.txt"),
  ]
  assert inspect_main(args) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["valid"] > 0 and result["truncated"] == {"input": 0, "target": 0, "qformer": 0}
  assert inspect_main(args + ["--max-target-len", "8"]) == 0
  truncated = json.loads(capsys.readouterr().out)["truncated"]
  assert 0 < truncated["target"] < result["valid"] and truncated["input"] == truncated["qformer"] == 0
  with pytest.raises(SystemExit):
    inspect_main(args[:-2])  # a T5 vocab without the BERT one


def test_inspect_cli_counts_valid_and_invalid(dataset, tmp_path, capsys):
  broken = tmp_path / "inspect"
  shutil.copytree(dataset, broken)
  next(iter(sorted((broken / "images").glob("*.png")))).unlink()
  args = ["--records", str(broken / "val.jsonl"), "--image-root", str(broken), "--json"]
  assert inspect_main(args) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["valid"] > 0 and result["invalid"] == {}
  args = ["--records", str(broken / "train.jsonl"), "--image-root", str(broken), "--json"]
  assert inspect_main(args) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["invalid"]["missing_image"] > 0
  assert inspect_main(args + ["--strict"]) == 1
  capsys.readouterr()
  assert inspect_main(["--records", str(broken / "train.jsonl"), "--image-root", str(tmp_path)]) == 1


def test_the_qformer_reads_the_raw_instruction_not_the_tag_prompt(dataset):
  """The official code gives the Q-Former the question alone; the tag prompt goes to T5 only."""
  config = data_config(dataset, soft_prompt=True, use_tags=True)
  preparer = preparer_of(config, "image")
  i = next(i for i, r in enumerate(preparer.source.records) if r.tags and r.task == "vqa")
  example = preparer(i, None)
  record = preparer.source.records[i]
  text = templates.build_checked_text(record, None, 32, 32, soft_prompt=True, use_tags=True)
  t5_input = preparer.t5.decode(example["input_ids"][example["input_mask"] > 0], skip_special_tokens=False)
  assert ", ".join(record.tags) in t5_input and ", ".join(record.tags) not in text.instruction
  assert example["qformer_ids"][example["qformer_mask"] > 0].tolist() == preparer.bert.encode(text.instruction)
