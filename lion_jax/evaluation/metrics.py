"""Benchmark metrics, each reproducing the official script of its benchmark so numbers compare with papers.

Captioning (CIDEr, BLEU-4) calls pycocoevalcap's scorers, imported when used so that the other
metrics work without it. Everything else is plain Python/NumPy written after the official scripts
named in each docstring.

Whatever a model outputs scores: a degenerate prediction (empty text, no box or a malformed one, a
NaN score) is a wrong answer, never an exception or a skipped example, and every mean is over the
examples asked.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from lion_jax.data.boxes import parse_first_box
from lion_jax.errors import UserError

# --------------------------------------------------------------------------------------------------
# Captioning: pycocoevalcap scorers on PTB-style tokens
# --------------------------------------------------------------------------------------------------

# pycocoevalcap runs Stanford PTBTokenizer with -lowerCase and then drops the tokens
# '' ' `` ` . ? ! , : - -- ... ; (its PUNCTUATIONS list). The rules below give the same tokens on
# typical captions without Java. PTB writes brackets as -LRB- etc., which -lowerCase turns into
# -lrb-, which that list (upper-case) misses: COCO scores keep them, and so do we.
_CANNOT = re.compile(r"\bcannot\b")
_DROPPED_PUNCTUATION = re.compile(
  r"""["`?!;]"""  # always split off and dropped
  r"|\.(?!\w)(?<!\.[a-z]\.)"  # a word-final period, unless it closes u.s. / a.m. / e.g.
  r"|(?<!\d)[,:]|[,:](?!\d)"  # commas and colons, except inside 1,000 and 10:30
  r"|(?<!\w)-|-(?!\w)"  # dashes, but not the hyphen of black-and-white
  r"|(?<!\w)'(?!(?:s|m|d|ll|re|ve)\b)|'(?!\w)"  # quote marks, but not 's or o'clock
)
_PTB_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_BRACKET = re.compile(r"[()\[\]{}]")
_SYMBOL = re.compile(r"([$%#])")
_CONTRACTION = re.compile(r"(?<=\w)(?=n't\b|'(?:s|m|d|ll|re|ve)\b)")


def simple_tokenize(text: str) -> str:
  """Java-free stand-in for pycocoevalcap's PTBTokenizer + punctuation removal: space-joined tokens.

  Lower-cases, drops the punctuation pycocoevalcap drops, splits `'s`/`n't`-style contractions and
  `$ % #` off as PTB does. Rare PTB rules (abbreviations such as `mr.`) are not reproduced.
  """
  text = _CANNOT.sub("can not", text.lower())
  text = _DROPPED_PUNCTUATION.sub(" ", text)
  text = _BRACKET.sub(lambda m: f" {_PTB_BRACKETS[m.group()]} ", text)
  text = _SYMBOL.sub(r" \1 ", text)
  text = _CONTRACTION.sub(" ", text)
  return " ".join(text.split())


def _check_same_ids(references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]) -> None:
  missing = [k for k in references if k not in predictions]
  extra = [k for k in predictions if k not in references]
  if missing or extra:
    raise UserError(
      f"prediction ids must equal reference ids: missing predictions for {missing[:10]}"
      f" ({len(missing)} in all), predictions without references {extra[:10]} ({len(extra)} in all)"
    )
  empty = [k for k, refs in references.items() if not refs]
  if empty:
    raise UserError(f"ids without reference captions: {empty[:10]} ({len(empty)} in all)")


def _ptb_tokenize(
  references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str]
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
  """Both sides through one PTBTokenizer call (one JVM start)."""
  if shutil.which("java") is None:
    raise RuntimeError(
      "tokenizer='ptb' runs Stanford PTBTokenizer (pycocoevalcap) and needs `java` on PATH;"
      " install a Java runtime or use tokenizer='simple'"
    )
  from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

  captions = {("reference", k): [{"caption": c} for c in refs] for k, refs in references.items()}
  captions.update({("prediction", k): [{"caption": predictions[k]}] for k in references})
  tokenized = PTBTokenizer().tokenize(captions)
  return ({k: tokenized[("reference", k)] for k in references}, {k: tokenized[("prediction", k)] for k in references})


def _tokenized(
  references: Mapping[Hashable, Sequence[str]], predictions: Mapping[Hashable, str], tokenizer: str
) -> tuple[dict[Hashable, list[str]], dict[Hashable, list[str]]]:
  """(gts, res) in the form pycocoevalcap's scorers take: id -> token strings."""
  _check_same_ids(references, predictions)
  if tokenizer == "simple":
    return (
      {k: [simple_tokenize(c) for c in refs] for k, refs in references.items()},
      {k: [simple_tokenize(predictions[k])] for k in references},
    )
  if tokenizer == "ptb":
    return _ptb_tokenize(references, predictions)
  raise UserError(f"tokenizer must be 'simple' or 'ptb', got {tokenizer!r}")


def cider(references: dict[str, list[str]], predictions: dict[str, str], *, tokenizer: str = "simple") -> float:
  """Corpus CIDEr-D from pycocoevalcap's `Cider` (the COCO caption evaluation); papers print it x100.

  IDF comes from the references of all ids given, so a single image scores 0.
  """
  from pycocoevalcap.cider.cider import Cider

  gts, res = _tokenized(references, predictions, tokenizer)
  score, _ = Cider().compute_score(gts, res)
  return float(score)


def bleu4(references: dict[str, list[str]], predictions: dict[str, str], *, tokenizer: str = "simple") -> float:
  """Corpus BLEU-4 from pycocoevalcap's `Bleu(4)` (closest reference length, as the COCO evaluation)."""
  from pycocoevalcap.bleu.bleu import Bleu

  gts, res = _tokenized(references, predictions, tokenizer)
  scores, _ = Bleu(4).compute_score(gts, res, verbose=0)  # verbose=0: no printing to stdout
  return float(scores[3])


# --------------------------------------------------------------------------------------------------
# VQA: the official VQAv2 evaluation (VQA API, PythonEvaluationTools/vqaEvaluation/vqaEval.py)
# --------------------------------------------------------------------------------------------------

# Copied entry for entry from vqaEval.py (including its keys with capitals, which never match after
# its lower-casing) so that the table can be checked against the official one.
_CONTRACTIONS = {
  "aint": "ain't",
  "arent": "aren't",
  "cant": "can't",
  "couldve": "could've",
  "couldnt": "couldn't",
  "couldn'tve": "couldn't've",
  "couldnt've": "couldn't've",
  "didnt": "didn't",
  "doesnt": "doesn't",
  "dont": "don't",
  "hadnt": "hadn't",
  "hadnt've": "hadn't've",
  "hadn'tve": "hadn't've",
  "hasnt": "hasn't",
  "havent": "haven't",
  "hed": "he'd",
  "hed've": "he'd've",
  "he'dve": "he'd've",
  "hes": "he's",
  "howd": "how'd",
  "howll": "how'll",
  "hows": "how's",
  "Id've": "I'd've",
  "I'dve": "I'd've",
  "Im": "I'm",
  "Ive": "I've",
  "isnt": "isn't",
  "itd": "it'd",
  "itd've": "it'd've",
  "it'dve": "it'd've",
  "itll": "it'll",
  "let's": "let's",
  "maam": "ma'am",
  "mightnt": "mightn't",
  "mightnt've": "mightn't've",
  "mightn'tve": "mightn't've",
  "mightve": "might've",
  "mustnt": "mustn't",
  "mustve": "must've",
  "neednt": "needn't",
  "notve": "not've",
  "oclock": "o'clock",
  "oughtnt": "oughtn't",
  "ow's'at": "'ow's'at",
  "'ows'at": "'ow's'at",
  "'ow'sat": "'ow's'at",
  "shant": "shan't",
  "shed've": "she'd've",
  "she'dve": "she'd've",
  "she's": "she's",
  "shouldve": "should've",
  "shouldnt": "shouldn't",
  "shouldnt've": "shouldn't've",
  "shouldn'tve": "shouldn't've",
  "somebody'd": "somebodyd",
  "somebodyd've": "somebody'd've",
  "somebody'dve": "somebody'd've",
  "somebodyll": "somebody'll",
  "somebodys": "somebody's",
  "someoned": "someone'd",
  "someoned've": "someone'd've",
  "someone'dve": "someone'd've",
  "someonell": "someone'll",
  "someones": "someone's",
  "somethingd": "something'd",
  "somethingd've": "something'd've",
  "something'dve": "something'd've",
  "somethingll": "something'll",
  "thats": "that's",
  "thered": "there'd",
  "thered've": "there'd've",
  "there'dve": "there'd've",
  "therere": "there're",
  "theres": "there's",
  "theyd": "they'd",
  "theyd've": "they'd've",
  "they'dve": "they'd've",
  "theyll": "they'll",
  "theyre": "they're",
  "theyve": "they've",
  "twas": "'twas",
  "wasnt": "wasn't",
  "wed've": "we'd've",
  "we'dve": "we'd've",
  "weve": "we've",
  "werent": "weren't",
  "whatll": "what'll",
  "whatre": "what're",
  "whats": "what's",
  "whatve": "what've",
  "whens": "when's",
  "whered": "where'd",
  "wheres": "where's",
  "whereve": "where've",
  "whod": "who'd",
  "whod've": "who'd've",
  "who'dve": "who'd've",
  "wholl": "who'll",
  "whos": "who's",
  "whove": "who've",
  "whyll": "why'll",
  "whyre": "why're",
  "whys": "why's",
  "wont": "won't",
  "wouldve": "would've",
  "wouldnt": "wouldn't",
  "wouldnt've": "wouldn't've",
  "wouldn'tve": "wouldn't've",
  "yall": "y'all",
  "yall'll": "y'all'll",
  "y'allll": "y'all'll",
  "yall'd've": "y'all'd've",
  "y'alld've": "y'all'd've",
  "y'all'dve": "y'all'd've",
  "youd": "you'd",
  "youd've": "you'd've",
  "you'dve": "you'd've",
  "youll": "you'll",
  "youre": "you're",
  "youve": "you've",
}
_NUMBER_WORDS = {
  "none": "0",
  "zero": "0",
  "one": "1",
  "two": "2",
  "three": "3",
  "four": "4",
  "five": "5",
  "six": "6",
  "seven": "7",
  "eight": "8",
  "nine": "9",
  "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [
  ";",
  "/",
  "[",
  "]",
  '"',
  "{",
  "}",
  "(",
  ")",
  "=",
  "+",
  "\\",
  "_",
  "-",
  ">",
  "<",
  "@",
  "`",
  ",",
  "?",
  "!",
]
_COMMA_BETWEEN_DIGITS = re.compile(r"(\d)(,)(\d)")
# Official periodStrip is "(?!<=\d)(\.)(?!\d)"; its "(?!<=\d)" (a typo for a look-behind) never
# fails in front of a period, so it removes every period not followed by a digit.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")
# The official call passes re.UNICODE (= 32) positionally, i.e. as `count`: at most 32 periods go.
_OFFICIAL_PERIOD_COUNT = int(re.UNICODE)


def _process_punctuation(text: str) -> str:
  """vqaEval.processPunctuation: a mark next to a space (or any text with 1,000-style digits) is
  deleted, otherwise it becomes a space (`black/white` -> `black white`)."""
  deletes = _COMMA_BETWEEN_DIGITS.search(text) is not None
  out = text
  for mark in _PUNCTUATION:
    if deletes or mark + " " in text or " " + mark in text:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out, count=_OFFICIAL_PERIOD_COUNT)


def _process_digit_article(text: str) -> str:
  """vqaEval.processDigitArticle: lower-case, number words -> digits, drop articles, add apostrophes."""
  words = [_NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
  return " ".join(words)


def normalize_vqa_answer(answer: str) -> str:
  """An answer as the official VQA evaluation compares it (whitespace, punctuation, digits, articles)."""
  answer = answer.replace("\n", " ").replace("\t", " ").strip()
  return _process_digit_article(_process_punctuation(answer))


def _check_lengths(predictions: Sequence, targets: Sequence, targets_name: str) -> None:
  if len(predictions) != len(targets):
    raise UserError(f"{len(predictions)} predictions but {len(targets)} {targets_name}")
  if len(predictions) == 0:
    raise UserError("no predictions to score")


def vqa_accuracy(predictions: list[str], answers: list[list[str]]) -> float:
  """Mean VQA accuracy in [0, 1], as vqaEval.py: per question, the mean over leaving each human
  answer out of min(#other answers equal to the prediction / 3, 1).

  Both prediction and answers are always normalised; vqaEval.py normalises only when the humans
  disagree (its stored answers are already normalised), which would score a raw `yes.` against ten
  `yes` as 0. A question needs >= 2 answers (leave-one-out over one answer is always 0): use
  `exact_match_accuracy` for single-answer sets.
  """
  _check_lengths(predictions, answers, "answer lists")
  total = 0.0
  for index, (prediction, human_answers) in enumerate(zip(predictions, answers)):
    if len(human_answers) < 2:
      raise UserError(f"question {index} has {len(human_answers)} answers; VQA accuracy needs at least 2")
    prediction = normalize_vqa_answer(prediction)
    is_match = [normalize_vqa_answer(a) == prediction for a in human_answers]
    matches = sum(is_match)
    total += sum(min((matches - left_out) / 3, 1.0) for left_out in is_match) / len(is_match)
  return total / len(predictions)


def exact_match_accuracy(predictions: list[str], answers: list[str] | list[list[str]]) -> float:
  """Share of predictions equal, after VQA normalisation, to the answer (or to any listed answer):
  the accuracy GQA, VSR and IconQA report."""
  _check_lengths(predictions, answers, "answers")
  correct = 0
  for prediction, accepted in zip(predictions, answers):
    accepted = [accepted] if isinstance(accepted, str) else accepted
    correct += normalize_vqa_answer(prediction) in {normalize_vqa_answer(a) for a in accepted}
  return correct / len(predictions)


# --------------------------------------------------------------------------------------------------
# Referring expression comprehension (RefCOCO/+/g): Acc@0.5 as Shikra / LION report it
# --------------------------------------------------------------------------------------------------


def box_iou(a: Sequence[float], b: Sequence[float]) -> float:
  """IoU of two xyxy boxes; 0 when either is degenerate (no positive area)."""
  ax1, ay1, ax2, ay2 = a
  bx1, by1, bx2, by2 = b
  if ax2 <= ax1 or ay2 <= ay1 or bx2 <= bx1 or by2 <= by1:
    return 0.0
  intersection = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
  union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - intersection
  return float(intersection / union)


def is_valid_box(box: Sequence[float] | None) -> bool:
  """A normalised xyxy box LION can write: finite corners in [0, 1], x1 < x2 and y1 < y2."""
  if box is None:
    return False
  x1, y1, x2, y2 = box
  return all(0.0 <= v <= 1.0 for v in box) and x1 < x2 and y1 < y2  # NaN fails every comparison


def rec_accuracy(predictions: list[str], boxes: list[list[float]], iou_threshold: float = 0.5) -> float:
  """Share of predictions whose first `[x1,y1,x2,y2]` box has IoU >= threshold with the normalised
  ground truth box; text without a box, or with one that is not `is_valid_box` (corners swapped or
  outside the image: LION writes clamped, ordered corners), counts as wrong."""
  _check_lengths(predictions, boxes, "boxes")
  correct = 0
  for text, gt_box in zip(predictions, boxes):
    predicted_box = parse_first_box(text)
    correct += is_valid_box(predicted_box) and box_iou(predicted_box, gt_box) >= iou_threshold
  return correct / len(predictions)


# --------------------------------------------------------------------------------------------------
# POPE, VisDial, MMBench
# --------------------------------------------------------------------------------------------------


def _pope_says_no(text: str) -> bool:
  """POPE evaluate.py: keep the text before the first '.', drop commas, split on ' ', then "no" if
  the words hold 'No', 'no' or 'not' (case-sensitive, as the script: 'Not' alone reads as yes)."""
  if text.find(".") != -1:
    text = text.split(".")[0]
  words = text.replace(",", "").split(" ")
  return "No" in words or "not" in words or "no" in words


def pope_scores(predictions: list[str], labels: list[str]) -> dict:
  """POPE's accuracy, precision, recall, F1 (positive class: yes) and yes ratio, all in [0, 1], as its
  evaluate.py; precision/recall/F1 are 0 where the script would divide by zero. One departure: the
  script reads an empty answer as "yes"; here it is the wrong answer (the opposite of the label), so
  a model that says nothing is not scored on the yes questions."""
  _check_lengths(predictions, labels, "labels")
  unknown = sorted({label for label in labels if label not in ("yes", "no")})
  if unknown:
    raise UserError(f"POPE labels must be 'yes' or 'no', got {unknown[:10]}")
  is_yes = [label == "yes" for label in labels]
  says_yes = [not _pope_says_no(p) if p.strip() else not t for p, t in zip(predictions, is_yes)]
  true_pos = sum(p and t for p, t in zip(says_yes, is_yes))
  false_pos = sum(p and not t for p, t in zip(says_yes, is_yes))
  true_neg = sum(not p and not t for p, t in zip(says_yes, is_yes))
  false_neg = sum(not p and t for p, t in zip(says_yes, is_yes))
  precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
  recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {
    "accuracy": (true_pos + true_neg) / len(predictions),
    "precision": precision,
    "recall": recall,
    "f1": f1,
    "yes_ratio": sum(says_yes) / len(predictions),
  }


def nan_as_worst(scores) -> np.ndarray:
  """float64 `scores` with NaN (a diverged model's) as -inf: an option scored NaN ranks last."""
  scores = np.asarray(scores, dtype=np.float64)
  return np.where(np.isnan(scores), -np.inf, scores)


def ground_truth_ranks(scores: np.ndarray | list[list[float]], gt_index: list[int]) -> np.ndarray:
  """VisDial's rank of each row's ground-truth option among its candidate scores (higher is better,
  rank 1 is best). Ties count against the ground truth (rank = #options scoring >= it): VisDial's
  `scores_to_ranks` leaves their order to torch.sort, and a constant scorer must not score 1."""
  _check_lengths(scores, gt_index, "ground-truth indices")
  result = []
  for row, (option_scores, gt) in enumerate(zip(scores, gt_index)):
    option_scores = nan_as_worst(option_scores)
    if gt is None or not 0 <= gt < len(option_scores):
      raise UserError(f"row {row}: ground-truth index {gt} outside its {len(option_scores)} options")
    result.append(int(np.sum(option_scores >= option_scores[gt])))  # counts the ground truth itself
  return np.asarray(result)


def mean_reciprocal_rank(scores: np.ndarray | list[list[float]], gt_index: list[int]) -> float:
  """VisDial MRR: the mean of 1 / rank of the ground truth (`ground_truth_ranks`)."""
  return float(np.mean(1.0 / ground_truth_ranks(scores, gt_index)))


def recall_at_k(scores: np.ndarray | list[list[float]], gt_index: list[int], k: int) -> float:
  """VisDial R@k: the share of rows whose ground truth ranks k or better."""
  return float(np.mean(ground_truth_ranks(scores, gt_index) <= k))


def mean_rank(scores: np.ndarray | list[list[float]], gt_index: list[int]) -> float:
  return float(np.mean(ground_truth_ranks(scores, gt_index)))


def ndcg(scores: Sequence[Sequence[float]], relevance: Sequence[Sequence[float]]) -> float:
  """VisDial NDCG: per round, the options ranked by score (equal scores in option order), DCG of their
  relevance over the top k = #relevant options, over the ideal DCG; the mean over rounds."""
  _check_lengths(scores, relevance, "relevance rows")
  values = []
  for row_scores, row_relevance in zip(scores, relevance):
    row_relevance = np.asarray(row_relevance, np.float64)
    k = int(np.sum(row_relevance > 0))
    if k == 0:
      raise UserError("a dense annotation without any relevant option has no NDCG")
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ranked = row_relevance[np.argsort(-nan_as_worst(row_scores), kind="stable")][:k]
    values.append(float(ranked @ discount / (np.sort(row_relevance)[::-1][:k] @ discount)))
  return float(np.mean(values))


def mmbench_circular_accuracy(question_ids: list, circular_group_ids: list, correct: list[bool]) -> float:
  """MMBench CircularEval: a question (a group of choice-rotated variants sharing a group id) is
  solved only if every variant is answered correctly; accuracy over groups."""
  _check_lengths(question_ids, circular_group_ids, "group ids")
  _check_lengths(question_ids, correct, "correctness flags")
  if len(set(question_ids)) != len(question_ids):
    raise UserError("question ids repeat: each circular variant must be scored once")
  group_solved: dict[Hashable, bool] = {}
  for group, is_correct in zip(circular_group_ids, correct):
    group_solved[group] = group_solved.get(group, True) and bool(is_correct)
  return sum(group_solved.values()) / len(group_solved)
