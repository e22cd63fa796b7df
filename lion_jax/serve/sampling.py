"""Sampled generation (temperature, top-p) for the server's `temperature > 0` requests.

generate.py has greedy and beam search, LION's settings; an OpenAI client asking for a temperature
expects sampling. Processors apply in HF transformers' `do_sample` order: repetition penalty, min
length, padding rows (generate.py's processors), temperature, top-p. Each row draws from its own key
(`fold_in(key(seed), step)`), so a request's answer depends on its seed only, never on the requests
batched with it.
"""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lion_jax import sharding
from lion_jax.inference.generate import decode_row_by_row
from lion_jax.models import Lion


def top_p_filter(scores: jax.Array, top_p: float) -> jax.Array:
  """HF TopPLogitsWarper: keep the most likely tokens whose probabilities reach `top_p` (at least one)."""
  if top_p >= 1.0:
    return scores
  ascending = jnp.sort(scores, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(ascending, axis=-1), axis=-1)
  dropped = jnp.minimum(jnp.sum(cumulative <= 1.0 - top_p, axis=-1, keepdims=True), scores.shape[-1] - 1)
  return jnp.where(scores < jnp.take_along_axis(ascending, dropped, axis=-1), -jnp.inf, scores)


def _sample(
  model, params, inputs, max_new_tokens, min_length, repetition_penalty, temperature, top_p, vocab_size, eos_id, pad_id
):
  batch = {k: v for k, v in inputs.items() if k != "seed"}
  keys = jax.vmap(jax.random.key)(inputs["seed"])

  def pick(scores, t):
    scores = top_p_filter(scores / temperature, top_p)
    return jax.vmap(jax.random.categorical)(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t), scores)

  return decode_row_by_row(
    model,
    params,
    batch,
    pick,
    max_new_tokens=max_new_tokens,
    min_length=min_length,
    repetition_penalty=repetition_penalty,
    vocab_size=vocab_size,
    eos_id=eos_id,
    pad_id=pad_id,
    start_id=pad_id,  # T5's decoder start token
  )


@functools.lru_cache(maxsize=16)
def _compiled(config_json: str, **settings):
  return jax.jit(functools.partial(_sample, Lion(ml_collections.ConfigDict(json.loads(config_json))), **settings))


def sample_ids(config, params, batch: dict[str, np.ndarray], seeds: np.ndarray, mesh, rules, **settings) -> np.ndarray:
  """Sampled ids [B, max_new_tokens] for a host batch, one uint32 seed per row; on one device or split
  over a mesh as batch.generate_ids. `settings`: max_new_tokens, min_length, repetition_penalty,
  temperature, top_p, vocab_size (the tokenizer's), eos_id, pad_id."""
  program = _compiled(config.to_json(), **settings)
  inputs = {**batch, "seed": np.asarray(seeds, np.uint32)}
  if mesh is None:
    return np.asarray(jax.device_get(program(params, inputs)))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    ids = program(params, sharding.put_global_batch(inputs, sharding.batch_sharding(mesh, rules)))
  return np.asarray(multihost_utils.process_allgather(ids, tiled=True))
