"""Benchmark metrics against references: pycocoevalcap's scorers and PTBTokenizer, and cases worked
by hand from the official VQA, POPE, VisDial and MMBench algorithms."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from lion_jax.evaluation import (
  bleu4,
  box_iou,
  cider,
  exact_match_accuracy,
  mean_reciprocal_rank,
  mmbench_circular_accuracy,
  normalize_vqa_answer,
  pope_scores,
  rec_accuracy,
  simple_tokenize,
  vqa_accuracy,
)
from tests.conftest import require

# Already tokenised (lower-case, space-separated): every tokenizer leaves these unchanged.
TOKENIZED_REFERENCES = {
  "1": ["a man riding a wave on top of a surfboard", "a surfer rides a large wave in the ocean",
        "a person on a surfboard riding a wave"],
  "2": ["two giraffes standing next to each other in a field", "a pair of giraffes in a grassy field",
        "two giraffes stand near trees on a sunny day"],
  "3": ["a plate with a sandwich chips and a pickle", "a sandwich and chips on a white plate",
        "lunch of a sandwich with chips on a plate"],
  "4": ["a red bus driving down a city street", "a double decker bus on the road",
        "a bus that is driving down the street"],
}
TOKENIZED_PREDICTIONS = {
  "1": "a man riding a wave on a surfboard",
  "2": "two giraffes standing in a field",
  "3": "a sandwich and chips on a plate",
  "4": "a bus parked next to a building",
}

# Raw captions with the punctuation, case and contractions PTBTokenizer deals with.
RAW_REFERENCES = {
  "1": ["A man riding a wave on top of a surfboard.", "A surfer's board, and a BIG wave!"],
  "2": ["Two giraffes (tall ones) standing in a field.", 'A sign that says "One Way" -- on a pole.'],
  "3": ["The man doesn't know; he can't see it.", "A black-and-white photo of a 1,000 year old tree..."],
}
RAW_PREDICTIONS = {
  "1": "A man's surfboard, on a wave.",
  "2": "Giraffes can't read: the sign says 'one way'.",
  "3": "It's 3.5 meters tall at 10:30 a.m., and it costs $5 (50% off)?",
}


def test_cider_and_bleu4_equal_pycocoevalcap_on_tokenized_text(capsys):
  require("pycocoevalcap")
  from pycocoevalcap.bleu.bleu import Bleu
  from pycocoevalcap.cider.cider import Cider

  gts = TOKENIZED_REFERENCES
  res = {k: [v] for k, v in TOKENIZED_PREDICTIONS.items()}
  expected_cider, _ = Cider().compute_score(gts, res)
  expected_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
  capsys.readouterr()

  assert expected_cider > 0.1 and expected_bleu[3] > 0.1  # the fixtures are not a trivial 0
  assert cider(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS) == pytest.approx(expected_cider, abs=1e-6)
  assert bleu4(TOKENIZED_REFERENCES, TOKENIZED_PREDICTIONS) == pytest.approx(expected_bleu[3], abs=1e-6)
  assert capsys.readouterr().out == ""  # Bleu's printing is switched off


def test_caption_metrics_reject_mismatched_ids():
  require("pycocoevalcap")
  predictions = {"1": "a cat", "9": "a dog"}
  references = {"1": ["a cat"], "2": ["a dog"]}
  for metric in (cider, bleu4):
    with pytest.raises(ValueError, match=r"missing predictions for \['2'\].*without references \['9'\]"):
      metric(references, predictions)
  with pytest.raises(ValueError, match="tokenizer must be"):
    cider(references, {"1": "a cat", "2": "a dog"}, tokenizer="moses")


def test_ptb_tokenizer_without_java_is_a_clear_error(monkeypatch):
  require("pycocoevalcap")
  monkeypatch.setenv("PATH", "")
  with pytest.raises(RuntimeError, match="needs `java` on PATH"):
    cider(RAW_REFERENCES, RAW_PREDICTIONS, tokenizer="ptb")


@pytest.mark.skipif(shutil.which("java") is None, reason="PTBTokenizer needs Java, which is optional")
def test_simple_tokenizer_matches_ptb_tokenizer_on_raw_captions():
  require("pycocoevalcap")
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  captions = [c for refs in RAW_REFERENCES.values() for c in refs] + list(RAW_PREDICTIONS.values())
  ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
  assert [simple_tokenize(c) for c in captions] == [ptb[i][0] for i in range(len(captions))]
  assert simple_tokenize(RAW_PREDICTIONS["3"]) == (
    "it 's 3.5 meters tall at 10:30 a.m. and it costs $ 5 -lrb- 50 % off -rrb-")
  assert cider(RAW_REFERENCES, RAW_PREDICTIONS, tokenizer="ptb") == pytest.approx(
    cider(RAW_REFERENCES, RAW_PREDICTIONS), abs=1e-6)


def test_vqa_answer_normalisation():
  assert normalize_vqa_answer("Two") == "2"
  assert normalize_vqa_answer("none") == "0"
  assert normalize_vqa_answer("the dog.") == "dog"
  assert normalize_vqa_answer("An apple") == "apple"
  assert normalize_vqa_answer("dont") == "don't"
  assert normalize_vqa_answer("yes.") == "yes"
  assert normalize_vqa_answer(" yes\n") == "yes"
  assert normalize_vqa_answer("3.5") == "3.5"  # a period before a digit stays
  assert normalize_vqa_answer("1,000") == "1000"  # digits around a comma: marks are deleted
  assert normalize_vqa_answer("red,blue") == "red blue"  # otherwise a mark between words is a space
  assert normalize_vqa_answer("black/white") == "black white"
  assert normalize_vqa_answer("black / white") == "black white"  # a mark next to a space is deleted
  assert normalize_vqa_answer("1,000 / 2") == "1000 2"


def test_vqa_accuracy_leave_one_out():
  ten = lambda matching: ["2"] * matching + ["3"] * (10 - matching)
  assert vqa_accuracy(["2"], [ten(0)]) == 0.0
  assert vqa_accuracy(["2"], [ten(1)]) == pytest.approx(0.3)  # 9 subsets hold 1 match: 9 * 1/3 / 10
  assert vqa_accuracy(["2"], [ten(2)]) == pytest.approx(0.6)  # (2 * 1/3 + 8 * 2/3) / 10
  assert vqa_accuracy(["2"], [ten(3)]) == pytest.approx(0.9)  # (3 * 2/3 + 7 * 1) / 10
  assert vqa_accuracy(["2"], [ten(4)]) == 1.0
  assert vqa_accuracy(["Two."], [ten(10)]) == 1.0
  assert vqa_accuracy(["2"], [["2", "2", "3", "3", "3"]]) == pytest.approx((2 / 3 + 3 * 2 / 3) / 5)
  assert vqa_accuracy(["2", "3"], [ten(4), ten(4)]) == pytest.approx((1.0 + 1.0) / 2)
  with pytest.raises(ValueError, match="at least 2"):
    vqa_accuracy(["2"], [["2"]])
  with pytest.raises(ValueError, match="1 predictions but 2"):
    vqa_accuracy(["2"], [ten(1), ten(2)])


def test_exact_match_accuracy():
  assert exact_match_accuracy(["Yes.", "the left", "Two"], ["yes", "right", "2"]) == pytest.approx(2 / 3)
  assert exact_match_accuracy(["a dog", "cat"], [["dog", "puppy"], ["kitten"]]) == 0.5


def test_box_iou():
  assert box_iou([0, 0, 2, 2], [1, 1, 3, 3]) == pytest.approx(1 / 7)
  assert box_iou([0, 0, 1, 1], [0, 0, 1, 1]) == 1.0
  assert box_iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0
  assert box_iou([0.5, 0.5, 0.5, 0.9], [0.5, 0.5, 0.6, 0.9]) == 0.0  # zero width


def test_rec_accuracy():
  gt = [0.0, 0.0, 0.5, 0.5]
  cases = {  # predicted text -> counted correct; IoU with gt is height / 0.5 for [0,0,0.5,height]
    "Answer: [0.000,0.000,0.500,0.500]": True,
    "[0.000,0.000,0.500,0.251]": True,  # IoU 0.502
    "[0.000,0.000,0.500,0.250]": True,  # IoU 0.5 exactly: >= threshold
    "[0.000,0.000,0.500,0.249]": False,  # IoU 0.498
    "I cannot find it.": False,
    "[0.1,0.2]": False,
    "[0.300,0.300,0.300,0.300]": False,  # degenerate
    "[0.600,0.600,0.900,0.900;0.000,0.000,0.500,0.500]": False,  # only the first box counts
    "[0.000,0.000,0.500,0.500];[0.6,0.6,0.9,0.9]": True,
    "it is at [0, 0, 1, 1] in the image": False,  # IoU 0.25
  }
  for text, expected in cases.items():
    assert rec_accuracy([text], [gt]) == float(expected), text
  assert rec_accuracy(["[0,0,1,1]", "[ 0 , 0 , 1 , 1 ]"], [[0, 0, 1, 1]] * 2) == 1.0
  assert rec_accuracy(list(cases), [gt] * len(cases)) == pytest.approx(4 / 10)
  assert rec_accuracy(["[0.000,0.000,0.500,0.249]"], [gt], iou_threshold=0.4) == 1.0


def test_pope_scores():
  predictions_and_labels = [
    ("Yes, there is a dog.", "yes"),  # TP
    ("No, there is not.", "no"),  # TN
    ("There is no dog in the image.", "yes"),  # FN
    ("Not at all", "no"),  # FP: the script only looks for 'No', 'no' and 'not'
    ("yes. But no cat", "yes"),  # TP: only the first sentence counts
    ("I do not see one", "no"),  # TN
    ("Yes", "no"),  # FP
  ]
  scores = pope_scores(*map(list, zip(*predictions_and_labels)))
  precision, recall = 2 / 4, 2 / 3
  assert scores == pytest.approx({
    "accuracy": 4 / 7, "precision": precision, "recall": recall,
    "f1": 2 * precision * recall / (precision + recall), "yes_ratio": 4 / 7})
  assert pope_scores(["no"], ["yes"])["precision"] == 0.0  # no predicted positives: 0, not a crash
  with pytest.raises(ValueError, match="'yes' or 'no'"):
    pope_scores(["yes"], ["Yes"])


def test_mean_reciprocal_rank():
  scores = [[0.1, 0.9, 0.5], [3.0, 2.0, 1.0], [1.0, 1.0, 1.0]]
  expected = (1 / 2 + 1 / 1 + 1 / 3) / 3  # ranks 2, 1 and 3 (a three-way tie counts against the gt)
  assert mean_reciprocal_rank(scores, [2, 0, 1]) == pytest.approx(expected)
  assert mean_reciprocal_rank(np.asarray(scores), [2, 0, 1]) == pytest.approx(expected)
  with pytest.raises(ValueError, match="outside its 3 options"):
    mean_reciprocal_rank(scores, [0, 0, 3])


def test_mmbench_circular_accuracy():
  question_ids = [10, 11, 12, 13, 20, 21, 30]
  groups = ["a", "a", "a", "a", "b", "b", "c"]
  correct = [True, True, True, True, True, False, True]
  assert mmbench_circular_accuracy(question_ids, groups, correct) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="question ids repeat"):
    mmbench_circular_accuracy([1, 1], ["a", "a"], [True, True])
