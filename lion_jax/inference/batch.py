"""Inference batches: a checkpoint loaded onto a device mesh, the model's inputs for a batch of
requests, and generation split over the mesh. Shared by the Predictor and the evaluation runners."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lion_jax import sharding
from lion_jax.convert.converted import load_converted, tokenizer_files
from lion_jax.data import templates
from lion_jax.data.records import TASK_TYPES
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, bucketed_length, pad_batch
from lion_jax.errors import MissingFile
from lion_jax.inference.generate import generate, mean_candidate_log_likelihood


def load_for_evaluation(checkpoint: str | Path, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES) -> tuple:
  """(model config, params, T5 tokenizer, BERT tokenizer) of a converted checkpoint directory; with
  `mesh`, every parameter restored straight onto its sharding (no full copy on one device)."""
  model_config, params = load_converted(checkpoint, mesh, rules)
  files = tokenizer_files(checkpoint)
  missing = [name for name in ("t5", "bert") if name not in files]
  if missing:
    raise MissingFile(
      f"{Path(checkpoint) / 'tokenizer'} lacks the {' and '.join(missing)} tokenizer "
      "file(s); convert again with --t5_vocab / --bert_vocab"
    )
  return model_config, params, T5Tokenizer(files["t5"]), BertTokenizer(files["bert"])


def model_inputs(
  t5: T5Tokenizer,
  bert: BertTokenizer,
  pixels: Sequence[np.ndarray],
  t5_inputs: Sequence[str],
  qformer_texts: Sequence[str],
  task_ids: Sequence[int],
  *,
  batch_size: int,
  max_input_len: int,
  max_qformer_len: int,
) -> dict[str, np.ndarray]:
  """One evaluation batch of the model's inputs, padded to `batch_size` rows by repeating the first
  (the last batch keeps the compiled shape; callers drop the extra rows). T5 inputs are padded to
  `max_input_len`, a longer one to its bucketed length, never cut; the Q-Former text is cut from the
  left at `max_qformer_len`, as in training."""
  pad = batch_size - len(pixels)
  repeat = lambda rows: list(rows) + [rows[0]] * pad
  rows = [t5.encode(text) for text in repeat(t5_inputs)]
  input_ids, input_mask = pad_batch(rows, bucketed_length(max(map(len, rows)), max_input_len), t5.pad_id)
  q_ids, q_mask = bert.encode_batch(repeat(qformer_texts), max_length=max_qformer_len, truncation_side="left")
  return dict(
    image=np.stack(repeat(pixels)),
    qformer_ids=q_ids,
    qformer_mask=q_mask,
    input_ids=input_ids,
    input_mask=input_mask,
    task=np.array(repeat(task_ids), np.int32),
  )


def generate_ids(config, params, batch: dict[str, np.ndarray], mesh, rules, settings: dict) -> np.ndarray:
  """Generated ids of a host batch [B, T], on one device or split over a mesh (all rows on every process)."""
  if mesh is None:
    return np.asarray(jax.device_get(generate(config, params, batch, **settings)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    ids = generate(config, params, sharding.put_global_batch(batch, sharding.batch_sharding(mesh, rules)), **settings)
  return np.asarray(multihost_utils.process_allgather(ids, tiled=True))


def option_scores(
  config,
  params,
  t5: T5Tokenizer,
  bert: BertTokenizer,
  pixels: Sequence[np.ndarray],
  prompts: Sequence[str],
  options: Sequence[Sequence[str]],
  *,
  num_options: int,
  batch_size: int,
  max_input_len: int,
  max_qformer_len: int,
  max_option_len: int,
) -> np.ndarray:
  """[len(prompts), num_options] mean log-likelihood per token of each prompt's answer options
  (image-level, the tag prompt empty where the model has a soft prompt; a prompt's missing options
  score -inf): one batch of multiple-choice questions or answer rankings."""
  soft_prompt = bool(config.use_soft_prompt)
  batch = model_inputs(
    t5,
    bert,
    pixels,
    [templates.t5_input_text(text, [], soft_prompt=soft_prompt) for text in prompts],
    prompts,
    [TASK_TYPES.index("image_level")] * len(prompts),
    batch_size=batch_size,
    max_input_len=max_input_len,
    max_qformer_len=min(max_qformer_len, config.qformer.max_positions),
  )
  candidates = [[t5.encode(text) for text in row] for row in options]
  candidates += [candidates[0]] * (batch_size - len(candidates))
  scores = mean_candidate_log_likelihood(
    config, params, batch, candidates, num_candidates=num_options, max_len=max_option_len, pad_id=t5.pad_id
  )
  return scores[: len(prompts)]
