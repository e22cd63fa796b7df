"""MMBench (paper Table 3) from its published TSV, with CircularEval.

  python -m lion_jax.evaluate --config=configs/eval/mmbench.py --checkpoint=DIR \
      --config.records=mmbench_dev_en.tsv [--output=DIR]

The TSV is read as published: `index, question, hint, A, B, C, D, answer, category, l2-category,
image` (base64 image; fewer than four options leave the later option cells empty; a test split has
no answers). CircularEval asks each question once per rotation of its options and counts it solved
only if every rotation is answered correctly. A TSV that already holds the rotated copies (row
`index + k * 1e6` is rotation k of question `index % 1e6`) is used as it is; otherwise the rotations
are made here.

The prompt (`PROMPT`, or `--config.prompt` with the fields `{hint}`, `{question}`, `{options}`) puts
the hint before the question and lists the options, as the common MMBench prompt does
(`Hint: ... Question: ... Options: A. ... B. ... Answer with the option's letter from the given
choices directly.`). The model's choice is the option it scores highest: the mean log-likelihood per
token of each option's text as the answer (`score_candidates`). That always names one of the options
(a generated answer may be free text a parser has to guess from, and a model not tuned to answer
with letters often writes one), and the per-token mean keeps a short option from winning merely by
being short.

Results (x100): `accuracy` (circular), `vanilla_accuracy` (the first rotation only), and the circular
accuracy per `category/<name>` and `l2_category/<name>`. A split without answers writes
`mmbench_submission.xlsx` (the leaderboard's upload: the TSV's columns without the image, plus
`prediction`, one row per rotation) instead of scores.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lion_jax.data import images, templates
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import MissingFile, UserError
from lion_jax.evaluation import metrics, xlsx
from lion_jax.inference.batch import option_scores

log = logging.getLogger(__name__)

LETTERS = "ABCD"
NO_CHOICE = -1  # `choose` found no option with a finite score
CIRCULAR_STRIDE = 1_000_000  # rotation k of question g has index g + k * CIRCULAR_STRIDE
REQUIRED_COLUMNS = ("index", "question", "A", "B", "image")
PROMPT = (
  "{hint}Question: {question} Options: {options} Answer with the option's letter from the given choices directly."
)
PROMPT_FIELDS = ("hint", "question", "options")
# The paper's Table 3 columns are MMBench's l2-categories.
PAPER_L2_NAMES = {
  "LR": "logic_reasoning",
  "AR": "attribute_reasoning",
  "RR": "relation_reasoning",
  "FP-S": "finegrained_perception (instance-level)",
  "FP-C": "finegrained_perception (cross-instance)",
  "CP": "coarse_perception",
}


@dataclasses.dataclass(frozen=True)
class Question:
  index: int
  question: str
  hint: str
  options: tuple[str, ...]  # the texts of A, B, (C, (D)), in order
  answer: str | None  # a letter; None in a split without answers
  category: str
  l2_category: str
  image: bytes
  row: dict  # the TSV row as read (for the submission file)

  @property
  def group(self) -> int:
    return self.index % CIRCULAR_STRIDE

  @property
  def rotation(self) -> int:
    return self.index // CIRCULAR_STRIDE


def read_tsv(path: str | Path) -> list[Question]:
  """The questions of an MMBench TSV; a missing column or a bad row is a UserError naming it."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"--config.records: no such MMBench TSV: {path}")
  csv.field_size_limit(sys.maxsize)  # base64 images are long cells
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.DictReader(f, delimiter="\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise UserError(f"{path}: not an MMBench TSV, it lacks the columns {missing} (has {reader.fieldnames})")
    return [_question(row, f"{path}:{line}") for line, row in enumerate(reader, 2)]


def _question(row: dict, where: str) -> Question:
  try:
    index = int(row["index"])
  except ValueError:
    raise UserError(f"{where}: index {row['index']!r} is not an integer") from None
  cells = [(row.get(letter) or "").strip() for letter in LETTERS]
  count = max((i + 1 for i, cell in enumerate(cells) if cell), default=0)  # through the last given option
  if count < 2 or not all(cells[:count]):
    raise UserError(f"{where}: options {dict(zip(LETTERS, cells))}: need A, B, ... without gaps")
  answer = (row.get("answer") or "").strip() or None
  if answer is not None and answer not in LETTERS[:count]:
    raise UserError(f"{where}: answer {answer!r} is not one of the options {list(LETTERS[:count])}")
  try:
    image = base64.b64decode(row["image"], validate=True)
  except (binascii.Error, ValueError) as e:
    raise UserError(f"{where}: the image cell is not base64 ({e})") from None
  return Question(
    index=index,
    question=row["question"].strip(),
    hint=(row.get("hint") or "").strip(),
    options=tuple(cells[:count]),
    answer=answer,
    category=(row.get("category") or "").strip(),
    l2_category=(row.get("l2-category") or "").strip(),
    image=image,
    row={k: v for k, v in row.items() if k != "image"},
  )


def rotate(question: Question, k: int) -> Question:
  """Rotation k: option i moves to position (i - k) mod n, the answer letter with it."""
  n = len(question.options)
  options = question.options[k:] + question.options[:k]
  answer = None if question.answer is None else LETTERS[(LETTERS.index(question.answer) - k) % n]
  row = dict(question.row, index=str(question.index + k * CIRCULAR_STRIDE), answer=answer or "")
  row.update({LETTERS[i]: options[i] if i < n else "" for i in range(len(LETTERS))})
  return dataclasses.replace(
    question, index=question.index + k * CIRCULAR_STRIDE, options=options, answer=answer, row=row
  )


def circular_variants(questions: Sequence[Question]) -> list[Question]:
  """Every rotation of every question: the TSV's own when it holds them, else made here."""
  if any(q.rotation for q in questions):
    firsts = {q.group for q in questions if q.rotation == 0}
    orphans = sorted({q.index for q in questions if q.group not in firsts})
    if orphans:
      raise UserError(f"rotated MMBench rows without their first rotation (index % 1e6): {orphans[:10]}")
    return list(questions)
  return [rotate(q, k) for q in questions for k in range(len(q.options))]


def check_prompt(template: str) -> str:
  """`template` if it names only MMBench's fields (`{hint}` is "Hint: ... " or empty), else UserError."""
  return templates.check_prompt_fields(template, PROMPT_FIELDS, "MMBench fills")


def prompt(question: Question, template: str = PROMPT) -> str:
  options = " ".join(f"{letter}. {text}" for letter, text in zip(LETTERS, question.options))
  hint = f"Hint: {question.hint} " if question.hint else ""
  return template.format(hint=hint, question=question.question, options=options)


def choose(
  config,
  params,
  t5: T5Tokenizer,
  bert: BertTokenizer,
  questions: Sequence[Question],
  *,
  batch_size: int = 16,
  max_input_len: int = 128,
  max_qformer_len: int = 128,
  max_option_len: int = 64,
  template: str = PROMPT,
  progress: bool = True,
) -> list[int]:
  """The option index each question's model scores highest (mean log-likelihood per token), or
  NO_CHOICE where no option has a finite score (a diverged model): a wrong answer, never `A`."""
  check_prompt(template)
  chosen: list[int] = []
  iterator = range(0, len(questions), batch_size)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, desc="mmbench", unit="batch")
  for start in iterator:
    chunk = questions[start : start + batch_size]
    scores = option_scores(
      config,
      params,
      t5,
      bert,
      [images.to_model_input(images.decode_image(q.image), config.vit.image_size) for q in chunk],
      [prompt(q, template) for q in chunk],
      [q.options for q in chunk],
      num_options=len(LETTERS),
      batch_size=batch_size,
      max_input_len=max_input_len,
      max_qformer_len=max_qformer_len,
      max_option_len=max_option_len,
    )
    scores = metrics.nan_as_worst(scores)
    best = np.argmax(scores, axis=1)
    chosen += [int(i) if np.isfinite(row[i]) else NO_CHOICE for row, i in zip(scores, best)]
  return chosen


def letter(chosen: int) -> str:
  """The letter of a chosen option index; "" for NO_CHOICE (or any index without a letter)."""
  return LETTERS[chosen] if 0 <= chosen < len(LETTERS) else ""


def scores(questions: Sequence[Question], chosen: Sequence[int]) -> dict[str, float]:
  """CircularEval accuracy (x100) overall, on the first rotation, and per category / l2-category."""
  correct = [letter(c) == q.answer for q, c in zip(questions, chosen)]  # answers are offered letters
  circular = lambda rows: (
    100
    * metrics.mmbench_circular_accuracy(
      [questions[i].index for i in rows], [questions[i].group for i in rows], [correct[i] for i in rows]
    )
  )
  everything = range(len(questions))
  firsts = [i for i in everything if questions[i].rotation == 0]
  results = {"accuracy": circular(everything), "vanilla_accuracy": 100 * float(np.mean([correct[i] for i in firsts]))}
  for field, prefix in (("category", "category"), ("l2_category", "l2_category")):
    for name in sorted({getattr(q, field) for q in questions} - {""}):
      results[f"{prefix}/{name}"] = circular([i for i in everything if getattr(questions[i], field) == name])
  return results


def write_submission(path: str | Path, questions: Sequence[Question], chosen: Sequence[int]) -> Path:
  """The leaderboard upload: the TSV's columns (no image) plus `prediction`, one row per rotation."""
  columns = [c for c in questions[0].row if c != "image"]
  rows = [[q.row.get(c, "") for c in columns] + [letter(i)] for q, i in zip(questions, chosen)]
  return xlsx.write(path, [*columns, "prediction"], rows)
