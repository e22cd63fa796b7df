"""Ask a converted or trained LION checkpoint about an image.

    predictor = Predictor.load("ckpt/lion-xl")
    result = predictor("photo.jpg", "Where is the dog?", task="region_level")
    result.text, result.boxes   # boxes in pixels of the original image

Tags (RAM tags) go behind the soft prompt. A checkpoint with LION's soft prompt always gets the tag
prompt, as the released model was trained: without tags (and without a `tagger`) the list is empty
(`[]`) and a one-line warning says so. Compute tags with the Recognize Anything model in PyTorch (eval
mode) and pass them, or pass `tagger=` (image -> tags) to compute them per call.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from lion_jax.convert.converted import load_converted, tokenizer_files
from lion_jax.data import boxes as box_text
from lion_jax.data import images, templates
from lion_jax.data.records import TASK_TYPES
from lion_jax.data.tags import Tagger, missing_tags_warning
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, bucketed_length, pad_batch
from lion_jax.errors import MissingFile, UserError
from lion_jax.inference.generate import generate

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Prediction:
  text: str
  boxes: list[tuple[float, float, float, float]]  # pixel xyxy, parsed from the text


class Predictor:
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
  ):
    self.config, self.params, self.t5, self.bert = config, params, t5, bert
    self.tagger = tagger
    self._warned_no_tags = False
    self.settings = dict(
      num_beams=num_beams,
      max_new_tokens=max_new_tokens,
      repetition_penalty=repetition_penalty,
      length_penalty=length_penalty,
      min_length=min_length,
    )
    self.max_qformer_len = max_qformer_len

  @classmethod
  def load(cls, checkpoint_dir: str | os.PathLike, **settings) -> Predictor:
    """A converted-checkpoint directory (python -m lion_jax.convert, or a trainer export)."""
    config, params = load_converted(checkpoint_dir)
    files = tokenizer_files(checkpoint_dir)
    missing = [name for name in ("t5", "bert") if name not in files]
    if missing:
      raise MissingFile(
        f"{Path(checkpoint_dir) / 'tokenizer'} lacks the {' and '.join(missing)} tokenizer "
        "file(s); convert again with --t5_vocab / --bert_vocab"
      )
    return cls(config, params, T5Tokenizer(files["t5"]), BertTokenizer(files["bert"]), **settings)

  def _batch(self, pixels: np.ndarray, question: str, tags: Sequence[str] | None, task: str) -> dict:
    prompt = templates.t5_input_text(question, tags or [], soft_prompt=self.config.use_soft_prompt)
    t5_ids = self.t5.encode(prompt)
    input_ids, input_mask = pad_batch([t5_ids], bucketed_length(len(t5_ids)), self.t5.pad_id)
    limit = min(self.max_qformer_len, self.config.qformer.max_positions)
    q_ids = self.bert.encode(question, max_length=limit, truncation_side="left")
    qformer_ids, qformer_mask = pad_batch([q_ids], min(bucketed_length(len(q_ids)), limit), self.bert.pad_id)
    return dict(
      image=pixels[None],
      qformer_ids=qformer_ids,
      qformer_mask=qformer_mask,
      input_ids=input_ids,
      input_mask=input_mask,
      task=np.array([TASK_TYPES.index(task)], np.int32),
    )

  def __call__(
    self,
    image: str | os.PathLike | Image.Image | np.ndarray,
    question: str,
    tags: Sequence[str] | str | None = None,
    task: str = "image_level",
  ) -> Prediction:
    if task not in TASK_TYPES:
      raise UserError(f"task={task!r}; expected one of {TASK_TYPES}")
    if isinstance(image, np.ndarray):
      image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
      image = images.decode_image(image)
    image = image.convert("RGB")
    if isinstance(tags, str):
      tags = [t.strip() for t in tags.split(",") if t.strip()]
    if tags is None and self.tagger is not None:
      tags = list(self.tagger(image))
    if not tags and self.config.use_soft_prompt and not self._warned_no_tags:
      log.warning(missing_tags_warning(1, 1))
      self._warned_no_tags = True
    pixels = images.to_model_input(image, self.config.vit.image_size)
    ids = np.asarray(generate(self.config, self.params, self._batch(pixels, question, tags, task), **self.settings))[0]
    text = self.t5.decode(ids.tolist())
    width, height = image.size
    boxes = [(x1 * width, y1 * height, x2 * width, y2 * height) for x1, y1, x2, y2 in box_text.parse_boxes(text)]
    return Prediction(text, boxes)
