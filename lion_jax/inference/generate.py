"""Text generation with HF transformers' T5 semantics, jit-compiled with fixed shapes.

The image towers and the T5 encoder run once per batch; the decoder runs one position per step with
a key/value cache (`lax.while_loop`, stopping early when every sequence is done). Greedy search when
`num_beams == 1`, else beam search. Semantics follow `transformers` 5 `generate` for encoder-decoder
models, so ids match HF's exactly:

  * greedy: the repetition penalty applies to raw logits (positive / penalty, negative * penalty) of
    every token already in the decoder sequence, the start token included; finished rows get pad;
  * beam search: log-softmax first, then the penalty; keep the top 2 * num_beams continuations; the
    top num_beams of them that end in EOS (or reach the length limit) become finished hypotheses
    scored `sum_logprobs / generated_len ** length_penalty`; the rest continue; with
    `early_stopping=False` a batch item stops when its best running beam, scored at the current
    length, cannot beat its worst finished hypothesis.

One departure: with `vocab_size` (the tokenizer's size), the ids from it up to the model's vocabulary
size (FlanT5's 28 padding rows 32100-32127) are never generated: their scores are -inf, as HF's
`suppress_tokens` would make them (HF `generate` itself does not). An undertrained model gives those
rows real probability, and no tokenizer can write them.

Outputs are int32 [B, max_new_tokens] without the decoder start token, pad after EOS.
"""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.models import Lion
from lion_jax.models.layer_stack import DECODE_CACHE, ENCODER_CACHE

NEG = -1.0e9  # HF's "impossible" score


def _penalise(scores: jax.Array, seen: jax.Array, penalty: float) -> jax.Array:
  """HF RepetitionPenaltyLogitsProcessor: tokens in `seen` [N, V] get score/penalty (>0) or *penalty."""
  if penalty == 1.0:
    return scores
  penalised = jnp.where(scores < 0, scores * penalty, scores / penalty)
  return jnp.where(seen, penalised, scores)


def _suppress_padding_rows(scores: jax.Array, vocab_size: int | None) -> jax.Array:
  """HF SuppressTokensLogitsProcessor over ids >= vocab_size: rows the tokenizer cannot decode."""
  if vocab_size is None or vocab_size >= scores.shape[-1]:
    return scores
  return jnp.where(jnp.arange(scores.shape[-1]) >= vocab_size, -jnp.inf, scores)


def _forbid_eos_before_min_length(scores, cur_len, min_length, eos_id):
  """HF MinLengthLogitsProcessor: EOS impossible while the decoder sequence is shorter than min_length."""
  return jnp.where((cur_len < min_length) & (jnp.arange(scores.shape[-1]) == eos_id), -jnp.inf, scores)


def _step_fn(model: Lion, params, encoded, encoder_mask, task, cache_len: int):
  """(cache, tokens [N], position) -> (logits [N, V] float32, cache); a missing cache is created.
  `cache` holds both decoding collections (models/layer_stack.py); only the first step
  writes the encoder's, later steps only read it."""

  def step(cache, tokens, position):
    first = cache is None
    logits, updated = model.apply(
      {"params": params, **({} if first else cache)},
      tokens[:, None],
      encoded,
      encoder_mask,
      task,
      cache_len=cache_len,
      cache_index=position,
      method=Lion.decode,
      mutable=[DECODE_CACHE, ENCODER_CACHE] if first else [DECODE_CACHE],
    )
    return logits[:, 0].astype(jnp.float32), {**({} if first else cache), **updated}

  return step


def decode_row_by_row(
  model, params, batch, pick, max_new_tokens, min_length, repetition_penalty, vocab_size, eos_id, pad_id, start_id
):
  """One token per row per step until every row has EOS: greedy search, or sampling (serve/sampling.py)
  through `pick(scores [B, V], t) -> tokens [B]`, which gets the scores after HF's repetition penalty,
  min-length and padding-row processors."""
  encoded, mask = model.apply({"params": params}, batch, method=Lion.encode)
  b, vocab = encoded.shape[0], model.config.t5.vocab_size
  step = _step_fn(model, params, encoded, mask, batch["task"], max_new_tokens)
  sequences = jnp.full((b, max_new_tokens + 1), pad_id, jnp.int32).at[:, 0].set(start_id)
  seen = jnp.zeros((b, vocab), bool).at[:, start_id].set(True)

  def choose(logits, t, sequences, seen, finished):
    scores = _penalise(logits, seen, repetition_penalty)
    scores = _forbid_eos_before_min_length(scores, t + 1, min_length, eos_id)
    scores = _suppress_padding_rows(scores, vocab_size)
    token = jnp.where(finished, pad_id, pick(scores, t).astype(jnp.int32))
    sequences = sequences.at[:, t + 1].set(token)
    seen = seen.at[jnp.arange(b), token].set(True)
    return sequences, seen, finished | (token == eos_id)

  logits, cache = step(None, sequences[:, 0], 0)
  sequences, seen, finished = choose(logits, 0, sequences, seen, jnp.zeros((b,), bool))

  def cond(state):
    t, _, _, _, finished = state
    return (t < max_new_tokens) & ~jnp.all(finished)

  def body(state):
    t, sequences, seen, cache, finished = state
    logits, cache = step(cache, sequences[:, t], t)
    sequences, seen, finished = choose(logits, t, sequences, seen, finished)
    return t + 1, sequences, seen, cache, finished

  _, sequences, _, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(1), sequences, seen, cache, finished))
  return sequences[:, 1:]


def _greedy(model, params, batch, **settings):
  return decode_row_by_row(model, params, batch, lambda scores, t: jnp.argmax(scores, axis=-1), **settings)


def _beam_search(
  model,
  params,
  batch,
  num_beams,
  max_new_tokens,
  min_length,
  repetition_penalty,
  length_penalty,
  early_stopping,
  vocab_size,
  eos_id,
  pad_id,
  start_id,
):
  k, max_length = num_beams, max_new_tokens + 1  # max_length counts the start token, as HF does
  encoded, mask = model.apply({"params": params}, batch, method=Lion.encode)
  b, vocab = encoded.shape[0], model.config.t5.vocab_size
  tile = lambda x: jnp.repeat(x, k, axis=0)  # [B, ...] -> [B*K, ...], beams of an example adjacent
  step = _step_fn(model, params, tile(encoded), tile(mask), tile(batch["task"]), max_new_tokens)
  gather = lambda x, idx: jnp.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
  top_mask = jnp.arange(2 * k) < k

  running = jnp.full((b, k, max_length), pad_id, jnp.int32).at[:, :, 0].set(start_id)
  running_scores = jnp.zeros((b, k)).at[:, 1:].set(NEG)
  seen = jnp.zeros((b, k, vocab), bool).at[:, :, start_id].set(True)
  state = dict(
    cur_len=jnp.int32(1),
    running=running,
    running_scores=running_scores,
    seen=seen,
    finished=running,
    finished_scores=jnp.full((b, k), NEG),
    is_finished=jnp.zeros((b, k), bool),
    improvable=jnp.ones((b, 1), bool),
    all_hit_stop=jnp.bool_(False),
  )

  def advance(state, logits, cache):
    cur_len = state["cur_len"]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    log_probs = _penalise(log_probs, state["seen"].reshape(b * k, vocab), repetition_penalty)
    log_probs = _forbid_eos_before_min_length(log_probs, cur_len, min_length, eos_id)
    log_probs = _suppress_padding_rows(log_probs, vocab_size)
    totals = (log_probs.reshape(b, k, vocab) + state["running_scores"][:, :, None]).reshape(b, k * vocab)
    top_scores, top_index = jax.lax.top_k(totals, 2 * k)
    parent, token = top_index // vocab, (top_index % vocab).astype(jnp.int32)
    candidates = gather(state["running"], parent)
    candidates = jax.lax.dynamic_update_slice_in_dim(candidates, token[:, :, None], cur_len, axis=2)
    candidate_seen = gather(state["seen"], parent)
    candidate_seen = candidate_seen | jax.nn.one_hot(token, vocab, dtype=bool)
    hits_stop = (token == eos_id) | (cur_len + 1 >= max_length)

    # Continue with the best num_beams candidates that did not stop.
    _, keep = jax.lax.top_k(top_scores + hits_stop * NEG, k)
    running, running_scores = gather(candidates, keep), gather(top_scores + hits_stop * NEG, keep)
    new_seen = gather(candidate_seen, keep)
    cache_rows = (jnp.arange(b)[:, None] * k + gather(parent, keep)).reshape(-1)
    # Cache leaves are [batch, positions, heads, head_dim], with a leading layer axis when scanned.
    # The encoder's keys and values are the same for every beam of an example: never reordered.
    reorder = lambda c: jnp.take(c, cache_rows, axis=c.ndim - 4)
    cache = {**cache, DECODE_CACHE: jax.tree.map(reorder, cache[DECODE_CACHE])}

    # Candidates among the top num_beams that stopped become finished hypotheses, if they beat them.
    just_finished = hits_stop & top_mask[None, :]
    scored = top_scores / ((cur_len + 1 - 1).astype(jnp.float32) ** length_penalty)
    if early_stopping is True:
      scored = scored + jnp.all(state["is_finished"], -1, keepdims=True) * NEG
    scored = scored + (~state["improvable"]) * NEG + (~just_finished) * NEG
    merged_scores = jnp.concatenate([state["finished_scores"], scored], axis=1)
    _, best = jax.lax.top_k(merged_scores, k)
    finished = gather(jnp.concatenate([state["finished"], candidates], axis=1), best)
    finished_scores = gather(merged_scores, best)
    is_finished = gather(jnp.concatenate([state["is_finished"], just_finished], axis=1), best)

    # Can any running beam still beat the worst finished hypothesis? (HF's early-stop heuristic)
    cur_len = cur_len + 1
    if early_stopping == "never" and length_penalty > 0.0:
      best_len = max_length - 1
    else:
      best_len = cur_len - 1
    best_running = running_scores[:, :1] / (jnp.asarray(best_len, jnp.float32) ** length_penalty)
    worst_finished = jnp.where(is_finished, jnp.min(finished_scores, axis=1, keepdims=True), NEG)
    improvable = state["improvable"] & jnp.any(best_running > worst_finished, axis=-1, keepdims=True)
    new_state = dict(
      cur_len=cur_len,
      running=running,
      running_scores=running_scores,
      seen=new_seen,
      finished=finished,
      finished_scores=finished_scores,
      is_finished=is_finished,
      improvable=improvable,
      all_hit_stop=jnp.all(hits_stop),
    )
    return new_state, cache

  def unfinished(state):
    open_beams = ~(jnp.all(state["is_finished"]) & (early_stopping is True))
    return jnp.any(state["improvable"]) & open_beams & ~state["all_hit_stop"]

  logits, cache = step(None, state["running"][:, :, 0].reshape(-1), 0)
  state, cache = advance(state, logits, cache)

  def body(carry):
    state, cache = carry
    tokens = jax.vmap(lambda seqs, t: jax.lax.dynamic_index_in_dim(seqs, t, axis=1, keepdims=False), in_axes=(0, None))(
      state["running"], state["cur_len"] - 1
    ).reshape(-1)
    logits, cache = step(cache, tokens, state["cur_len"] - 1)
    return advance(state, logits, cache)

  state, _ = jax.lax.while_loop(lambda carry: unfinished(carry[0]), body, (state, cache))
  best = state["finished"][:, 0, 1:]
  after_eos = jnp.cumsum(best == eos_id, axis=1) - (best == eos_id) > 0
  return jnp.where(after_eos, pad_id, best)


@functools.lru_cache(maxsize=32)
def _compiled(
  config_json: str,
  num_beams,
  max_new_tokens,
  min_length,
  repetition_penalty,
  length_penalty,
  early_stopping,
  vocab_size,
  eos_id,
  pad_id,
  start_id,
):
  model = Lion(ml_collections.ConfigDict(json.loads(config_json)))
  if num_beams == 1:
    fn = functools.partial(
      _greedy,
      model,
      max_new_tokens=max_new_tokens,
      min_length=min_length,
      repetition_penalty=repetition_penalty,
      vocab_size=vocab_size,
      eos_id=eos_id,
      pad_id=pad_id,
      start_id=start_id,
    )
  else:
    fn = functools.partial(
      _beam_search,
      model,
      num_beams=num_beams,
      max_new_tokens=max_new_tokens,
      min_length=min_length,
      repetition_penalty=repetition_penalty,
      length_penalty=length_penalty,
      early_stopping=early_stopping,
      vocab_size=vocab_size,
      eos_id=eos_id,
      pad_id=pad_id,
      start_id=start_id,
    )
  return jax.jit(fn)


def generate(config: ml_collections.ConfigDict, params, batch: dict, **settings) -> jax.Array:
  """Generated ids [B, max_new_tokens] (int32) for a model batch (no `decoder_input_ids` needed);
  `settings` are `generation_program`'s (beam width, lengths, penalties)."""
  inputs = {k: v for k, v in batch.items() if k != "decoder_input_ids"}
  return generation_program(config, **settings)(params, inputs)


def generation_program(
  config: ml_collections.ConfigDict,
  *,
  num_beams: int = 5,
  max_new_tokens: int = 256,
  min_length: int = 1,
  repetition_penalty: float = 1.5,
  length_penalty: float = 1.0,
  early_stopping: bool | str = False,
  vocab_size: int | None = None,
  eos_id: int = 1,
  pad_id: int = 0,
  decoder_start_id: int = 0,
):
  """The jitted `(params, inputs) -> ids` that `generate` runs (cached per settings); the planner
  lowers it with abstract arrays to size an evaluation. Defaults are LION's released settings: beam
  5, up to 256 new tokens, min_length 1, repetition penalty 1.5, length penalty 1.0. `vocab_size`,
  the tokenizer's size, keeps the model's padding rows (ids from it up) from being generated; None
  lets every row be (HF's behaviour)."""
  if num_beams < 1 or max_new_tokens < 1:
    raise ValueError(f"num_beams={num_beams} and max_new_tokens={max_new_tokens} must be >= 1")
  return _compiled(
    config.to_json(),
    num_beams,
    max_new_tokens,
    min_length,
    float(repetition_penalty),
    float(length_penalty),
    early_stopping,
    vocab_size,
    eos_id,
    pad_id,
    decoder_start_id,
  )


def score_candidates(
  config: ml_collections.ConfigDict, params, batch: dict, candidate_ids, candidate_mask
) -> tuple[jax.Array, jax.Array]:
  """Log-likelihood of given answers: candidate_ids/mask [B, C, T] (targets with </s>) ->
  (sum of token log-probs [B, C], number of tokens [B, C]). The encoder runs once per example."""
  return _score(config.to_json())(
    params,
    {k: v for k, v in batch.items() if k != "decoder_input_ids"},
    jnp.asarray(candidate_ids, jnp.int32),
    jnp.asarray(candidate_mask, jnp.int32),
  )


def mean_candidate_log_likelihood(
  config: ml_collections.ConfigDict,
  params,
  batch: dict,
  candidates: list[list[list[int]]],
  *,
  num_candidates: int,
  max_len: int,
  pad_id: int = 0,
) -> np.ndarray:
  """Mean log-likelihood per token [B, num_candidates] of each row's candidate answers (token id
  lists with `</s>`, cut at `max_len`); a row's missing candidates score -inf. The mean keeps a short
  answer from winning merely by being short (multiple choice, answer ranking)."""
  width = num_candidates
  ids = np.full((len(candidates), width, max_len), pad_id, np.int32)
  mask = np.zeros_like(ids)
  for b, rows in enumerate(candidates):
    for c, row in enumerate(rows):
      row = row[:max_len]
      ids[b, c, : len(row)], mask[b, c, : len(row)] = row, 1
  total, count = jax.device_get(score_candidates(config, params, batch, ids, mask))
  return np.where(count > 0, total / np.maximum(count, 1), -np.inf)


@functools.lru_cache(maxsize=8)
def _score(config_json: str):
  model = Lion(ml_collections.ConfigDict(json.loads(config_json)))

  def score(params, batch, ids, mask):
    b, c, t = ids.shape
    encoded, enc_mask = model.apply({"params": params}, batch, method=Lion.encode)
    decoder_inputs = jnp.concatenate([jnp.zeros((b, c, 1), jnp.int32), ids[:, :, :-1]], axis=2).reshape(b * c, t)
    logits = model.apply(
      {"params": params},
      decoder_inputs,
      jnp.repeat(encoded, c, 0),
      jnp.repeat(enc_mask, c, 0),
      jnp.repeat(batch["task"], c, 0),
      method=Lion.decode,
    )
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    token_lp = jnp.take_along_axis(log_probs, ids.reshape(b * c, t, 1), axis=-1)[..., 0].reshape(b, c, t)
    return (token_lp * mask).sum(-1), mask.sum(-1)

  return jax.jit(score)
