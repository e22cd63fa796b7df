"""Instruction templates and target text per task, as LION trains them.

Captioning and VQA prompts follow InstructBLIP's style; referring-expression prompts follow Shikra's,
keeping the literal `<image>` in the text (LION prepends the visual tokens and passes `<image>`
through the tokenizer unchanged). A template is drawn per example from a seeded generator.
Tags go behind the soft prompt with LION's exact template; the Q-Former sees the instruction only.
A horizontally flipped image gets its record mirrored ("left" <-> "right") before the text is built.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import string
from collections.abc import Sequence

import numpy as np

from lion_jax.data.boxes import REC_ANSWER_PREFIX, format_boxes
from lion_jax.data.records import BOXES_PLACEHOLDER, BadRecord, Record
from lion_jax.errors import UserError

# LION's tag prompt (lion_t5.py): the soft-prompt sentinel, the tags inside brackets, a trailing
# space, then the instruction.
TAG_PROMPT = "According to <extra_id_0>, you are allowed to use or partially use the following tags: [{}]. "

CAPTION_TEMPLATES = (
  "Please describe the image using a single short sentence.",  # LION's notebook prompt
  "A short image caption:",
  "A short image description:",
  "Write a short description for the image.",
  "Briefly describe the content of the image.",
  "Provide a one-sentence caption for the provided image.",
  "What does the image show? Answer in one sentence.",
  "Summarize the picture in a few words.",
)
VQA_TEMPLATES = (
  "{question}",
  "Question: {question} Short answer:",
  "{question} A short answer to the question is",
  "Answer the question using a single word or phrase. {question}",
  "Given the image, answer the following question with no more than three words. {question}",
  "Q: {question} A:",
  "Use the provided image to answer the question: {question} Keep the answer short.",
)
REC_TEMPLATES = (  # "<expr>" -> the referring expression
  "In the image <image>, can you locate {expr} and let me know its coordinates?",  # LION notebook
  "Where is {expr} in the image <image>? Answer with its coordinates.",
  "In <image>, find {expr} and give its bounding box.",
  "Can you point out {expr} in the picture <image> by stating its coordinates?",
  "Please give the location of {expr} in the photo <image> as a box.",
  "Help me find {expr} in <image>: output its coordinates.",
  "Locate {expr} in the image <image> and answer with the box coordinates.",
)
REG_TEMPLATES = (  # "{boxes}" -> the region as box text
  "What is the object at {boxes} in the image <image>? Describe it so it can be told apart.",
  "Describe the region {boxes} of the image <image>.",
  "Give a short referring expression for the object in {boxes} of <image>.",
  "In the picture <image>, what is at {boxes}?",
  "Which object does {boxes} in <image> show? Answer with a short description.",
)
GROUNDED_CAPTION_TEMPLATES = (
  "Describe the image <image> briefly and give the coordinates of every object you mention.",
  "Write a short caption for <image> with the box of each object you name.",
  "Summarize <image> in one sentence, following each mentioned object with its coordinates.",
)


# "left"/"right" as whole words (also "leftmost", "left-hand"), not inside "leftover" or "bright".
_SIDE_WORD = re.compile(r"\b(left|right)(most)?\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ExampleText:
  instruction: str  # the task instruction (also the Q-Former text)
  t5_input: str  # the instruction, behind the tag prompt where `t5_input_text` puts one
  target: str


def tag_prompt(tags: Sequence[str]) -> str:
  return TAG_PROMPT.format(", ".join(tags))


def t5_input_text(instruction: str, tags: Sequence[str], *, soft_prompt: bool, use_tags: bool = True) -> str:
  """What T5 reads: the instruction, behind LION's tag prompt. A model with a soft prompt always gets
  the tag prompt (`[]` without tags, as the official template renders an empty list: the released
  model never saw an input without it, and the soft prompt is trained only where it appears); a
  model without one gets it only for tags. `use_tags=False` leaves the tags out of the brackets."""
  shown = list(tags) if use_tags else []
  return tag_prompt(shown) + instruction if soft_prompt or shown else instruction


def most_common(answers: Sequence[str]) -> str:
  """The most frequent answer (VQA annotations have 10); ties go to the first seen."""
  counts = collections.Counter(a.strip() for a in answers)
  return max(counts, key=counts.get)  # max keeps the first of equal counts; Counter keeps order


def _swap_side(match: re.Match) -> str:
  word, suffix = match.group(1), match.group(2) or ""
  other = "right" if word.lower() == "left" else "left"
  if word.isupper():
    other = other.upper()
  elif word[0].isupper():
    other = other.capitalize()
  return other + suffix


def mirror_text(text: str) -> str:
  """`text` for the horizontally flipped image: "left" and "right" swapped as whole words, case kept
  ("Left of" -> "Right of", "leftmost" -> "rightmost"). The verb "left" is swapped too; the spatial
  sense is what captions and questions about a scene use."""
  return _SIDE_WORD.sub(_swap_side, text)


def mirror_record(record: Record) -> Record:
  """A copy of `record` whose question, expression and answers describe the flipped image, so a
  flip augmentation never teaches "left of" for what now is right of it."""
  return dataclasses.replace(
    record,
    question=mirror_text(record.question),
    expression=mirror_text(record.expression),
    answers=[mirror_text(a) for a in record.answers],
  )


def _pick(rng: np.random.Generator | None, options: Sequence[str]) -> str:
  """A seeded draw in training; the first option (a fixed prompt) when `rng` is None (evaluation)."""
  return options[0] if rng is None else options[int(rng.integers(len(options)))]


# The record field each task's template may name.
PROMPT_FIELDS = {"caption": (), "vqa": ("question",), "rec": ("expr",), "reg": ("boxes",), "grounded_caption": ()}


def check_prompt_fields(prompt: str, allowed: Sequence[str], fills: str) -> str:
  """`prompt` if every `{field}` it names is in `allowed`, else a UserError saying what `fills`
  (e.g. "vqa records fill") fills."""
  named = {field for _, field, _, _ in string.Formatter().parse(prompt) if field is not None}
  unknown = sorted(named - set(allowed))
  if unknown:
    shown = ", ".join("{" + f + "}" for f in allowed) or "no fields"
    raise UserError(f"prompt {prompt!r}: {fills} {shown}, not {unknown}")
  return prompt


def _fill(prompt: str, task: str) -> str:
  """A user's prompt as a template for `task`'s records."""
  return check_prompt_fields(prompt, PROMPT_FIELDS.get(task, ()), f"{task} records fill")


def build_text(
  record: Record,
  rng: np.random.Generator | None,
  width: int,
  height: int,
  *,
  soft_prompt: bool = False,
  use_tags: bool = True,
  prompt: str = "",
) -> ExampleText:
  """(instruction, T5 input, target) for one record; `width`/`height` normalise its boxes;
  `soft_prompt` (the model has one) and `use_tags` shape the tag prompt (`t5_input_text`).
  `prompt` replaces the task's templates (a benchmark's evaluation prompt; `{question}`, `{expr}`
  or `{boxes}` are filled as in the templates)."""
  task = record.task
  pick = lambda options: _fill(prompt, record.task) if prompt else _pick(rng, options)
  if task == "caption":
    instruction, target = pick(CAPTION_TEMPLATES).format(), _pick(rng, record.answers)
  elif task == "vqa":
    instruction = pick(VQA_TEMPLATES).format(question=record.question.strip())
    target = most_common(record.answers)
  elif task == "rec":
    instruction = pick(REC_TEMPLATES).format(expr=record.expression.strip())
    target = REC_ANSWER_PREFIX + format_boxes(record.boxes, width, height)
  elif task == "reg":
    instruction = pick(REG_TEMPLATES).format(boxes=format_boxes(record.boxes, width, height))
    target = record.expression.strip()
  elif task == "grounded_caption":
    instruction = pick(GROUNDED_CAPTION_TEMPLATES).format()
    target = _pick(rng, record.answers)
    for box in record.boxes:
      target = target.replace(BOXES_PLACEHOLDER, format_boxes([box], width, height), 1)
  elif task == "instruction":
    instruction, target = record.question.strip(), record.answers[0]
  else:
    raise ValueError(f"unknown task {task!r}")
  t5_input = t5_input_text(instruction, record.tags, soft_prompt=soft_prompt, use_tags=use_tags)
  return ExampleText(instruction, t5_input, target)


def build_checked_text(
  record: Record, rng: np.random.Generator | None, width: int, height: int, **text_settings
) -> ExampleText:
  """`build_text` for a decoded image of `width` x `height`: a box outside it or an empty target
  raises BadRecord (what loading could not check without the image)."""
  for box in record.boxes:
    if box[2] > width or box[3] > height:
      raise BadRecord("box_outside_image", f"box {box} is outside the {width}x{height} image")
  text = build_text(record, rng, width, height, **text_settings)
  if not text.target.strip():
    raise BadRecord("empty_target", "the target text is empty")
  return text
