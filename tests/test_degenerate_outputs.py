"""Whatever a model outputs, an evaluation runs to its end: degenerate predictions score as wrong answers
through every metric, MMBench and VisDial take NaN scores, VisDial batches span dialogs at any size."""

from __future__ import annotations

import ml_collections
import numpy as np
import pytest
from PIL import Image

from lion_jax.data import images
from lion_jax.data.records import Record
from lion_jax.evaluation import metrics, mmbench, runner, visdial
from tests.test_mmbench import QUESTIONS, write_tsv
from tests.test_visdial import dialog, visdial_file

DEGENERATE = {
  "empty": "",
  "blank": "  \n ",
  "no box": "it is somewhere on the left",
  "three numbers": "[0.100,0.200,0.300]",
  "unclosed": "[0.000,0.000,1.000,1.000",
  "x2 < x1": "[0.900,0.000,0.100,1.000]",
  "y2 < y1": "[0.000,0.900,1.000,0.100]",
  "outside [0, 1]": "[-0.050,0.000,1.000,1.050]",  # IoU 0.91 with the whole image, but no box LION writes
  "NaN": "[0.000,0.000,nan,1.000]",
  "very long": "[" + "1" * 100_000,
}
WHOLE_IMAGE = [0.0, 0.0, 1.0, 1.0]
TINY = ml_collections.ConfigDict({"vit": {"image_size": 8}})  # what the benchmarks read of a model config


@pytest.mark.parametrize("name", DEGENERATE)
def test_a_degenerate_prediction_is_a_wrong_answer_for_every_metric(name):
  text = DEGENERATE[name]
  assert metrics.rec_accuracy([text, "[0,0,1,1]"], [WHOLE_IMAGE] * 2) == 0.5
  assert metrics.vqa_accuracy([text, "yes"], [["yes"] * 10] * 2) == 0.5
  assert metrics.exact_match_accuracy([text, "yes"], ["yes", "yes"]) == 0.5
  refs = {"1": ["a red circle", "a circle that is red"], "2": ["two blue squares", "blue squares"]}
  for metric in (metrics.cider, metrics.bleu4):
    assert np.isfinite(metric(refs, {"1": text, "2": "two blue squares"}))
  rec = Record("region_level", "rec", image="a.png", expression="it", boxes=[[0, 0, 8, 8]], width=8, height=8)
  assert runner.score("rec", [rec, rec], [text, None]) == {"accuracy": 0.0}  # None: an unreadable image


@pytest.mark.parametrize("label", ["yes", "no"])
def test_pope_takes_an_empty_answer_as_the_wrong_one(label):
  """POPE's script reads any text without 'no' as yes; saying nothing must not be right on yes questions."""
  scores = metrics.pope_scores(["", " ", "yes" if label == "yes" else "no"], [label] * 3)
  assert scores["accuracy"] == pytest.approx(1 / 3)
  assert scores["yes_ratio"] == pytest.approx(1 / 3 if label == "yes" else 2 / 3)


def test_nan_option_scores_rank_last_in_visdial():
  scores = np.array([[np.nan, 1.0, 0.5], [2.0, np.nan, np.nan]])
  np.testing.assert_array_equal(metrics.ground_truth_ranks(scores, [0, 1]), [3, 3])
  assert metrics.recall_at_k(scores, [0, 1], 1) == 0.0 and metrics.mean_reciprocal_rank(scores, [0, 1]) == 1 / 3
  np.testing.assert_array_equal(visdial.ranks(scores), [[3, 1, 2], [1, 2, 3]])
  assert metrics.ndcg([[np.nan, 1.0, 0.5]], [[1.0, 0.0, 0.0]]) == 0.0


def test_mmbench_scores_no_choice_and_unoffered_options_as_wrong(tmp_path, monkeypatch):
  """A diverged model (NaN or -inf for every option) chooses nothing, not `A`; an index that names no
  offered option is wrong; neither stops the scores or the leaderboard file."""
  questions = mmbench.circular_variants(mmbench.read_tsv(write_tsv(tmp_path / "dev.tsv", QUESTIONS)))
  nan_scores = np.full((len(questions), 4), np.nan)
  nan_scores[1] = [np.nan, -np.inf, 0.5, np.nan]  # rotation 1 of question 7: C
  monkeypatch.setattr(mmbench, "option_scores", lambda *args, **kwargs: nan_scores[: len(args[4])])
  chosen = mmbench.choose(TINY, None, None, None, questions, batch_size=len(questions), progress=False)
  assert chosen == [mmbench.NO_CHOICE, 2] + [mmbench.NO_CHOICE] * 5
  assert mmbench.scores(questions, chosen)["vanilla_accuracy"] == 0.0
  assert [mmbench.letter(c) for c in chosen[:2]] == ["", "C"]
  right = [mmbench.LETTERS.index(q.answer) for q in questions]
  assert mmbench.scores(questions, right)["accuracy"] == 100.0
  beyond = [3 if len(q.options) == 3 else c for q, c in zip(questions, right)]  # D of a 3-option question
  assert mmbench.scores(questions, beyond)["accuracy"] == 50.0
  assert mmbench.scores(questions, [7] * len(questions))["accuracy"] == 0.0
  mmbench.write_submission(tmp_path / "submission.xlsx", questions, chosen)


def _write_images(root, split, image_ids):
  for image_id in image_ids:
    Image.new("RGB", (8, 8), (image_id * 20 % 256, 0, 0)).save(visdial.image_path(root, split, image_id), "PNG")


def _rounds_see_their_own_images(tmp_path, monkeypatch, split, dialogs, batch_size):
  """round_scores gives every round its own dialog's image, for batches spanning dialogs."""
  path, root = visdial_file(tmp_path / f"{split}.json", split, dialogs), tmp_path / "images"
  root.mkdir(exist_ok=True)
  _, rounds = visdial.read_dialogs(path)
  _write_images(root, split, {r.image_id for r in rounds})
  seen = []

  def fake_option_scores(config, params, t5, bert, pixels, prompts, options, **kwargs):
    seen.extend(pixels)
    return np.zeros((len(prompts), visdial.NUM_OPTIONS))

  monkeypatch.setattr(visdial, "option_scores", fake_option_scores)
  out = visdial.round_scores(TINY, None, None, None, rounds, root, split, batch_size=batch_size, progress=False)
  assert out.shape == (len(rounds), visdial.NUM_OPTIONS)
  for r, pixels in zip(rounds, seen, strict=True):
    own = images.to_model_input(images.decode_image(visdial.image_path(root, split, r.image_id)), 8)
    np.testing.assert_array_equal(pixels, own)
  return rounds


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_visdial_val_batches_span_dialogs_of_odd_round_counts(tmp_path, monkeypatch, batch_size):
  asked = lambda n: [(i % 4, 100 + i % 4, 0, True) for i in range(n)]
  dialogs = [dialog(1, "a", asked(3)), dialog(2, "b", asked(1)), dialog(3, "c", asked(5)), dialog(4, "d", asked(2))]
  rounds = _rounds_see_their_own_images(tmp_path, monkeypatch, "val2018", dialogs, batch_size)
  assert [r.image_id for r in rounds] == [1] * 3 + [2] + [3] * 5 + [4] * 2


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_visdial_test_split_with_more_dialogs_than_the_batch(tmp_path, monkeypatch, batch_size):
  dialogs = [dialog(i, "x", [(0, 100, None, False), (3, None, None, True)]) for i in range(1, 6)]
  rounds = _rounds_see_their_own_images(tmp_path, monkeypatch, "test2018", dialogs, batch_size)
  assert [r.image_id for r in rounds] == [1, 2, 3, 4, 5]
