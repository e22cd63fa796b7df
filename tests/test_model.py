"""The assembled LION model: stage layouts, mixture of adapters, soft prompt, sharding, dtypes."""

from __future__ import annotations

import functools
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from lion_jax import sharding
from lion_jax.models import Lion, example_batch, param_paths, presets
from lion_jax.models.summary import count_params
from lion_jax.models.t5 import T5


def random_batch(config, b=4, seed=0, text_len=9):
  rng = np.random.default_rng(seed)
  size = config.vit.image_size
  ids = lambda n, hi: rng.integers(3, hi, size=(b, n)).astype(np.int32)
  mask = np.ones((b, text_len), np.int32)
  mask[0, -3:] = 0
  return dict(
    image=rng.normal(size=(b, size, size, 3)).astype(np.float32),
    qformer_ids=ids(6, config.qformer.vocab_size),
    qformer_mask=np.ones((b, 6), np.int32),
    input_ids=ids(text_len, config.t5.vocab_size - 1),
    input_mask=mask,
    decoder_input_ids=ids(5, config.t5.vocab_size),
    task=np.array([0, 1] * (b // 2), np.int32),
  )


def init(config, seed=0):
  return nn.unbox(jax.jit(Lion(config).init)(jax.random.key(seed), example_batch(config))["params"])


@functools.cache
def _jitted_apply(config_json: str):
  """One compiled forward per config (compiling the tiny model takes seconds on 2 cores)."""
  config = ml_collections.ConfigDict(json.loads(config_json))
  return jax.jit(lambda p, x: Lion(config).apply({"params": p}, x))


def apply(config, params, batch):
  return _jitted_apply(config.to_json())(params, batch)


def perturb(tree, key, scale=0.5):
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def stage3():
  config = presets.tiny("all")
  return config, init(config)


@pytest.mark.parametrize("visual_input,n_visual", [("qformer", 4), ("aggregator", 17), ("all", 21)])
def test_stage_layouts_create_only_their_modules(visual_input, n_visual):
  config = presets.tiny(visual_input)
  params = init(config)
  assert ("qformer" in params) == (visual_input != "aggregator")
  assert ("aggregator" in params) == (visual_input != "qformer")
  moa = params["t5"]["encoder"]["layers"]["moa"]  # scanned: every leaf [num_layers, ...]
  assert sorted(moa) == (["adapter_0", "adapter_1", "gate_0", "gate_1"] if visual_input == "all" else ["adapter_0"])
  batch = random_batch(config)
  encoded = jax.eval_shape(lambda p, x: Lion(config).apply({"params": p}, x, method=Lion.encode)[0], params, batch)
  assert encoded.shape == (4, n_visual + 9, config.t5.d_model)
  logits = apply(config, params, batch)
  assert logits.shape == (4, 5, config.t5.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()


def test_released_presets_have_the_papers_trainable_counts():
  assert count_params(presets.flant5xl())["trainable"] == 281_570_400
  assert count_params(presets.flant5xxl())["trainable"] == 320_439_392


def t5_text_inputs():
  """(tiny config, input ids, mask, decoder ids, task ids, T5 params with two adapters per FFN)."""
  config = presets.tiny("all")
  rng = np.random.default_rng(0)
  ids, dec = rng.integers(2, 200, (2, 7)).astype(np.int32), rng.integers(2, 200, (2, 4)).astype(np.int32)
  mask, task = np.ones_like(ids), np.array([0, 1], np.int32)
  params = nn.unbox(T5(config.t5, 2).init(jax.random.key(0), ids, mask, dec, task)["params"])
  return config, ids, mask, dec, task, params


def test_zero_initialised_adapters_leave_t5_exactly_unchanged():
  config, ids, mask, dec, task, with_moa = t5_text_inputs()
  flat = traverse_util.flatten_dict(with_moa, sep="/")
  plain = traverse_util.unflatten_dict({k: v for k, v in flat.items() if "/moa/" not in k}, sep="/")
  a = T5(config.t5, 2).apply({"params": with_moa}, ids, mask, dec, task)
  b = T5(config.t5, 0).apply({"params": plain}, ids, mask, dec, task)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_gates_route_task_types_to_different_adapters(stage3):
  config, params = stage3
  batch = random_batch(config)
  trained = jax.tree.map(lambda x: x, params)
  # Give both adapters a non-zero output, then change only adapter_1 (the image-level one).
  key = jax.random.key(1)
  for stack in ("encoder", "decoder"):
    moa = trained["t5"][stack]["layers"]["moa"]  # every layer's adapters, stacked
    for k in ("adapter_0", "adapter_1"):
      key, sub = jax.random.split(key)
      moa[k] = perturb(moa[k], sub)
  base = np.asarray(apply(config, trained, batch))
  changed = jax.tree.map(lambda x: x, trained)
  for stack in ("encoder", "decoder"):
    key, sub = jax.random.split(key)
    moa = changed["t5"][stack]["layers"]["moa"]
    moa["adapter_1"] = perturb(moa["adapter_1"], sub)
  out = np.asarray(apply(config, changed, batch))
  region, image = batch["task"] == 0, batch["task"] == 1
  np.testing.assert_array_equal(out[region], base[region])  # one-hot gates: task 0 never sees adapter_1
  assert np.abs(out[image] - base[image]).max() > 1e-3


def test_per_example_routing_equals_homogeneous_batches(stage3):
  config, params = stage3
  params = perturb(params, jax.random.key(2), scale=0.05)  # gates no longer one-hot, adapters active
  batch = random_batch(config)
  mixed = np.asarray(apply(config, params, batch))
  for t in (0, 1):
    rows = batch["task"] == t
    homogeneous = {k: v[rows] for k, v in batch.items()}
    from tests.reference import max_relative_error

    assert max_relative_error(apply(config, params, homogeneous), mixed[rows]) <= 1e-5


def test_soft_prompt_replaces_exactly_the_sentinel_embeddings(stage3):
  config, params = stage3
  ids = np.array([[5, config.soft_prompt_token_id, 7, 8], [config.soft_prompt_token_id, 9, 9, 0]], np.int32)
  emb = np.asarray(Lion(config).apply({"params": params}, ids, method=Lion.text_embeddings))
  shared, soft = np.asarray(params["t5"]["shared"]), np.asarray(params["soft_prompt"])
  at = ids == config.soft_prompt_token_id
  np.testing.assert_array_equal(emb[at], np.broadcast_to(soft, (at.sum(), soft.size)))
  np.testing.assert_array_equal(emb[~at], shared[ids[~at]])
  assert not np.allclose(soft, shared[config.soft_prompt_token_id])


def test_soft_prompt_changes_only_prompts_that_contain_the_sentinel(stage3):
  config, params = stage3
  batch = random_batch(config)
  batch["input_ids"][0, 2] = config.soft_prompt_token_id
  other = dict(params, soft_prompt=params["soft_prompt"] + 1.0)
  a, b = np.asarray(apply(config, params, batch)), np.asarray(apply(config, other, batch))
  assert np.abs(a[0] - b[0]).max() > 1e-4
  np.testing.assert_array_equal(a[1:], b[1:])


def test_dropout_only_with_train_and_an_rng(stage3):
  config, params = stage3
  batch = random_batch(config)
  a, b = np.asarray(apply(config, params, batch)), np.asarray(apply(config, params, batch))
  np.testing.assert_array_equal(a, b)
  train = jax.jit(lambda p, x, r: Lion(config).apply({"params": p}, x, train=True, rngs={"dropout": r}))
  c, d = np.asarray(train(params, batch, jax.random.key(0))), np.asarray(train(params, batch, jax.random.key(1)))
  assert np.abs(c - a).max() > 1e-3 and np.abs(c - d).max() > 1e-3


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_keep_mask_is_an_unbiased_independent_bernoulli(rate):
  from lion_jax.models.layers import keep_mask

  shape = (64, 9, 257)  # a last dimension that is not a multiple of the 4 draws per hash
  mask = np.asarray(keep_mask(jax.random.key(0), rate, shape))
  n = mask.size
  assert abs(mask.mean() - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / n)
  # No structure along any axis: per-column and per-row keep rates, and neighbours uncorrelated.
  assert np.abs(mask.mean((0, 1)) - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / (64 * 9))
  assert np.abs(mask.reshape(-1, 257).mean(1) - (1 - rate)).max() < 6 * np.sqrt(rate * (1 - rate) / 257)
  flat = mask.reshape(-1).astype(np.float64)
  assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.02
  assert not np.array_equal(mask, np.asarray(keep_mask(jax.random.key(1), rate, shape)))


def test_keep_mask_is_the_same_on_a_device_mesh():
  from lion_jax.models.layers import keep_mask

  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  out = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp"), "tensor"))
  sharded = jax.jit(lambda k: keep_mask(k, 0.3, (8, 6, 33)), out_shardings=out)(jax.random.key(3))
  np.testing.assert_array_equal(np.asarray(sharded), np.asarray(keep_mask(jax.random.key(3), 0.3, (8, 6, 33))))


def test_bf16_compute_with_bf16_frozen_towers_tracks_fp32(stage3):
  config, params = stage3
  batch = random_batch(config)
  ref = np.asarray(apply(config, params, batch))
  bf16 = config.copy_and_resolve_references()
  bf16.dtype = "bfloat16"
  flat = traverse_util.flatten_dict(params, sep="/")
  from lion_jax.models.param_paths import LION

  stored = traverse_util.unflatten_dict(
    {k: v.astype(jnp.bfloat16) if LION.is_frozen(k) else v for k, v in flat.items()}, sep="/"
  )
  out = np.asarray(apply(bf16, stored, batch))
  assert out.dtype == np.float32 and np.isfinite(out).all()
  assert np.abs(out - ref).max() / np.abs(ref).max() < 0.05


def test_sharded_forward_on_2x2x2_mesh_equals_one_device(stage3):
  config, _ = stage3
  assert jax.device_count() == 8, "tests run with 8 fake CPU devices (tests/conftest.py)"
  batch = random_batch(config, b=4)
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  params, shardings = sharding.init_sharded(Lion(config), jax.random.key(0), batch, mesh)
  sharded_leaves = [s for s in jax.tree.leaves(shardings) if any(a is not None for a in s.spec)]
  assert len(sharded_leaves) > 0.5 * len(jax.tree.leaves(shardings))
  with jax.set_mesh(mesh), nn.logical_axis_rules(sharding.DEFAULT_RULES):
    out = jax.jit(lambda p, x: Lion(config).apply({"params": p}, x))(
      params, jax.device_put(batch, sharding.batch_sharding(mesh))
    )
  single = apply(config, jax.device_get(params), batch)
  np.testing.assert_allclose(np.asarray(out), np.asarray(single), rtol=1e-5, atol=1e-5)


def test_dimensions_the_mesh_does_not_divide_stay_replicated():
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
  boxed = {
    "odd_vocab": nn.Partitioned(jax.ShapeDtypeStruct((30523, 8), jnp.float32), ("vocab", "embed")),
    "even": nn.Partitioned(jax.ShapeDtypeStruct((30522, 8), jnp.float32), ("vocab", "embed")),
  }
  specs = sharding.logical_shardings(boxed, mesh)
  assert specs["odd_vocab"].spec == jax.sharding.PartitionSpec(None, "fsdp")
  assert specs["even"].spec == jax.sharding.PartitionSpec("tensor", "fsdp")
  assert len(sharding.describe_fallbacks(boxed, mesh)) == 1


def test_mesh_validation_messages():
  with pytest.raises(ValueError, match="needs 12 devices"):
    sharding.make_mesh(data=3, fsdp=2, tensor=2)
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh(data=-1, fsdp=-1)
  assert dict(sharding.make_mesh(data=-1, fsdp=2, tensor=2).shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_gradient_accumulation_equals_one_big_batch():
  """With equal target lengths and no dropout, 2 micro-batches give the full batch's loss and gradient
  (compared through its norm: Adam turns float noise in near-zero gradients into full-size steps, so
  updated parameters are not comparable element by element)."""
  from lion_jax import optim, run_config, train

  config = presets.tiny("qformer")
  config.t5.dropout_rate = config.qformer.dropout_rate = 0.0
  batch = random_batch(config)
  batch.update(target_ids=batch["decoder_input_ids"], target_mask=np.ones_like(batch["decoder_input_ids"]))
  trainable, frozen = param_paths.LION.split(init(config))
  opt = run_config.optimizer(lr=1e-2, schedule="constant", steps_per_epoch=1)
  tx, schedule = optim.make_optimizer(opt, 10)
  results = []
  for accum in (1, 2):
    state = train.TrainState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable))
    step = jax.jit(train.make_train_step(Lion(config), tx, schedule, accum, seed=0))
    _, metrics = step(state, frozen, batch)
    results.append((float(metrics["loss"]), float(metrics["grad_norm"])))
  assert results[0][0] == pytest.approx(results[1][0], rel=1e-5)
  assert results[0][1] == pytest.approx(results[1][1], rel=1e-4)


def test_the_fused_attention_path_equals_the_einsum_path(stage3):
  """`jax.nn.dot_product_attention` (what cuDNN runs on a GPU; here its XLA implementation) against
  the einsum path: the core with padding, causal and relative-position biases, the whole model's
  logits (every attention call site's shapes and biases), and greedy decoding with the KV cache."""
  import importlib

  from lion_jax.inference import generate
  from lion_jax.models import layers

  generate_module = importlib.import_module("lion_jax.inference.generate")  # the package re-exports the function

  config, params = stage3
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, t, 4, 8)), jnp.float32) for t in (5, 7, 7))
  padding = layers.padding_bias(jnp.asarray([[1] * 7, [1] * 4 + [0] * 3]))
  relative = jnp.asarray(rng.normal(size=(1, 4, 5, 7)), jnp.float32) + jnp.where(jnp.tril(jnp.ones((5, 7))), 0.0, -1e9)
  for bias in (None, padding, relative + padding):
    with layers.attention_kernel("xla"):
      fused = layers.attend(q, k, v, bias, scale=0.35)
    with layers.attention_kernel("einsum"):
      plain = layers.attend(q, k, v, bias, scale=0.35)
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6)
  assert layers._fused_implementation(q.astype(jnp.bfloat16), None, None) is None  # CPU: the einsum path
  with layers.attention_kernel("xla"):
    assert layers._fused_implementation(q, None, probs_dropout=lambda p: p) is None  # dropout: einsum
    assert layers._fused_implementation(q[None], None, None) is None  # Swin's [B, windows, T, H, D]

  batch = random_batch(config)
  outputs = {}
  for kernel in ("xla", "einsum"):
    generate_module._compiled.cache_clear()  # the kernel is chosen at trace time: trace again
    with layers.attention_kernel(kernel):
      logits = jax.jit(lambda p, x: Lion(config).apply({"params": p}, x))(params, batch)
      ids = generate(config, params, batch, num_beams=1, max_new_tokens=4)
    outputs[kernel] = (np.asarray(logits), np.asarray(ids))
  np.testing.assert_allclose(outputs["xla"][0], outputs["einsum"][0], rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(outputs["xla"][1], outputs["einsum"][1])
  with pytest.raises(ValueError, match="attention kernel 'flash'"):
    with layers.attention_kernel("flash"):
      pass
