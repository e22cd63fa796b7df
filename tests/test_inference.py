"""Predictor, predict CLI, evaluation runner and CLI, and the notebook, on a tiny converted checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import pytest
from PIL import Image

from lion_jax.convert import save_converted
from lion_jax.data import synthetic, templates
from lion_jax.data.records import load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.evaluation import runner
from lion_jax.inference import Predictor
from lion_jax.models import Lion, example_batch, presets
from lion_jax.predict import main as predict_main
from tests.conftest import require

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  return random_tiny_checkpoint(tmp_path_factory.mktemp("inference"))


def random_tiny_checkpoint(root: Path) -> Path:
  """A random tiny LION (stage-3 layout) with the synthetic dataset's tokenizers, as a converted dir:
  root/ckpt, and the dataset in root/data."""
  synthetic.generate(root / "data", num_images=24, seed=0, image_size=64)
  t5, bert = T5Tokenizer(root / "data" / "spiece.model"), BertTokenizer(root / "data" / "bert_vocab.txt")
  # The tokenizer's own vocabulary: a random model would otherwise pick padding rows it cannot decode.
  config = presets.tiny("all", t5_vocab_size=t5.vocab_size, qformer_vocab_size=bert.vocab_size)
  config.soft_prompt_token_id = t5.sentinel_id(0)
  params = nn.unbox(jax.jit(Lion(config).init)(jax.random.key(0), example_batch(config))["params"])
  save_converted(
    root / "ckpt", config, params, t5_vocab=root / "data" / "spiece.model", bert_vocab=root / "data" / "bert_vocab.txt"
  )
  return root


def test_predictor_answers_with_text_and_pixel_boxes(checkpoint):
  predictor = Predictor.load(checkpoint / "ckpt", num_beams=2, max_new_tokens=8)
  image = checkpoint / "data" / "images" / "000000.png"
  result = predictor(image, "What color is the circle?", tags="red, circle")
  assert isinstance(result.text, str)
  same = predictor(Image.open(image), "What color is the circle?", tags=["red", "circle"])
  assert same == result  # path, PIL image, tag string and tag list are the same request
  # Boxes are parsed from the text and scaled to the original image size.
  predictor.t5.decode_counting = lambda ids: ("Answer: [0.250,0.500,0.750,1.000]", 0)
  rec = predictor(np.zeros((40, 80, 3), np.uint8), "Where is it?", task="region_level")
  assert rec.boxes == [(20.0, 20.0, 60.0, 40.0)]
  with pytest.raises(ValueError, match="task="):
    predictor(image, "?", task="pixel_level")


def test_a_soft_prompt_checkpoint_always_gets_the_tag_prompt_and_says_when_tags_are_missing(checkpoint, caplog):
  predictor = Predictor.load(checkpoint / "ckpt", num_beams=1, max_new_tokens=4)
  assert predictor.config.use_soft_prompt
  batch = predictor.inputs([np.zeros((28, 28, 3), np.float32)], ["What is it?"], [[]], "image_level")
  expected = predictor.t5.encode(templates.TAG_PROMPT.format("") + "What is it?")
  assert batch["input_ids"][0][: len(expected)].tolist() == expected  # `[]`, as the official template renders
  image = checkpoint / "data" / "images" / "000000.png"
  with caplog.at_level(logging.WARNING, logger="lion_jax.inference.predictor"):
    untagged = predictor(image, "What color is the circle?")
    assert predictor(image, "What color is the circle?", tags=[]) == untagged
  assert ["have no image tags" in r.getMessage() for r in caplog.records] == [True]  # once per predictor
  caplog.clear()
  tagger = Predictor.load(checkpoint / "ckpt", num_beams=1, max_new_tokens=4, tagger=lambda im: ["red", "circle"])
  with caplog.at_level(logging.WARNING, logger="lion_jax.inference.predictor"):
    question = "What color is the circle?"
    assert tagger(image, question) == predictor(image, question, tags="red, circle")
  assert not caplog.records


def test_runner_tags_records_without_tags_with_the_tagger_or_warns(checkpoint, caplog):
  from lion_jax.convert import load_converted

  ckpt = checkpoint / "ckpt"
  config, params = load_converted(ckpt)
  t5, bert = T5Tokenizer(ckpt / "tokenizer" / "spiece.model"), BertTokenizer(ckpt / "tokenizer" / "bert_vocab.txt")
  records = [r for r in load_records(checkpoint / "data" / "val.jsonl")[0] if r.task == "vqa"][:3]
  assert all(r.tags for r in records)
  untagged = [dataclasses.replace(r, tags=[]) for r in records]
  predict = lambda rs, **kw: runner.predict_records(
    config, params, t5, bert, rs, checkpoint / "data", batch_size=4, progress=False, num_beams=1, max_new_tokens=4, **kw
  )
  tags_of = {r.image: r.tags for r in records}
  with caplog.at_level(logging.WARNING, logger="lion_jax.evaluation.runner"):
    tagged_by_tagger = predict(untagged, tagger=_tagger_from(checkpoint / "data", tags_of))
  assert not caplog.records
  assert tagged_by_tagger == predict(records)
  with caplog.at_level(logging.WARNING, logger="lion_jax.evaluation.runner"):
    predict(untagged)
  assert [r.getMessage()[:38] for r in caplog.records] == ["3 of 3 inputs have no image tags: this"]


def _tagger_from(image_root, tags_of):
  """A tagger that knows the synthetic images by their pixels (what a real tagger sees)."""
  pixels = lambda image: np.asarray(image.convert("RGB")).tobytes()
  by_pixels = {pixels(Image.open(image_root / name)): tags for name, tags in tags_of.items()}
  return lambda image: by_pixels[pixels(image)]


def test_an_evaluation_with_beams_ends_when_the_padding_rows_have_the_largest_logits(checkpoint, tmp_path):
  """As an undertrained demo export (T5 table padded to a multiple of 8 past the tokenizer, issue 29's
  `ValueError: token id 407 is outside the vocabulary`): no beam picks a padding row, so the
  evaluation writes its results."""
  from lion_jax.evaluation.benchmarks import eval_config
  from lion_jax.inference import generate

  data = checkpoint / "data"
  t5, bert = T5Tokenizer(data / "spiece.model"), BertTokenizer(data / "bert_vocab.txt")
  config = presets.tiny("all", t5_vocab_size=-(-t5.vocab_size // 8) * 8 + 8, qformer_vocab_size=bert.vocab_size)
  config.soft_prompt_token_id = t5.sentinel_id(0)
  params = nn.unbox(jax.jit(Lion(config).init)(jax.random.key(0), example_batch(config))["params"])
  kernel = params["t5"]["lm_head"]["kernel"]
  params["t5"]["lm_head"]["kernel"] = kernel.at[:, t5.vocab_size :].multiply(50.0)
  unmasked = np.asarray(generate(config, params, example_batch(config), num_beams=1, max_new_tokens=4))
  assert (unmasked >= t5.vocab_size).any()  # what the old evaluation could not decode
  save_converted(tmp_path / "ckpt", config, params, t5_vocab=data / "spiece.model", bert_vocab=data / "bert_vocab.txt")
  evaluation = eval_config("synthetic_vqa", records=str(data / "val.jsonl"), image_root=str(data), limit=4)
  evaluation.update(num_beams=3, max_new_tokens=12, batch_size=4)
  scores = runner.run_benchmark(evaluation, tmp_path / "ckpt", tmp_path / "out")
  assert set(scores) == {"accuracy"}  # no ids dropped: none was generated
  assert json.loads((tmp_path / "out" / "synthetic_vqa_results.json").read_text()) == scores


def test_the_qformer_reads_the_raw_instruction_not_the_tag_prompt(checkpoint, monkeypatch):
  """The official code gives the Q-Former the question alone; the tags go to T5 only."""
  from lion_jax.inference import predictor as predictor_module

  bert = BertTokenizer(checkpoint / "data" / "bert_vocab.txt")
  question = "What color is the circle?"
  seen = []

  def fake_generate_ids(config, params, batch, mesh, rules, settings):
    seen.append(batch)
    return np.zeros((len(batch["task"]), 2), np.int32)

  qformer_text = lambda batch: batch["qformer_ids"][0][batch["qformer_mask"][0] > 0].tolist()
  monkeypatch.setattr(predictor_module, "generate_ids", fake_generate_ids)
  Predictor.load(checkpoint / "ckpt", num_beams=1, max_new_tokens=2)(
    checkpoint / "data" / "images" / "000000.png", question, tags="red, circle"
  )
  assert qformer_text(seen[-1]) == bert.encode(question)
  monkeypatch.setattr(runner, "generate_ids", fake_generate_ids)
  from lion_jax.convert import load_converted

  config, params = load_converted(checkpoint / "ckpt")
  record = next(r for r in load_records(checkpoint / "data" / "val.jsonl")[0] if r.task == "vqa" and r.tags)
  t5 = T5Tokenizer(checkpoint / "data" / "spiece.model")
  runner.predict_records(config, params, t5, bert, [record], checkpoint / "data", progress=False)
  text = templates.build_text(record, None, 64, 64, soft_prompt=True)
  assert ", ".join(record.tags) in text.t5_input and qformer_text(seen[-1]) == bert.encode(text.instruction)


def test_predict_cli_prints_and_draws(checkpoint, tmp_path, capsys):
  out = tmp_path / "boxes.png"
  args = [
    "--checkpoint",
    str(checkpoint / "ckpt"),
    "--image",
    str(checkpoint / "data" / "images" / "000001.png"),
    "--question",
    "Where is the red circle?",
    "--task",
    "region_level",
    "--draw",
    str(out),
    "--num_beams",
    "1",
    "--max_new_tokens",
    "6",
  ]
  assert predict_main(args) == 0
  assert "saved" in capsys.readouterr().out and Image.open(out).size == (64, 64)
  assert predict_main(args[:2] + ["--image", str(tmp_path / "missing.png"), "--question", "q"]) == 1
  assert "missing.png" in capsys.readouterr().err


def test_runner_scores_each_benchmark_kind(checkpoint, tmp_path):
  records, _ = load_records(checkpoint / "data" / "val.jsonl")
  ckpt = checkpoint / "ckpt"
  from lion_jax.convert import load_converted

  config, params = load_converted(ckpt)
  t5, bert = T5Tokenizer(ckpt / "tokenizer" / "spiece.model"), BertTokenizer(ckpt / "tokenizer" / "bert_vocab.txt")
  for task, kind in (("caption", "caption"), ("vqa", "exact_match"), ("rec", "rec")):
    subset = [r for r in records if r.task == task][:5]
    predictions = runner.predict_records(
      config,
      params,
      t5,
      bert,
      subset,
      checkpoint / "data",
      batch_size=4,
      max_input_len=64,
      max_qformer_len=32,
      progress=False,
      num_beams=1,
      max_new_tokens=6,
    )
    assert len(predictions) == len(subset) and all(isinstance(p, str) for p in predictions)
    scores = runner.score(kind, subset, predictions)
    assert all(0.0 <= v <= 100.0 * 10 for v in scores.values())
  # Perfect predictions score perfectly: the metric plumbing, not the tiny model, is under test here.
  rec = [r for r in records if r.task == "rec"][:4]
  from lion_jax.data.boxes import format_boxes

  perfect = ["Answer: " + format_boxes(r.boxes, r.width, r.height) for r in rec]
  assert runner.score("rec", rec, perfect) == {"accuracy": 100.0}
  vqa = [r for r in records if r.task == "vqa"][:6]
  assert runner.score("exact_match", vqa, [r.answers[0] for r in vqa]) == {"accuracy": 100.0}


def test_evaluate_cli_writes_predictions_and_results(checkpoint, tmp_path):
  import subprocess
  import sys

  records, _ = load_records(checkpoint / "data" / "val.jsonl")
  pope = tmp_path / "pope.jsonl"
  yes_no = [r for r in records if r.task == "vqa" and r.answers[0] in ("yes", "no")][:6]
  assert len(yes_no) >= 2
  with open(pope, "w") as f:
    for r in yes_no:
      f.write(json.dumps(r.to_json()) + "\n")
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lion_jax.evaluate",
      f"--config={REPO / 'configs' / 'eval' / 'pope_random.py'}",
      f"--checkpoint={checkpoint / 'ckpt'}",
      f"--config.records={pope}",
      f"--config.image_root={checkpoint / 'data'}",
      "--config.num_beams=1",
      "--config.max_new_tokens=4",
      "--config.batch_size=4",
      f"--output={tmp_path / 'out'}",
    ],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert "pope_random" in result.stdout and "paper: LION 88.33" in result.stdout
  scores = json.loads((tmp_path / "out" / "pope_random_results.json").read_text())
  assert set(scores) == {"accuracy", "precision", "recall", "f1", "yes_ratio"}
  assert len((tmp_path / "out" / "pope_random_predictions.jsonl").read_text().splitlines()) == len(yes_no)


def test_run_benchmark_asks_with_the_configs_prompt(checkpoint, tmp_path):
  from lion_jax.evaluation.benchmarks import eval_config

  config = eval_config(
    "gqa", records=str(checkpoint / "data" / "val.jsonl"), image_root=str(checkpoint / "data"), tasks=["vqa"], limit=2
  )
  config.update(num_beams=1, max_new_tokens=2, prompt="{question} in {place}?")
  with pytest.raises(ValueError, match=r"prompt '\{question\} in \{place\}\?': vqa records fill \{question\}"):
    runner.run_benchmark(config, checkpoint / "ckpt", tmp_path)


def test_mmbench_runs_from_its_tsv_with_scores_or_the_leaderboard_file(checkpoint, tmp_path):
  from lion_jax.evaluation import mmbench
  from lion_jax.evaluation.benchmarks import eval_config
  from tests.test_mmbench import QUESTIONS, read_xlsx, write_tsv

  dev = write_tsv(tmp_path / "dev.tsv", QUESTIONS)
  config = eval_config("mmbench", records=str(dev), batch_size=4)
  scores = runner.run_benchmark(config, checkpoint / "ckpt", tmp_path / "out")
  assert set(scores) == {
    "accuracy",
    "vanilla_accuracy",
    "category/color",
    "category/count",
    "l2_category/attribute_reasoning",
    "l2_category/finegrained_perception (instance-level)",
  }
  predictions = [json.loads(line) for line in (tmp_path / "out" / "mmbench_predictions.jsonl").read_text().splitlines()]
  assert [p["index"] for p in predictions] == [7, 1_000_007, 2_000_007, 3_000_007, 12, 1_000_012, 2_000_012]
  variants = mmbench.circular_variants(mmbench.read_tsv(dev))
  chosen = ["ABCD".index(p["prediction"]) for p in predictions]
  assert all(c < len(q.options) for c, q in zip(chosen, variants))  # always one of the question's options
  assert scores == mmbench.scores(variants, chosen)
  test_split = write_tsv(tmp_path / "test.tsv", [{k: v for k, v in q.items() if k != "answer"} for q in QUESTIONS])
  assert (
    runner.run_benchmark(eval_config("mmbench", records=str(test_split), batch_size=4), checkpoint / "ckpt", tmp_path)
    == {}
  )
  rows = read_xlsx(tmp_path / "mmbench_submission.xlsx")
  assert [row[-1] for row in rows[1:]] == [p["prediction"] for p in predictions]  # the same model, same choices


def test_visdial_ranks_every_option_of_every_round_from_the_published_files(checkpoint, tmp_path):
  import shutil

  from lion_jax.evaluation import visdial
  from lion_jax.evaluation.benchmarks import eval_config
  from tests.test_visdial import dialog, val_file, visdial_file

  image_root = tmp_path / "VisualDialog_val2018"
  image_root.mkdir()
  for image_id, name in ((42, "000000.png"), (7, "000001.png")):  # PNG bytes under VisDial's names decode the same
    shutil.copy(checkpoint / "data" / "images" / name, visdial.image_path(image_root, "val2018", image_id))
  records = val_file(tmp_path / "visdial_1.0_val.json")
  relevance = [1.0] + [0.0] * 99
  (tmp_path / "dense.json").write_text(json.dumps([{"image_id": 42, "round_id": 2, "gt_relevance": relevance}]))
  config = eval_config(
    "visdial", records=str(records), image_root=str(image_root), dense_annotations=str(tmp_path / "dense.json")
  )
  scores = runner.run_benchmark(config, checkpoint / "ckpt", tmp_path / "out")
  assert set(scores) == {"R@1", "R@5", "R@10", "MRR", "mean_rank", "NDCG"}
  lines = (tmp_path / "out" / "visdial_predictions.jsonl").read_text().splitlines()
  ranks = [json.loads(line)["gt_rank"] for line in lines]
  assert len(ranks) == 3 and scores["mean_rank"] == pytest.approx(np.mean(ranks))
  assert scores["MRR"] == pytest.approx(100 * np.mean([1 / r for r in ranks]))
  for name, image_id in (("000002.png", 5),):
    shutil.copy(checkpoint / "data" / "images" / name, tmp_path / f"VisualDialog_test2018_{image_id:012d}.jpg")
  test = visdial_file(
    tmp_path / "test.json", "test2018", [dialog(5, "two cats", [(0, 100, None, False), (3, None, None, True)])]
  )
  assert (
    runner.run_benchmark(
      eval_config("visdial", records=str(test), image_root=str(tmp_path)), checkpoint / "ckpt", tmp_path
    )
    == {}
  )
  (entry,) = json.loads((tmp_path / "visdial_submission.json").read_text())
  assert (entry["image_id"], entry["round_id"]) == (5, 2) and sorted(entry["ranks"]) == list(range(1, 101))


def test_evaluation_on_a_2x2x2_mesh_equals_one_device_and_resumes_after_an_interruption(checkpoint, tmp_path):
  from lion_jax import sharding
  from lion_jax.evaluation.benchmarks import eval_config
  from lion_jax.inference.batch import load_for_evaluation

  ckpt = checkpoint / "ckpt"
  config = eval_config(
    "gqa",
    records=str(checkpoint / "data" / "val.jsonl"),
    image_root=str(checkpoint / "data"),
    tasks=["vqa"],
    limit=8,
    batch_size=4,
    num_beams=2,
    max_new_tokens=4,
    mesh=dict(data=2, fsdp=2, tensor=2),
  )
  records = [r for r in load_records(config.records)[0] if r.task == "vqa"][:8]
  model_config, params, t5, bert = load_for_evaluation(ckpt)  # one device
  settings = dict(num_beams=2, max_new_tokens=4, min_length=config.min_length, length_penalty=config.length_penalty)
  one_device = runner.predict_records(
    model_config, params, t5, bert, records, config.image_root, batch_size=4, prompt=config.prompt, progress=False,
    **settings,
  )  # fmt: skip
  mesh = sharding.make_mesh(2, 2, 2)
  _, sharded, _, _ = load_for_evaluation(ckpt, mesh)
  assert any(len(x.sharding.device_set) == 8 and not x.sharding.is_fully_replicated for x in jax.tree.leaves(sharded))
  runner.run_benchmark(config, ckpt, tmp_path / "fresh")
  read = lambda path: [json.loads(line)["prediction"] for line in path.read_text().splitlines()]
  assert read(tmp_path / "fresh" / "gqa_predictions.jsonl") == one_device
  assert not (tmp_path / "fresh" / "gqa_predictions.partial.jsonl").exists()

  # Interrupted after the first batch: the partial file holds it; the same command predicts only the rest.
  out = tmp_path / "resumed"
  out.mkdir()
  (out / "gqa_predictions.partial.json").write_text(json.dumps(runner.fingerprint(config, ckpt)))
  marked = [
    {"id": r.id, "image": r.image, "prediction": "from the first run", "answers": r.answers} for r in records[:4]
  ]
  (out / "gqa_predictions.partial.jsonl").write_text("".join(json.dumps(m) + "\n" for m in marked))
  runner.run_benchmark(config, ckpt, out)
  assert read(out / "gqa_predictions.jsonl") == ["from the first run"] * 4 + one_device[4:]
  (out / "gqa_predictions.partial.json").write_text(json.dumps(runner.fingerprint(config, tmp_path)))
  (out / "gqa_predictions.partial.jsonl").write_text("".join(json.dumps(m) + "\n" for m in marked))
  with pytest.raises(ValueError, match=r"gqa_predictions\.partial\.jsonl is an interrupted evaluation of another"):
    runner.run_benchmark(config, ckpt, out)
  config.batch_size = 3  # padded to 4 rows, which the mesh's 2 x 2 batch devices split
  runner.run_benchmark(config, ckpt, tmp_path / "three")
  assert read(tmp_path / "three" / "gqa_predictions.jsonl") == one_device


def test_predict_batch_equals_single_calls_and_runs_on_a_mesh(checkpoint):
  from lion_jax import sharding

  images = [checkpoint / "data" / "images" / f"00000{i}.png" for i in range(3)]
  questions = ["What color is the circle?", "Is there a square?", "How many shapes?"]
  predictor = Predictor.load(checkpoint / "ckpt", num_beams=1, max_new_tokens=6)
  singles = [predictor(image, q, tags="red") for image, q in zip(images, questions)]
  assert predictor.predict_batch(images, questions, tags=["red"] * 3) == singles
  on_mesh = Predictor.load(checkpoint / "ckpt", mesh=sharding.make_mesh(2, 2, 2), num_beams=1, max_new_tokens=6)
  assert on_mesh.predict_batch(images, questions, tags=["red"] * 3) == singles  # 3 rows padded to 4
  with pytest.raises(ValueError, match="3 images, 2 questions"):
    predictor.predict_batch(images, questions[:2])


def test_notebook_runs_end_to_end(checkpoint):
  nbformat, nbclient = require("nbformat"), require("nbclient")
  notebook = nbformat.read(REPO / "notebooks" / "inference.ipynb", as_version=4)
  parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  parameters.source = (
    f"CHECKPOINT_DIR = {str(checkpoint / 'ckpt')!r}\n"
    f"IMAGE_PATH = {str(checkpoint / 'data' / 'images' / '000002.png')!r}\n"
    "QUESTION = 'What color is the circle?'\nREC_EXPRESSION = 'the red circle'\n"
    "TAGS = 'red, circle'\nNUM_BEAMS, MAX_NEW_TOKENS = 2, 6"
  )
  nbclient.NotebookClient(
    notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
  ).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  assert any(o.output_type == "display_data" and "image/png" in o.get("data", {}) for o in outputs)


def test_evaluate_on_real_format_fixtures(checkpoint, tmp_path):
  """COCO Karpathy, VQAv2 and RefCOCO files in their original formats -> adapters -> evaluate."""
  from lion_jax.data.adapters import convert_to_jsonl
  from lion_jax.evaluation.benchmarks import eval_config
  from tests.test_adapters import KARPATHY, refcoco_files, vqa_files, write_json

  images = tmp_path / "coco"
  sizes = {
    "train2014/COCO_train2014_000000000009.jpg": (640, 480),
    "train2014/COCO_train2014_000000000025.jpg": (500, 375),
    "val2014/COCO_val2014_000000000042.jpg": (320, 240),
    "val2014/COCO_val2014_000000000073.jpg": (320, 240),
  }
  for name, size in sizes.items():
    (images / name).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(images / name)
  karpathy = write_json(tmp_path / "dataset_coco.json", KARPATHY)
  questions, annotations = vqa_files(tmp_path, "train2014")
  refs, instances = refcoco_files(tmp_path)
  jobs = {
    "coco_caption": ("coco_karpathy", dict(path=karpathy, split="train")),
    "okvqa": ("vqa_v2", dict(questions_path=questions, annotations_path=annotations)),
    "refcoco_val": ("refcoco", dict(refs_path=refs, instances_path=instances, split="train")),
  }
  for benchmark, (adapter, kwargs) in jobs.items():
    records = tmp_path / f"{benchmark}.jsonl"
    assert convert_to_jsonl(adapter, records, **kwargs) > 0
    config = eval_config(benchmark)
    config.update(records=str(records), image_root=str(images), num_beams=1, max_new_tokens=6, batch_size=4)
    scores = runner.run_benchmark(config, checkpoint / "ckpt", tmp_path / "results")
    assert scores and all(np.isfinite(v) for v in scores.values())
    assert (tmp_path / "results" / f"{benchmark}_results.json").exists()


def test_notebook_install_on_colab_keeps_the_runtime_jax(monkeypatch):
  """The install cell on Colab: pip gets a constraints file holding the installed jax and jaxlib."""
  import importlib.metadata
  import types

  nbformat = require("nbformat")
  notebook = nbformat.read(REPO / "notebooks" / "inference.ipynb", as_version=4)
  install = next(c for c in notebook.cells if c.cell_type == "code" and "LION_JAX_SOURCE" in c.source)
  calls = []
  monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
  monkeypatch.setattr(subprocess, "run", lambda command, check: calls.append(command))
  exec(install.source, {})
  [command] = calls
  assert command[:5] == [sys.executable, "-m", "pip", "install", "-q"] and command[-1].startswith("git+")
  constraints = Path(command[command.index("-c") + 1]).read_text().split()
  assert constraints == [f"jax=={importlib.metadata.version('jax')}", f"jaxlib=={importlib.metadata.version('jaxlib')}"]
