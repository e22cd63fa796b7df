"""Ask a converted or trained LION checkpoint about an image.

    predictor = Predictor.load("ckpt/lion-xl")          # or Predictor.load(dir, mesh=sharding.make_mesh())
    result = predictor("photo.jpg", "Where is the dog?", task="region_level")
    result.text, result.boxes   # boxes in pixels of the original image
    results = predictor.predict_batch(["a.jpg", "b.jpg"], ["What is this?", "Any dogs?"])

Tags (RAM tags) go behind the soft prompt. A checkpoint with LION's soft prompt always gets the tag
prompt, as the released model was trained: without tags (and without a `tagger`) the list is empty
(`[]`) and a one-line warning says so. Pass tags, or a tagger that computes them for the requests
without: `Predictor.load(dir, tagger=RamTagger.load(ram_dir))` (inference/tagger.py) tags a whole
batch at once; any callable image -> tags works too. `Prediction.tags` are the tags the prompt held.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence

import numpy as np
from jax.sharding import Mesh
from PIL import Image

from lion_jax import sharding
from lion_jax.data import boxes as box_text
from lion_jax.data import images, templates
from lion_jax.data.records import TASK_TYPES, parse_tags
from lion_jax.data.tags import Tagger, fill_missing_tags, missing_tags_warning
from lion_jax.data.tokenizers import LENGTH_BUCKET, BertTokenizer, T5Tokenizer
from lion_jax.errors import UserError
from lion_jax.inference.batch import generate_ids, load_for_evaluation, model_inputs

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
  text: str
  boxes: list[tuple[float, float, float, float]]  # pixel xyxy, parsed from the text
  tags: list[str] = dataclasses.field(default_factory=list)  # the tags in the prompt (given or the tagger's)
  dropped_ids: int = 0  # generated ids outside the T5 vocabulary, dropped from the text


class Predictor:
  """Generation for single requests or batches, on one device or sharded over a device mesh."""

  def __init__(
    self,
    config,
    params,
    t5: T5Tokenizer,
    bert: BertTokenizer,
    *,
    num_beams: int = 5,
    max_new_tokens: int = 256,
    repetition_penalty: float = 1.5,
    length_penalty: float = 1.0,
    min_length: int = 1,
    max_qformer_len: int = 128,
    tagger: Tagger | None = None,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
  ):
    self.config, self.params, self.t5, self.bert = config, params, t5, bert
    self.tagger, self.mesh, self.rules = tagger, mesh, rules
    self._warned_no_tags = False
    self.settings = dict(
      num_beams=num_beams,
      max_new_tokens=max_new_tokens,
      repetition_penalty=repetition_penalty,
      length_penalty=length_penalty,
      min_length=min_length,
      vocab_size=t5.vocab_size,  # the model's padding rows are never generated
    )
    self.max_qformer_len = max_qformer_len

  @classmethod
  def load(
    cls, checkpoint_dir: str | os.PathLike, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES, **settings
  ) -> Predictor:
    """A converted-checkpoint directory (python -m lion_jax.convert, or a trainer export). With
    `mesh`, the parameters are restored straight onto their shardings and batches split over it."""
    config, params, t5, bert = load_for_evaluation(checkpoint_dir, mesh, rules)
    return cls(config, params, t5, bert, mesh=mesh, rules=rules, **settings)

  def inputs(
    self, pixels: Sequence[np.ndarray], questions: Sequence[str], tags: Sequence[list[str]], task: str
  ) -> dict:
    """The model's inputs for a batch of requests, padded to a multiple of the mesh's batch split;
    prompt lengths bucketed (multiples of 32), so a few compiled shapes serve every request."""
    split = 1 if self.mesh is None else sharding.batch_axes_size(self.mesh, self.rules)
    soft_prompt = bool(self.config.use_soft_prompt)
    return model_inputs(
      self.t5,
      self.bert,
      pixels,
      [templates.t5_input_text(q, t, soft_prompt=soft_prompt) for q, t in zip(questions, tags)],
      questions,
      [TASK_TYPES.index(task)] * len(pixels),
      batch_size=-(-len(pixels) // split) * split,
      max_input_len=LENGTH_BUCKET,
      max_qformer_len=min(self.max_qformer_len, self.config.qformer.max_positions),
    )

  def predict_batch(
    self,
    images_: Sequence[str | os.PathLike | Image.Image | np.ndarray],
    questions: Sequence[str],
    tags: Sequence[Sequence[str] | str | None] | None = None,
    task: str = "image_level",
  ) -> list[Prediction]:
    """One prediction per (image, question, tags), generated together in one batch."""
    if task not in TASK_TYPES:
      raise UserError(f"task={task!r}; expected one of {TASK_TYPES}")
    if len(questions) != len(images_) or (tags is not None and len(tags) != len(images_)):
      raise UserError(f"{len(images_)} images, {len(questions)} questions and tags for {len(tags or images_)}")
    decoded = [_as_image(image) for image in images_]
    tag_lists = self._tags(decoded, tags or [None] * len(decoded))
    pixels = [images.to_model_input(image, self.config.vit.image_size) for image in decoded]
    batch = self.inputs(pixels, questions, tag_lists, task)
    ids = generate_ids(self.config, self.params, batch, self.mesh, self.rules, self.settings)
    predictions = []
    for image, row, image_tags in zip(decoded, ids, tag_lists):
      text, dropped = self.t5.decode_counting(row.tolist())
      width, height = image.size
      boxes = [(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in box_text.parse_boxes(text)]
      predictions.append(Prediction(text, boxes, image_tags, dropped))
    return predictions

  def __call__(
    self,
    image: str | os.PathLike | Image.Image | np.ndarray,
    question: str,
    tags: Sequence[str] | str | None = None,
    task: str = "image_level",
  ) -> Prediction:
    return self.predict_batch([image], [question], [tags], task)[0]

  def _tags(self, decoded: Sequence[Image.Image], tags: Sequence[Sequence[str] | str | None]) -> list[list[str]]:
    """Each request's tags (a list or a comma string), else the tagger's (one batch for all such
    requests), else [] with one warning."""
    given = [None if t is None else parse_tags(t) for t in tags]  # a list or a comma string, as a record's
    lists = fill_missing_tags(given, decoded, self.tagger)
    if self.config.use_soft_prompt and not all(lists) and not self._warned_no_tags:
      log.warning(missing_tags_warning(sum(not t for t in lists), len(lists)))
      self._warned_no_tags = True
    return lists


def _as_image(image: str | os.PathLike | Image.Image | np.ndarray) -> Image.Image:
  if isinstance(image, np.ndarray):
    image = Image.fromarray(image)
  if not isinstance(image, Image.Image):
    image = images.decode_image(image)
  return image.convert("RGB")
