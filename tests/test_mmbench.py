"""MMBench: the published TSV layout, CircularEval rotations, scores by hand, the leaderboard file."""

from __future__ import annotations

import base64
import csv
import io
import zipfile
from xml.etree import ElementTree

import pytest
from PIL import Image

from lion_jax.errors import UserError
from lion_jax.evaluation import mmbench

HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]


def png_base64(color) -> str:
  buffer = io.BytesIO()
  Image.new("RGB", (20, 12), color).save(buffer, format="PNG")
  return base64.b64encode(buffer.getvalue()).decode()


def write_tsv(path, rows, header=HEADER):
  with open(path, "w", encoding="utf-8", newline="") as f:
    writer = csv.writer(f, delimiter="\t")
    writer.writerow(header)
    for row in rows:
      writer.writerow([row.get(c, "") for c in header])
  return path


QUESTIONS = [  # a 4-option and a 3-option question, as the dev split has them
  dict(
    index=7, question="What color is it?", hint="A square.", A="red", B="green", C="blue", D="white", answer="C",
    category="color", **{"l2-category": "attribute_reasoning"}, image=png_base64("blue"),
  ),
  dict(
    index=12, question="How many?", A="one", B="two", C="three", answer="A",
    category="count", **{"l2-category": "finegrained_perception (instance-level)"}, image=png_base64("red"),
  ),
]  # fmt: skip


def test_the_tsv_is_read_as_published_and_rotated_when_it_holds_no_rotations(tmp_path):
  questions = mmbench.read_tsv(write_tsv(tmp_path / "dev.tsv", QUESTIONS))
  assert [(q.index, q.options, q.answer, q.hint) for q in questions] == [
    (7, ("red", "green", "blue", "white"), "C", "A square."),
    (12, ("one", "two", "three"), "A", ""),
  ]
  assert Image.open(io.BytesIO(questions[0].image)).size == (20, 12)
  variants = mmbench.circular_variants(questions)
  assert [(q.index, q.options, q.answer) for q in variants] == [
    (7, ("red", "green", "blue", "white"), "C"),
    (1_000_007, ("green", "blue", "white", "red"), "B"),
    (2_000_007, ("blue", "white", "red", "green"), "A"),
    (3_000_007, ("white", "red", "green", "blue"), "D"),
    (12, ("one", "two", "three"), "A"),
    (1_000_012, ("two", "three", "one"), "C"),
    (2_000_012, ("three", "one", "two"), "B"),
  ]
  assert [q.group for q in variants] == [7] * 4 + [12] * 3
  assert mmbench.prompt(variants[1]) == (
    "Hint: A square. Question: What color is it? Options: A. green B. blue C. white D. red "
    "Answer with the option's letter from the given choices directly."
  )
  assert mmbench.prompt(variants[4]).startswith("Question: How many? Options: A. one B. two C. three Answer")


def test_a_tsv_with_its_own_rotations_is_used_as_it_is(tmp_path):
  own = [QUESTIONS[1], dict(QUESTIONS[1], index=1_000_012, A="three", B="one", C="two", answer="B")]
  variants = mmbench.circular_variants(mmbench.read_tsv(write_tsv(tmp_path / "rotated.tsv", own)))
  assert [(q.index, q.options, q.answer) for q in variants] == [
    (12, ("one", "two", "three"), "A"),
    (1_000_012, ("three", "one", "two"), "B"),
  ]
  orphan = write_tsv(tmp_path / "orphan.tsv", [dict(QUESTIONS[1], index=1_000_099)])
  with pytest.raises(UserError, match=r"without their first rotation.*\[1000099\]"):
    mmbench.circular_variants(mmbench.read_tsv(orphan))


def test_circular_accuracy_vanilla_accuracy_and_categories_by_hand(tmp_path):
  variants = mmbench.circular_variants(mmbench.read_tsv(write_tsv(tmp_path / "dev.tsv", QUESTIONS)))
  letters = lambda text: ["ABCD".index(c) for c in text]
  # Question 7: every rotation right (C B A D); question 12: first right, second wrong (A B* B).
  scores = mmbench.scores(variants, letters("CBAD" + "ABB"))
  assert scores == {
    "accuracy": 50.0,
    "vanilla_accuracy": 100.0,
    "category/color": 100.0,
    "category/count": 0.0,
    "l2_category/attribute_reasoning": 100.0,
    "l2_category/finegrained_perception (instance-level)": 0.0,
  }
  assert mmbench.scores(variants, letters("DBAD" + "ACB"))["vanilla_accuracy"] == 50.0  # 7 wrong first
  assert mmbench.scores(variants, letters("DBAD" + "ACB"))["accuracy"] == 50.0


def test_bad_tsvs_name_file_line_and_column(tmp_path):
  with pytest.raises(UserError, match=r"lacks the columns \['image'\]"):
    mmbench.read_tsv(write_tsv(tmp_path / "a.tsv", QUESTIONS, header=HEADER[:-1]))
  gap = write_tsv(tmp_path / "b.tsv", [dict(QUESTIONS[0], B="")])
  with pytest.raises(UserError, match=r"b\.tsv:2: options .*need A, B, \.\.\. without gaps"):
    mmbench.read_tsv(gap)
  wrong = write_tsv(tmp_path / "c.tsv", [QUESTIONS[0], dict(QUESTIONS[1], answer="D")])
  with pytest.raises(UserError, match=r"c\.tsv:3: answer 'D' is not one of the options \['A', 'B', 'C'\]"):
    mmbench.read_tsv(wrong)
  with pytest.raises(UserError, match=r"d\.tsv:2: the image cell is not base64"):
    mmbench.read_tsv(write_tsv(tmp_path / "d.tsv", [dict(QUESTIONS[0], image="not base64!")]))
  with pytest.raises(UserError, match=r"MMBench fills \{hint\}, \{question\}, \{options\}, not \['choices'\]"):
    mmbench.check_prompt("{question} {choices}")


def read_xlsx(path) -> list[list[str]]:
  """The first sheet's inline-string cells, read with the standard library (independent of the writer)."""
  ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
  with zipfile.ZipFile(path) as z:
    assert "xl/workbook.xml" in z.namelist() and "[Content_Types].xml" in z.namelist()
    sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
  return [[t.text or "" for t in row.iterfind(".//m:t", ns)] for row in sheet.iterfind(".//m:row", ns)]


def test_the_leaderboard_file_holds_every_rotation_and_its_predicted_letter(tmp_path):
  test_split = [{k: v for k, v in q.items() if k != "answer"} for q in QUESTIONS]
  questions = mmbench.circular_variants(mmbench.read_tsv(write_tsv(tmp_path / "test.tsv", test_split)))
  assert all(q.answer is None for q in questions)
  path = mmbench.write_submission(tmp_path / "out" / "mmbench_submission.xlsx", questions, [0, 1, 2, 3, 0, 1, 2])
  rows = read_xlsx(path)
  assert rows[0] == [c for c in HEADER if c != "image"] + ["prediction"]
  by_index = {row[0]: dict(zip(rows[0], row)) for row in rows[1:]}
  assert sorted(by_index) == sorted(str(q.index) for q in questions)
  assert by_index["1000007"]["A"] == "green" and by_index["1000007"]["prediction"] == "B"
  assert by_index["2000012"]["D"] == "" and by_index["2000012"]["prediction"] == "C"
