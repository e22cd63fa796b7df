"""VisDial v1.0: the published JSON layout (val with dense annotations, test split), prompts, ranks."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lion_jax.errors import UserError
from lion_jax.evaluation import visdial

QUESTIONS = ["is it sunny", "how many people", "any dogs", "what color is the sky"]
ANSWERS = [f"answer {i}" for i in range(100)] + ["yes", "two", "no", "blue"]


def dialog(image_id, caption, turns):
  """turns: (question index, answer index or None, gt_index or None, with answer options?)."""
  rounds = []
  for q, a, gt, asked in turns:
    turn = {"question": q}
    if a is not None:
      turn["answer"] = a
    if asked:
      turn["answer_options"] = list(range(100)) if gt is None else [a, *[i for i in range(100) if i != a]][:100]
      if gt is not None:
        turn["gt_index"] = 0
    rounds.append(turn)
  return {"image_id": image_id, "caption": caption, "dialog": rounds}


def visdial_file(path, split, dialogs):
  path.write_text(
    json.dumps(
      {"version": "1.0", "split": split, "data": {"questions": QUESTIONS, "answers": ANSWERS, "dialogs": dialogs}}
    )
  )
  return path


def val_file(path):
  return visdial_file(
    path,
    "val2018",
    [
      dialog(42, "a man on a beach", [(0, 100, 0, True), (1, 101, 0, True)]),
      dialog(7, "a dog in a park", [(2, 100, 0, True)]),
    ],
  )


def test_every_round_with_options_is_read_with_its_history(tmp_path):
  split, rounds = visdial.read_dialogs(val_file(tmp_path / "visdial_1.0_val.json"))
  assert split == "val2018" and [(r.image_id, r.round_id, r.gt_index) for r in rounds] == [
    (42, 1, 0),
    (42, 2, 0),
    (7, 1, 0),
  ]
  assert rounds[1].history == (("is it sunny", "yes"),) and rounds[1].options[0] == "two"
  assert len(rounds[0].options) == 100
  assert visdial.prompt(rounds[1]) == "a man on a beach. q: is it sunny a: yes q: how many people a:"
  assert visdial.prompt(rounds[0]) == "a man on a beach. q: is it sunny a:"
  assert visdial.image_path("/img", split, 42).name == "VisualDialog_val2018_000000000042.jpg"


def test_the_test_split_asks_the_last_round_and_the_submission_ranks_every_option(tmp_path):
  test = visdial_file(
    tmp_path / "visdial_1.0_test.json",
    "test2018",
    [dialog(5, "two cats", [(0, 100, None, False), (3, None, None, True)])],
  )
  split, rounds = visdial.read_dialogs(test)
  assert split == "test2018" and [(r.round_id, r.gt_index, r.history) for r in rounds] == [
    (2, None, (("is it sunny", "yes"),))
  ]
  scores = np.arange(100.0)[None] * -1.0  # option 0 scores highest
  scores[0, 7] = 5.0  # ... but option 7 higher still
  entries = json.loads(visdial.write_submission(tmp_path / "out" / "sub.json", rounds, scores).read_text())
  assert [(e["image_id"], e["round_id"]) for e in entries] == [(5, 2)]
  ranks = entries[0]["ranks"]
  assert ranks[7] == 1 and ranks[0] == 2 and ranks[1] == 3 and sorted(ranks) == list(range(1, 101))


def test_scores_with_dense_annotations_by_hand(tmp_path):
  _, rounds = visdial.read_dialogs(val_file(tmp_path / "val.json"))
  scores = np.zeros((3, 100))
  scores[0, 0] = 1.0  # ground truth first
  scores[1, 3] = 1.0  # ground truth (0) ties the other 98 at 0 behind option 3: rank 100
  scores[2, :4] = [0.5, 0.9, 0.8, 0.7]  # ground truth fourth
  dense_path = tmp_path / "dense.json"
  relevance = [0.0] * 100
  relevance[0], relevance[1] = 1.0, 0.5
  dense_path.write_text(json.dumps([{"image_id": 7, "round_id": 1, "gt_relevance": relevance}]))
  results = visdial.scores(rounds, scores, visdial.read_dense_annotations(dense_path))
  assert results["R@1"] == pytest.approx(100 / 3) and results["R@5"] == pytest.approx(200 / 3)
  assert results["R@10"] == pytest.approx(200 / 3)
  assert results["MRR"] == pytest.approx(100 * (1 + 1 / 100 + 1 / 4) / 3)
  assert results["mean_rank"] == pytest.approx((1 + 100 + 4) / 3)
  # Image 7 round 1 ranks options 1, 2, 3, 0: relevant 0 (1.0) and 1 (0.5), k = 2 -> DCG 0.5, ideal 1 + 0.5/log2(3).
  assert results["NDCG"] == pytest.approx(100 * 0.5 / (1 + 0.5 / np.log2(3)))


def test_malformed_files_name_what_is_wrong(tmp_path):
  (tmp_path / "a.json").write_text("{}")
  with pytest.raises(UserError, match=r"a\.json: not a VisDial v1\.0 file"):
    visdial.read_dialogs(tmp_path / "a.json")
  short = visdial_file(tmp_path / "b.json", "val2018", [dialog(1, "x", [(0, 100, 0, True)])])
  document = json.loads(short.read_text())
  document["data"]["dialogs"][0]["dialog"][0]["answer_options"] = [0, 1, 2]
  short.write_text(json.dumps(document))
  with pytest.raises(UserError, match=r"b\.json: data\.dialogs\[0\]\.dialog\[0\]: 3 answer options, VisDial has 100"):
    visdial.read_dialogs(short)
  (tmp_path / "dense.json").write_text(json.dumps([{"image_id": 1, "round_id": 1, "gt_relevance": [1.0]}]))
  with pytest.raises(UserError, match=r"gt_relevance must hold 100 values"):
    visdial.read_dense_annotations(tmp_path / "dense.json")
  with pytest.raises(UserError, match=r"VisDial fills \{caption\}, \{history\}, \{question\}, not \['answer'\]"):
    visdial.check_prompt("{question} {answer}")
