"""VisDial v1.0 (paper Table 1): every round's 100 answer options ranked by the model's likelihood.

  python -m lion_jax.evaluate --config=configs/eval/visdial.py --checkpoint=DIR \
      --config.records=visdial_1.0_val.json --config.image_root=VisualDialog_val2018 \
      [--config.dense_annotations=visdial_1.0_val_dense_annotations.json] [--output=DIR]

The file is read as published: `data.dialogs[].{image_id, caption, dialog[].{question, answer,
answer_options[100], gt_index}}`, whose question and answer fields index `data.questions` and
`data.answers`; the images are `VisualDialog_<split>_<image_id:012d>.jpg` in `image_root` (`split`
from the file, e.g. `val2018`). Every round that has answer options is asked: all ten of a val
dialog, the last one of a test dialog (which has no answer or `gt_index`).

The prompt (`PROMPT`, or `--config.prompt` with `{caption}`, `{history}`, `{question}`) gives the
caption, the earlier rounds as LAVIS's VisDial dataset writes them (`q: ... a: ...`), then the
question, as InstructBLIP evaluated VisDial by ranking the options with its likelihood. An option's
score is its mean log-likelihood per token (generate.mean_candidate_log_likelihood): the encoder
runs once per round and all 100 options go through the decoder in one batch.

Results (x100 but `mean_rank`): `R@1`, `R@5`, `R@10`, `MRR`, `mean_rank`, and `NDCG` over the densely
annotated rounds when `config.dense_annotations` is given. A split without `gt_index` writes the
official submission instead: a JSON list of `{"image_id", "round_id", "ranks"}`, `ranks[i]` the rank
(1 = best) of option i.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lion_jax.data import images, templates
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import MissingFile, UserError
from lion_jax.evaluation import metrics
from lion_jax.inference.batch import option_scores

PROMPT = "{caption}.{history} q: {question} a:"
PROMPT_FIELDS = ("caption", "history", "question")
NUM_OPTIONS = 100


@dataclasses.dataclass(frozen=True)
class Round:
  image_id: int
  round_id: int  # 1-based, as VisDial counts
  caption: str
  history: tuple[tuple[str, str], ...]  # (question, answer) of the earlier rounds
  question: str
  options: tuple[str, ...]
  gt_index: int | None  # None in the test split


def read_dialogs(path: str | Path) -> tuple[str, list[Round]]:
  """(split, the rounds to rank) of a VisDial v1.0 JSON; a malformed dialog is a UserError naming it."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"--config.records: no such VisDial file: {path}")
  try:
    document = json.loads(path.read_text(encoding="utf-8"))
    data = document["data"]
    questions, answers, dialogs = data["questions"], data["answers"], data["dialogs"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise UserError(f"{path}: not a VisDial v1.0 file (data.questions, data.answers, data.dialogs): {e!r}") from None
  split = str(document.get("split", "val2018"))
  rounds = []
  for d, dialog in enumerate(dialogs):
    where = f"{path}: data.dialogs[{d}]"
    try:
      history: list[tuple[str, str]] = []
      for r, turn in enumerate(dialog["dialog"]):
        question = questions[turn["question"]]
        if "answer_options" in turn:
          options = tuple(answers[i] for i in turn["answer_options"])
          if len(options) != NUM_OPTIONS:
            raise UserError(f"{where}.dialog[{r}]: {len(options)} answer options, VisDial has {NUM_OPTIONS}")
          gt = turn.get("gt_index")
          if gt is not None and not 0 <= gt < NUM_OPTIONS:
            raise UserError(f"{where}.dialog[{r}]: gt_index {gt} outside the {NUM_OPTIONS} options")
          rounds.append(Round(int(dialog["image_id"]), r + 1, dialog["caption"], tuple(history), question, options, gt))
        if "answer" in turn:
          history.append((question, answers[turn["answer"]]))
    except (KeyError, IndexError, TypeError) as e:
      raise UserError(f"{where}: malformed dialog ({e!r})") from None
  if not rounds:
    raise UserError(f"{path}: no round has answer_options")
  return split, rounds


def read_dense_annotations(path: str | Path) -> dict[tuple[int, int], np.ndarray]:
  """{(image_id, round_id): relevance of the 100 options} from visdial_1.0_val_dense_annotations.json."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"--config.dense_annotations: no such file: {path}")
  try:
    entries = json.loads(path.read_text(encoding="utf-8"))
    dense = {(int(e["image_id"]), int(e["round_id"])): np.asarray(e["gt_relevance"], np.float64) for e in entries}
  except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise UserError(f"{path}: expected a list of {{image_id, round_id, gt_relevance}}: {e!r}") from None
  bad = [key for key, relevance in dense.items() if relevance.shape != (NUM_OPTIONS,)]
  if bad:
    raise UserError(f"{path}: gt_relevance must hold {NUM_OPTIONS} values, not so for (image_id, round_id) {bad[:5]}")
  return dense


def check_prompt(template: str) -> str:
  """`template` if it names only VisDial's fields, else UserError."""
  return templates.check_prompt_fields(template, PROMPT_FIELDS, "VisDial fills")


def prompt(round_: Round, template: str = PROMPT) -> str:
  history = "".join(f" q: {q} a: {a}" for q, a in round_.history)
  return template.format(caption=round_.caption, history=history, question=round_.question)


def image_path(image_root: str | Path, split: str, image_id: int) -> Path:
  return Path(image_root) / f"VisualDialog_{split}_{image_id:012d}.jpg"


def round_scores(
  config,
  params,
  t5: T5Tokenizer,
  bert: BertTokenizer,
  rounds: Sequence[Round],
  image_root: str | Path,
  split: str,
  *,
  batch_size: int = 2,
  max_input_len: int = 128,
  max_qformer_len: int = 128,
  max_option_len: int = 32,
  template: str = PROMPT,
  progress: bool = True,
) -> np.ndarray:
  """[rounds, 100] mean log-likelihood per token of every option."""
  check_prompt(template)
  pixels_of: dict[int, np.ndarray | None] = {}  # the last batch's images: a dialog's rounds share one
  out = []
  iterator = range(0, len(rounds), batch_size)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, desc="visdial", unit="batch")
  for start in iterator:
    chunk = rounds[start : start + batch_size]
    pixels_of = {r.image_id: pixels_of.get(r.image_id) for r in chunk}  # a batch may span dialogs
    for image_id, pixels in pixels_of.items():
      if pixels is None:
        image = images.decode_image(image_path(image_root, split, image_id))
        pixels_of[image_id] = images.to_model_input(image, config.vit.image_size)
    out.append(
      option_scores(
        config,
        params,
        t5,
        bert,
        [pixels_of[r.image_id] for r in chunk],
        [prompt(r, template) for r in chunk],
        [r.options for r in chunk],
        num_options=NUM_OPTIONS,
        batch_size=batch_size,
        max_input_len=max_input_len,
        max_qformer_len=max_qformer_len,
        max_option_len=max_option_len,
      )
    )
  return np.concatenate(out)


def ranks(scores: np.ndarray) -> np.ndarray:
  """[N, 100] rank of each option (1 = best; equal scores keep the options' order), as submitted."""
  order = np.argsort(-metrics.nan_as_worst(scores), axis=1, kind="stable")
  result = np.empty_like(order)
  np.put_along_axis(result, order, np.arange(1, order.shape[1] + 1)[None], axis=1)
  return result


def scores(
  rounds: Sequence[Round], option_scores: np.ndarray, dense: dict[tuple[int, int], np.ndarray] | None = None
) -> dict[str, float]:
  """R@1, R@5, R@10, MRR, NDCG (x100) and the mean rank of the ground truth."""
  gt = [r.gt_index for r in rounds]
  results = {f"R@{k}": 100 * metrics.recall_at_k(option_scores, gt, k) for k in (1, 5, 10)}
  results["MRR"] = 100 * metrics.mean_reciprocal_rank(option_scores, gt)
  results["mean_rank"] = metrics.mean_rank(option_scores, gt)
  if dense is not None:
    annotated = [
      (i, dense[(r.image_id, r.round_id)]) for i, r in enumerate(rounds) if (r.image_id, r.round_id) in dense
    ]
    if not annotated:
      raise UserError("no evaluated round has a dense annotation (image_id and round_id must match)")
    results["NDCG"] = 100 * metrics.ndcg([option_scores[i] for i, _ in annotated], [rel for _, rel in annotated])
  return results


def write_submission(path: str | Path, rounds: Sequence[Round], option_scores: np.ndarray) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  entries = [
    {"image_id": r.image_id, "round_id": r.round_id, "ranks": row.tolist()}
    for r, row in zip(rounds, ranks(option_scores))
  ]
  path.write_text(json.dumps(entries))
  return path
