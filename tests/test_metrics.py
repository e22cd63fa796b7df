"""Benchmark metrics against references: pycocoevalcap's scorers and PTBTokenizer, and cases worked
by hand from the official VQA, POPE, VisDial and MMBench algorithms."""

from __future__ import annotations

import math

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
from tests.conftest import require, require_program

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


def test_cider_on_a_two_image_toy_worked_by_hand():
  """CIDEr-D (pycocoevalcap): per n <= 4, the cosine of clipped tf-idf vectors, idf = log(N / df) over the
  N = 2 images' references, times exp(-delta^2 / 72) for the length difference delta (counted in
  bigrams); the mean over n, times 10; then the mean over images."""
  require("pycocoevalcap")
  # idf: 'a' is in both images' references (log 2/2 = 0), every other n-gram in one or none (log 2).
  # Image 1, 'a cat cat' vs 'a cat sat' (delta 0): unigrams (a 0, cat 2g) vs (a 0, cat g, sat g): clipped
  # cat g*g / (2g * g sqrt 2); bigrams 'a cat' shared of two each: 1/2; the trigram differs; no 4-grams.
  image_1 = 10 * (1 / (2 * math.sqrt(2)) + 1 / 2) / 4
  # Image 2, 'a dog' vs 'a dog ran' (delta = 1 - 2 bigrams): unigrams and bigrams 1/sqrt 2 each.
  image_2 = 10 * math.exp(-1 / 72) * (2 / math.sqrt(2)) / 4
  references = {"1": ["a cat sat"], "2": ["a dog ran"]}
  assert cider(references, {"1": "a cat cat", "2": "a dog"}) == pytest.approx((image_1 + image_2) / 2, abs=1e-9)


def test_bleu4_on_a_corpus_worked_by_hand(capsys):
  """Corpus BLEU-4 (pycocoevalcap, closest reference length): clipped n-gram matches summed over the
  corpus, the geometric mean of the four precisions, times the brevity penalty exp(1 - r / c)."""
  require("pycocoevalcap")
  references = {"1": ["the cat sat on the mat"], "2": ["a dog ran"]}
  predictions = {"1": "the cat sat on a mat", "2": "a dog"}
  # n = 1..4 matches / guesses: (5 + 2) / (6 + 2), (3 + 1) / (5 + 1), (2 + 0) / (4 + 0), (1 + 0) / (3 + 0);
  # c = 8 predicted tokens, r = 6 + 3 reference tokens.
  expected = (7 / 8 * 4 / 6 * 2 / 4 * 1 / 3) ** (1 / 4) * math.exp(1 - 9 / 8)
  assert bleu4(references, predictions) == pytest.approx(expected, abs=1e-9)
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


def test_simple_tokenizer_matches_ptb_tokenizer_on_raw_captions():
  require("pycocoevalcap")
  require_program("java")  # PTBTokenizer is Java; .ci/run installs a JRE
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  captions = [c for refs in RAW_REFERENCES.values() for c in refs] + list(RAW_PREDICTIONS.values())
  ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
  assert [simple_tokenize(c) for c in captions] == [ptb[i][0] for i in range(len(captions))]
  assert simple_tokenize(RAW_PREDICTIONS["3"]) == (
    "it 's 3.5 meters tall at 10:30 a.m. and it costs $ 5 -lrb- 50 % off -rrb-"
  )
  assert cider(RAW_REFERENCES, RAW_PREDICTIONS, tokenizer="ptb") == pytest.approx(
    cider(RAW_REFERENCES, RAW_PREDICTIONS), abs=1e-6
  )


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


def test_rec_score_normalises_boxes_by_their_own_image_width_and_height():
  """Ground-truth pixel boxes become [0, 1] coordinates of their image: x by the width, y by the height."""
  from lion_jax.data.records import Record
  from lion_jax.evaluation import runner

  records = [
    Record(
      "region_level", "rec", image="wide.jpg", expression="the dog", boxes=[[64, 12, 320, 36]], width=640, height=48
    ),  # [0.1, 0.25, 0.5, 0.75]
    Record(
      "region_level", "rec", image="tall.jpg", expression="the cat", boxes=[[12, 64, 36, 320]], width=48, height=640
    ),
  ]  # [0.25, 0.1, 0.75, 0.5]
  right = ["[0.100,0.250,0.500,0.750]", "Answer: [0.250,0.100,0.750,0.500]"]
  assert runner.score("rec", records, right) == {"accuracy": 100.0}
  assert runner.score("rec", records, right[::-1]) == {"accuracy": 0.0}  # each box on the other image


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
  assert scores == pytest.approx(
    {
      "accuracy": 4 / 7,
      "precision": precision,
      "recall": recall,
      "f1": 2 * precision * recall / (precision + recall),
      "yes_ratio": 4 / 7,
    }
  )
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


def test_visdial_recall_mean_rank_and_ndcg_by_hand():
  from lion_jax.evaluation.metrics import mean_rank, ndcg, recall_at_k

  scores = [[0.1, 0.9, 0.5, 0.3], [3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]]
  gt = [2, 0, 1]  # ranks 2, 1, 4 (the four-way tie counts against the ground truth)
  assert [recall_at_k(scores, gt, k) for k in (1, 2, 4)] == pytest.approx([1 / 3, 2 / 3, 1.0])
  assert mean_rank(scores, gt) == pytest.approx(7 / 3)
  # Round 1 ranks the options 1, 2, 3, 0; two are relevant (k = 2): option 1 (1.0) and option 3 (0.5).
  # DCG@2 = 1.0 / log2(2) + 0 / log2(3); ideal = 1.0 / log2(2) + 0.5 / log2(3).
  first = 1.0 / (1.0 + 0.5 / np.log2(3))
  # Round 2 ranks them 0, 1, 2, 3; the one relevant option (2) comes third, outside the top k = 1.
  assert ndcg(scores[:2], [[0, 1.0, 0, 0.5], [0, 0, 1.0, 0]]) == pytest.approx((first + 0.0) / 2)
  assert ndcg([scores[2]], [[0, 0, 0, 1.0]]) == 0.0  # equal scores keep option order: option 3 is last
  with pytest.raises(ValueError, match="without any relevant option"):
    ndcg([scores[0]], [[0, 0, 0, 0]])


def test_mmbench_circular_accuracy():
  question_ids = [10, 11, 12, 13, 20, 21, 30]
  groups = ["a", "a", "a", "a", "b", "b", "c"]
  correct = [True, True, True, True, True, False, True]
  assert mmbench_circular_accuracy(question_ids, groups, correct) == pytest.approx(2 / 3)
  with pytest.raises(ValueError, match="question ids repeat"):
    mmbench_circular_accuracy([1, 1], ["a", "a"], [True, True])
