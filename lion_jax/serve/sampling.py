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
from lion_jax.inference.generate import _forbid_eos_before_min_length, _penalise, _step_fn, _suppress_padding_rows
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
  encoded, mask = model.apply({"params": params}, batch, method=Lion.encode)
  b, vocab = encoded.shape[0], model.config.t5.vocab_size
  step = _step_fn(model, params, encoded, mask, batch["task"], max_new_tokens)
  start_id = pad_id  # T5's decoder start token
  sequences = jnp.full((b, max_new_tokens + 1), pad_id, jnp.int32).at[:, 0].set(start_id)
  seen = jnp.zeros((b, vocab), bool).at[:, start_id].set(True)

  def choose(logits, t, sequences, seen, finished):
    scores = _penalise(logits, seen, repetition_penalty)
    scores = _forbid_eos_before_min_length(scores, t + 1, min_length, eos_id)
    scores = top_p_filter(_suppress_padding_rows(scores, vocab_size) / temperature, top_p)
    drawn = jax.vmap(jax.random.categorical)(jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, t), scores)
    token = jnp.where(finished, pad_id, drawn.astype(jnp.int32))
    sequences = sequences.at[:, t + 1].set(token)
    seen = seen.at[jnp.arange(b), token].set(True)
    return sequences, seen, finished | (token == eos_id)

  logits, cache = step(None, sequences[:, 0], 0)
  sequences, seen, finished = choose(logits, 0, sequences, seen, jnp.zeros((b,), bool))

  def body(state):
    t, sequences, seen, cache, finished = state
    logits, cache = step(cache, sequences[:, t], t)
    sequences, seen, finished = choose(logits, t, sequences, seen, finished)
    return t + 1, sequences, seen, cache, finished

  unfinished = lambda state: (state[0] < max_new_tokens) & ~jnp.all(state[4])
  _, sequences, _, _, _ = jax.lax.while_loop(unfinished, body, (jnp.int32(1), sequences, seen, cache, finished))
  return sequences[:, 1:]


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
