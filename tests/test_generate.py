"""Generation equals HF transformers' `generate` id for id; the KV cache equals the full decoder."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lion_jax.convert.hf import load_hf_instructblip
from lion_jax.inference import generate, score_candidates
from lion_jax.models import Lion, layer_stack
from tests.conftest import require
from tests.reference import save_safetensors_sharded, state_dict_numpy

EOS, PAD, START, NEW_TOKENS = 1, 0, 0, 12
# Rows of the LM head scaled per model kind (see _converted).
# The last rows of the test vocabulary (120) play a tokenizer's padding rows (FlanT5's 32100-32127).
TOKENIZER_SIZE = 112
HEAVY_TOKENS = {
  "plain": {},
  "eos_heavy": {EOS: 3.0},
  "start_heavy": {START: 2.0},
  "padding_heavy": {token: 10.0 for token in range(TOKENIZER_SIZE, 120)},
}


def _converted(kind: str, tmp_path_factory):
  """A random InstructBLIP-T5 (HF) and its conversion. 'eos_heavy' ends some sequences early;
  'start_heavy' makes the decoder start token a likely next token, so that leaving it out of the
  repetition penalty (HF counts it as generated) changes the ids; 'padding_heavy' makes the rows from
  TOKENIZER_SIZE up (padding rows no tokenizer can write) the largest logits."""
  torch, transformers = require("torch"), require("transformers")
  from tests.test_parity_hf import make_instructblip

  model = make_instructblip(transformers, torch, num_decoder_layers=2)
  with torch.no_grad():
    for token, factor in HEAVY_TOKENS[kind].items():
      model.language_model.lm_head.weight[token] *= factor
  directory = tmp_path_factory.mktemp(kind)
  save_safetensors_sharded(state_dict_numpy(model), directory, num_shards=1)
  model.config.save_pretrained(directory)
  config, params = load_hf_instructblip(directory)
  return model, config, params


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """kind -> (HF model, our config, our params), each kind built once per module."""
  built = {}

  def get(kind):
    if kind not in built:
      built[kind] = _converted(kind, tmp_path_factory)
    return built[kind]

  return get


@pytest.fixture(scope="module", params=["plain", "eos_heavy"])
def both(request, models):
  return models(request.param)


@pytest.fixture(scope="module")
def converted(models):
  return models("plain")


@pytest.fixture(scope="module")
def eos_heavy(models):
  return models("eos_heavy")


def inputs(b=3, seed=0):
  rng = np.random.default_rng(seed)
  q = rng.integers(3, 90, (b, 6)).astype(np.int32)
  q_mask = np.ones_like(q)
  q_mask[1, 4:] = 0
  text = rng.integers(3, 110, (b, 9)).astype(np.int32)
  mask = np.ones_like(text)
  mask[0, 7:] = 0
  return dict(
    image=rng.normal(size=(b, 28, 28, 3)).astype(np.float32),
    qformer_ids=q,
    qformer_mask=q_mask,
    input_ids=text,
    input_mask=mask,
    task=np.ones((b,), np.int32),
  )


def hf_generate(model, batch, **kwargs) -> np.ndarray:
  """HF ids without the start token, as [B, NEW_TOKENS] with pad after the first EOS (HF's beam search
  fills finished T5 rows with EOS instead; the ids up to EOS are what is compared)."""
  import torch

  b = batch["input_ids"].shape[0]
  ids = np.concatenate([np.full((b, 4), 119, np.int32), batch["input_ids"]], 1)  # query placeholders
  mask = np.concatenate([np.ones((b, 4), np.int32), batch["input_mask"]], 1)
  with torch.no_grad():
    out = model.generate(
      pixel_values=torch.from_numpy(batch["image"].transpose(0, 3, 1, 2)),
      qformer_input_ids=torch.from_numpy(batch["qformer_ids"]).long(),
      qformer_attention_mask=torch.from_numpy(batch["qformer_mask"]).long(),
      input_ids=torch.from_numpy(ids).long(),
      attention_mask=torch.from_numpy(mask).long(),
      do_sample=False,
      max_new_tokens=NEW_TOKENS,
      **kwargs,
    ).numpy()[:, 1:]
  padded = np.full((b, NEW_TOKENS), PAD, np.int32)
  padded[:, : out.shape[1]] = out
  for row in padded:
    eos = np.flatnonzero(row == EOS)
    if eos.size:
      row[eos[0] + 1 :] = PAD
  return padded


def assert_ids_equal_hf(converted, batch, **settings) -> np.ndarray:
  """Our ids equal HF's for these generation settings; returns them."""
  model, config, params = converted
  expected = hf_generate(model, batch, **settings)
  ours = np.asarray(generate(config, params, batch, max_new_tokens=NEW_TOKENS, **settings))
  assert ours.dtype == np.int32
  np.testing.assert_array_equal(ours, expected)
  return expected


DEFAULTS = dict(num_beams=3, repetition_penalty=1.5, min_length=1, length_penalty=1.0, early_stopping=False)


@pytest.mark.parametrize("num_beams", [1, 3, 5])
@pytest.mark.parametrize("repetition_penalty", [1.0, 1.5])
def test_ids_equal_hf_generate(both, num_beams, repetition_penalty):
  ids = assert_ids_equal_hf(
    both, inputs(), **{**DEFAULTS, "num_beams": num_beams, "repetition_penalty": repetition_penalty}
  )
  assert len({tuple(r) for r in ids}) > 1  # a real comparison, not three identical rows


@pytest.mark.parametrize("num_beams", [1, 3])
def test_the_decoder_start_token_counts_for_the_repetition_penalty(models, num_beams):
  """HF penalises every token of the decoder sequence, the start token included: with the
  start-heavy model, leaving it out changes the ids."""
  assert_ids_equal_hf(models("start_heavy"), inputs(), **{**DEFAULTS, "num_beams": num_beams})


@pytest.mark.parametrize(
  "changed",
  [
    dict(length_penalty=2.0, early_stopping=True, min_length=5),
    dict(length_penalty=2.0, early_stopping="never"),
    dict(num_beams=1, min_length=5),
  ],
)
def test_length_penalty_early_stopping_and_min_length_equal_hf(eos_heavy, changed):
  """With the eos-heavy model, whose hypotheses finish at different lengths, on inputs where the
  three early-stopping rules part: every changed setting changes HF's ids (checked)."""
  model, batch = eos_heavy[0], inputs(seed=1)
  settings = {**DEFAULTS, **changed}
  expected = assert_ids_equal_hf(eos_heavy, batch, **settings)
  for name in changed.keys() - {"num_beams"}:
    assert not np.array_equal(hf_generate(model, batch, **{**settings, name: DEFAULTS[name]}), expected), name


@pytest.mark.parametrize("num_beams", [1, 3])
def test_padding_rows_are_never_generated_as_hf_suppress_tokens_would(models, num_beams):
  """With `vocab_size`, a model whose padding rows carry its largest logits never emits them: the ids
  equal HF's with those rows suppressed (HF generate itself emits them, and so do we without it)."""
  heavy = models("padding_heavy")
  model, config, params = heavy
  settings = {**DEFAULTS, "num_beams": num_beams}
  unmasked = assert_ids_equal_hf(heavy, inputs(), **settings)
  assert (unmasked >= TOKENIZER_SIZE).any()
  expected = hf_generate(model, inputs(), suppress_tokens=list(range(TOKENIZER_SIZE, 120)), **settings)
  masked = np.asarray(
    generate(config, params, inputs(), max_new_tokens=NEW_TOKENS, vocab_size=TOKENIZER_SIZE, **settings)
  )
  np.testing.assert_array_equal(masked, expected)
  assert (masked < TOKENIZER_SIZE).all() and len({tuple(r) for r in masked}) > 1


def test_eos_heavy_model_finishes_some_sequences_early(eos_heavy):
  _, config, params = eos_heavy
  ours = np.asarray(generate(config, params, inputs(), num_beams=3, max_new_tokens=NEW_TOKENS))
  finished = np.any(ours == EOS, axis=1)
  assert finished.any() and not finished.all()  # the HF comparison covers both kinds of rows
  for row in ours[finished]:
    assert (row[np.flatnonzero(row == EOS)[0] + 1 :] == PAD).all()


def test_cached_decoding_equals_the_full_decoder(converted):
  _, config, params = converted
  batch = inputs()
  model = Lion(config)
  encoded, mask = model.apply({"params": params}, batch, method=Lion.encode)
  tokens = np.random.default_rng(1).integers(2, 120, (3, 7)).astype(np.int32)
  full = model.apply({"params": params}, tokens, encoded, mask, batch["task"], method=Lion.decode)
  caches = {}  # the encoder's keys and values are written on the first step only
  for t in range(tokens.shape[1]):
    step, updated = model.apply(
      {"params": params, **caches},
      tokens[:, t : t + 1],
      encoded,
      mask,
      batch["task"],
      cache_len=7,
      cache_index=t,
      method=Lion.decode,
      mutable=[layer_stack.DECODE_CACHE] + ([layer_stack.ENCODER_CACHE] if t == 0 else []),
    )
    caches.update(updated)
    np.testing.assert_allclose(step[:, 0], full[:, t], rtol=1e-5, atol=1e-5)


def test_candidate_scores_are_target_log_likelihoods(converted):
  _, config, params = converted
  batch = inputs(b=2)
  candidates = np.array([[[5, 6, EOS, 0], [7, EOS, 0, 0]], [[9, 9, 9, EOS], [3, EOS, 0, 0]]], np.int32)
  mask = (np.cumsum(candidates == EOS, axis=2) - (candidates == EOS) == 0).astype(np.int32)
  total, count = score_candidates(config, params, batch, candidates, mask)
  for i in range(2):
    for c in range(2):
      single = {k: v[i : i + 1] for k, v in batch.items()}
      ids = candidates[i : i + 1, c]
      dec = np.concatenate([[[0]], ids[:, :-1]], axis=1).astype(np.int32)
      logits = Lion(config).apply({"params": params}, {**single, "decoder_input_ids": dec})
      lp = jax.nn.log_softmax(logits, -1)[0, np.arange(4), ids[0]]
      assert float(total[i, c]) == pytest.approx(float((lp * mask[i, c]).sum()), rel=1e-5)
      assert int(count[i, c]) == mask[i, c].sum()


def test_bad_arguments_are_refused(converted):
  _, config, params = converted
  with pytest.raises(ValueError, match="num_beams=0"):
    generate(config, params, inputs(), num_beams=0)


def test_generation_on_a_sharded_mesh_equals_one_device(converted):
  import flax.linen as nn

  from lion_jax import sharding
  from lion_jax.models import example_batch

  _, config, params = converted
  batch = inputs(b=4)
  expected = np.asarray(generate(config, params, batch, num_beams=3, max_new_tokens=NEW_TOKENS))
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    boxed = jax.eval_shape(lambda: Lion(config).init(jax.random.key(0), example_batch(config))["params"])
    sharded = jax.device_put(params, sharding.logical_shardings(boxed, mesh))
    sharded_batch = jax.device_put(batch, sharding.batch_sharding(mesh))
    out = generate(config, sharded, sharded_batch, num_beams=3, max_new_tokens=NEW_TOKENS)
  assert any(len(x.sharding.device_set) == 8 for x in jax.tree.leaves(sharded))
  np.testing.assert_array_equal(np.asarray(out), expected)
