"""Blind evaluation (lion_jax.evaluation.blind): the derangement, blind scores, the image gain, the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lion_jax import run_config
from lion_jax.convert import load_converted
from lion_jax.data.records import load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import UserError
from lion_jax.evaluation import blind, evaluators, runner
from lion_jax.models import param_paths
from tests.test_inference import random_tiny_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return random_tiny_checkpoint(tmp_path_factory.mktemp("blind"))


def val_records(checkpoint: Path):
  return load_records(checkpoint / "data" / "val.jsonl")[0]


def test_every_example_is_shown_another_image_the_same_way_every_time(checkpoint):
  records = val_records(checkpoint)  # several records (caption, VQA, REC, ...) per image
  partners = blind.partners(records)
  assert len({r.image for r in records}) >= 2 and len(records) > len({r.image for r in records})
  assert all(records[j].image != r.image for r, j in zip(records, partners))
  # Records of one image all get the same other image, and every image is shown to some other image's records.
  shown = {r.image: records[j].image for r, j in zip(records, partners)}
  assert all(records[j].image == shown[r.image] for r, j in zip(records, partners))
  assert sorted(shown.values()) == sorted(shown)
  np.testing.assert_array_equal(blind.partners(records), partners)
  # Embedded image bytes (TFDS records) are told apart by content.
  embedded = [dataclasses.replace(r, image="", image_bytes=r.image.encode()) for r in records]
  np.testing.assert_array_equal(blind.partners(embedded) >= 0, True)
  assert all(embedded[j].image_bytes != r.image_bytes for r, j in zip(embedded, blind.partners(embedded)))


def test_one_image_only_is_a_clear_error(checkpoint):
  records = [r for r in val_records(checkpoint) if r.image == val_records(checkpoint)[0].image]
  with pytest.raises(UserError, match=r"record\(s\) evaluated have 1 distinct image\(s\)"):
    blind.partners(records)


def test_a_blind_run_is_the_records_asked_with_their_partners_pixels(checkpoint):
  """Batches of 3 over 7 records (a padded last batch): each answer equals asking the record, text and
  tags unchanged, with its partner's image file."""
  model_config, params = load_converted(checkpoint / "ckpt")
  t5, bert = T5Tokenizer(checkpoint / "data" / "spiece.model"), BertTokenizer(checkpoint / "data" / "bert_vocab.txt")
  records = [r for r in val_records(checkpoint) if r.task == "vqa"]
  partners = blind.partners(records)
  picked = list(range(7))
  asked = dict(num_beams=1, max_new_tokens=4, max_input_len=96, max_qformer_len=48)
  blind_run = runner.predict_records(
    model_config,
    params,
    t5,
    bert,
    records,
    checkpoint / "data",
    batch_size=3,
    image_partners=partners,
    progress=False,
    **asked,
  )
  swapped = [dataclasses.replace(records[i], image=records[partners[i]].image) for i in picked]
  by_hand = runner.predict_records(
    model_config, params, t5, bert, swapped, checkpoint / "data", batch_size=7, progress=False, **asked
  )
  assert blind_run[:7] == by_hand
  true_run = runner.predict_records(
    model_config, params, t5, bert, records[:7], checkpoint / "data", batch_size=7, progress=False, **asked
  )
  assert true_run != by_hand  # the random model's answers do depend on the pixels


def zero_visual_tokens(params):
  """The Q-Former's and the aggregator's last projections zeroed: the T5 gets zeros for every image."""
  flat = param_paths.flatten(params)
  for path in ("qformer/proj/kernel", "qformer/proj/bias", "aggregator/proj_out/kernel", "aggregator/proj_out/bias"):
    flat[path] = np.zeros_like(flat[path])
  return param_paths.unflatten(flat)


def loss_evaluator(checkpoint, model_config):
  from lion_jax.data import synthetic

  spec = run_config.evaluator(
    "loss",
    records=str(checkpoint / "data" / "val.jsonl"),
    image_root=str(checkpoint / "data"),
    limit=21,  # a padded last batch
    batch_size=8,
    blind=True,
  )
  config = run_config.base_config("tiny")
  config.data.update(
    t5_vocab=str(checkpoint / "data" / "spiece.model"),
    bert_vocab=str(checkpoint / "data" / "bert_vocab.txt"),
    image_size=model_config.vit.image_size,
    soft_prompt=True,
    **synthetic.TEXT_LENGTHS,
  )
  return evaluators.Evaluator("validation", spec, model_config, config.data, 1)


def test_image_gain_is_zero_for_a_model_blind_by_construction_and_not_for_one_that_reads_pixels(checkpoint):
  model_config, params = load_converted(checkpoint / "ckpt")
  evaluator = loss_evaluator(checkpoint, model_config)
  reads = evaluator.run(params)
  sees_nothing = evaluator.run(zero_visual_tokens(params))
  for level in ("image_level", "region_level"):
    key = f"eval/validation/{level}/image_gain"
    assert abs(sees_nothing[key]) < 1e-6, (level, sees_nothing[key])
    assert abs(reads[key]) > 1e-4, (level, reads[key])
    assert reads[f"eval/{level}/loss"] > 0


def test_generation_evaluators_report_blind_scores(checkpoint):
  model_config, params = load_converted(checkpoint / "ckpt")
  evaluator = loss_evaluator(checkpoint, model_config)
  spec = run_config.evaluator(
    "exact_match", records=evaluator.spec.records, image_root=evaluator.spec.image_root, tasks=["vqa"], limit=12
  )
  spec.update(blind=True, max_new_tokens=3)
  scalars = evaluators.Evaluator("synthetic_vqa", spec, model_config, evaluator.data_config, 1).run(params)
  assert {"eval/synthetic_vqa/accuracy", "eval/synthetic_vqa/accuracy_blind"} <= set(scalars)
  with_zeroed = evaluators.Evaluator("synthetic_vqa", spec, model_config, evaluator.data_config, 1)
  zeroed = with_zeroed.run(zero_visual_tokens(params))
  assert zeroed["eval/synthetic_vqa/accuracy"] == zeroed["eval/synthetic_vqa/accuracy_blind"]
  spec.limit = 2  # two questions about one image
  with pytest.raises(UserError, match="evaluate more records"):
    evaluators.Evaluator("synthetic_vqa", spec, model_config, evaluator.data_config, 1)


def test_evaluate_cli_blind_flag_writes_both_reports(checkpoint, tmp_path):
  out = tmp_path / "out"
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lion_jax.evaluate",
      f"--config={REPO / 'configs' / 'eval' / 'synthetic_rec.py'}",
      f"--checkpoint={checkpoint / 'ckpt'}",
      f"--config.records={checkpoint / 'data' / 'val.jsonl'}",
      f"--config.image_root={checkpoint / 'data'}",
      "--config.blind=True",
      "--config.limit=5",
      "--config.max_new_tokens=4",
      f"--output={out}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  scores = json.loads((out / "synthetic_rec_results.json").read_text())
  blind_scores = json.loads((out / "synthetic_rec_blind_results.json").read_text())
  assert set(scores) == {"accuracy", "accuracy_blind"} and set(blind_scores) == {"accuracy"}
  assert scores["accuracy_blind"] == blind_scores["accuracy"]
  lines = [json.loads(l) for l in (out / "synthetic_rec_blind_predictions.jsonl").read_text().splitlines()]
  asked = [r for r in val_records(checkpoint) if r.task == "rec"][:5]
  assert [l["id"] for l in lines] == [r.id for r in asked] and not list(out.glob("*.partial.*"))
  assert "accuracy_blind" in result.stdout


def test_blind_is_refused_where_options_are_ranked(checkpoint, tmp_path):
  from lion_jax.evaluation.benchmarks import eval_config

  config = eval_config("mmbench", records=str(tmp_path / "dev.tsv"), blind=True)
  with pytest.raises(UserError, match="mmbench ranks given options"):
    runner.run_benchmark(config, checkpoint / "ckpt", tmp_path)
  # Questions about one image cannot be deranged: refused before anything is predicted.
  one_image = dict(records=str(checkpoint / "data" / "val.jsonl"), image_root=str(checkpoint / "data"), limit=2)
  config = eval_config("synthetic_vqa", tasks=("vqa",), blind=True, **one_image)
  with pytest.raises(UserError, match="have 1 distinct image"):
    runner.run_benchmark(config, checkpoint / "ckpt", tmp_path)
  assert not list(tmp_path.glob("*predictions*"))
