"""Scanned layers equal unrolled ones: logits, a training step, generation, remat; the two parameter
layouts convert into each other, and converted checkpoints and freezing rules work in both."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest

from lion_jax import sharding
from lion_jax.convert import load_converted, save_converted
from lion_jax.errors import UserError
from lion_jax.inference.generate import generate
from lion_jax.models import Lion, layer_stack, param_paths, presets
from lion_jax.models.param_paths import LION_FROZEN, FreezeRule
from lion_jax.train import TrainState, make_train_step
from tests.reference import max_relative_error
from tests.test_model import init, random_batch


def without_dropout(config):
  for tower in ("qformer", "aggregator", "t5"):
    config[tower].dropout_rate = 0.0
  return config


@pytest.fixture(scope="module")
def layouts():
  """(scanned config, its params, the unrolled config, the same params unrolled), stage-3 tiny LION."""
  scanned = without_dropout(presets.tiny("all"))
  params = jax.device_get(init(scanned, seed=3))
  unrolled = layer_stack.unrolled_config(scanned)
  per_layer = param_paths.unflatten(layer_stack.to_layout(param_paths.flatten(params), unrolled))
  return scanned, params, unrolled, per_layer


def test_the_layouts_convert_into_each_other_exactly(layouts):
  scanned, params, unrolled, per_layer = layouts
  flat, flat_unrolled = param_paths.flatten(params), param_paths.flatten(per_layer)
  assert "t5/decoder/layers/moa/gate_1" in flat and flat["t5/decoder/layers/moa/gate_1"].shape[0] == 2
  assert flat["vit/blocks/fc1/kernel"].shape[0] == 5
  assert flat["qformer/encoder/layers/layers_1/query_ffn/fc1/kernel"].shape[0] == 1  # 2 layers, 1 unit
  assert "qformer/encoder/layers_1/query_ffn/fc1/kernel" in flat_unrolled
  assert "qformer/encoder/layers_0/cross_attention/query/kernel" in flat_unrolled
  assert "qformer/encoder/layers_1/cross_attention/query/kernel" not in flat_unrolled  # only even layers
  assert sorted(flat_unrolled) == sorted(param_paths.flatten(jax.eval_shape(lambda: init(unrolled))))
  assert not layer_stack.is_scanned(flat_unrolled, scanned) and layer_stack.is_scanned(flat, scanned)
  back = layer_stack.to_layout(flat_unrolled, scanned)
  assert sorted(back) == sorted(flat)
  for k, v in flat.items():
    np.testing.assert_array_equal(back[k], v, err_msg=k)
  with pytest.raises(UserError, match="mixes the scanned and the unrolled"):
    layer_stack.is_scanned({**flat, "t5/encoder/layers_0/ffn/wo/kernel": 0}, scanned)
  missing = {k: v for k, v in flat_unrolled.items() if not k.startswith("t5/encoder/layers_1/")}
  with pytest.raises(UserError, match=r"t5/encoder/layers/.*has layers \[0\] of this stack, the model 2 units"):
    layer_stack.to_layout(missing, scanned)


def test_scanned_logits_equal_unrolled(layouts):
  scanned, params, unrolled, per_layer = layouts
  batch = random_batch(scanned)
  a = jax.jit(lambda p, x: Lion(scanned).apply({"params": p}, x))(params, batch)
  b = jax.jit(lambda p, x: Lion(unrolled).apply({"params": p}, x))(per_layer, batch)
  assert max_relative_error(a, b) <= 1e-5


def assert_same_gradients(got: dict, expected: dict, what: str) -> None:
  """Equal up to reordered float sums: each leaf's largest difference within 1e-5 of its largest
  value, or of a millionth of the largest gradient for leaves that are zero in exact arithmetic
  (the Q-Former key biases: softmax ignores a shift of every logit)."""
  floor = 1e-6 * max(np.abs(g).max() for g in expected.values())
  for k, g in expected.items():
    assert np.abs(got[k] - g).max() <= 1e-5 * max(np.abs(g).max(), floor), f"{what}: {k}"


def one_sgd_step(config, params, batch):
  """(loss, updated trainables) of one plain-SGD training step: the update is the gradient itself."""
  rule = FreezeRule(LION_FROZEN, stacks=layer_stack.scanned_stacks(config))
  trainable, frozen = rule.split(params)
  tx = optax.sgd(1.0)
  step = make_train_step(Lion(config), tx, optax.constant_schedule(1.0), grad_accum_steps=1, seed=0)
  state, metrics = jax.jit(step)(TrainState(np.int32(0), trainable, tx.init(trainable)), frozen, batch)
  return float(metrics["loss"]), param_paths.flatten(jax.device_get(state.params))


def test_a_training_step_is_the_same_scanned_and_unrolled(layouts):
  scanned, params, unrolled, per_layer = layouts
  rng = np.random.default_rng(1)
  batch = random_batch(scanned)
  batch["target_ids"] = rng.integers(1, scanned.t5.vocab_size, batch["decoder_input_ids"].shape).astype(np.int32)
  batch["target_mask"] = np.ones_like(batch["target_ids"])
  loss_a, updated_a = one_sgd_step(scanned, params, batch)
  loss_b, updated_b = one_sgd_step(unrolled, per_layer, batch)
  assert loss_a == pytest.approx(loss_b, rel=1e-6)
  updated_b = layer_stack.to_layout(updated_b, scanned)
  assert sorted(updated_a) == sorted(updated_b)
  initial = param_paths.flatten(params)
  grads = lambda updated: {k: initial[k] - v for k, v in updated.items()}
  assert_same_gradients(grads(updated_a), grads(updated_b), "scanned vs unrolled")


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generated_ids_are_the_same_scanned_and_unrolled(layouts, num_beams):
  scanned, params, unrolled, per_layer = layouts
  batch = random_batch(scanned, b=2)
  a = generate(scanned, params, batch, num_beams=num_beams, max_new_tokens=6)
  b = generate(unrolled, per_layer, batch, num_beams=num_beams, max_new_tokens=6)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_every_remat_policy_gives_the_same_gradients(layouts):
  scanned, params, unrolled, per_layer = layouts
  batch = random_batch(scanned)

  def grads(config, p):
    loss = lambda p: Lion(config).apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(1)}).sum()
    return param_paths.flatten(jax.device_get(jax.jit(jax.grad(loss))(p)))

  reference = grads(scanned, params)
  for remat, config, p in [("full", scanned, params), ("matmuls", scanned, params), ("full", unrolled, per_layer)]:
    config = config.copy_and_resolve_references()
    config.remat = remat
    got = layer_stack.to_layout(grads(config, p), scanned)
    assert_same_gradients(got, reference, f"remat={remat} scan_layers={config.scan_layers}")
  with pytest.raises(UserError, match=r"model.remat='some'; expected one of \['full', 'matmuls', 'none'\]"):
    layer_stack.check_remat("some")


def test_freezing_rules_address_stacked_layers_by_their_per_layer_paths(layouts):
  scanned, params, *_ = layouts
  stacks = layer_stack.scanned_stacks(scanned)
  flat = param_paths.flatten(params)
  lion = FreezeRule(LION_FROZEN, stacks=stacks)
  assert lion.is_frozen("vit/blocks/fc1/kernel") and lion.is_frozen("t5/encoder/layers/ffn/wo/kernel")
  assert not lion.is_frozen("t5/encoder/layers/moa/adapter_1/down/kernel")
  only_the_decoder_trains = FreezeRule([r"vit/.*", r"t5/(?!decoder/layers_\d+/ffn/).*"], stacks=stacks)
  assert not only_the_decoder_trains.is_frozen("t5/decoder/layers/ffn/wo/kernel")
  only_the_decoder_trains.check(list(flat))
  last_block_trains = FreezeRule([r"vit/(?!blocks_4/).*"], "stages.stage1.frozen", stacks)
  with pytest.raises(UserError, match=r"stages.stage1.frozen freezes some of the 5 layers stacked in vit/blocks/"):
    last_block_trains.split(params)
  with pytest.raises(UserError, match=r"match no parameter.*such as 'aggregator/"):
    FreezeRule([r"vit/blocks_9/.*"], stacks=stacks).check(list(flat))


@pytest.mark.parametrize("on_mesh", [False, True])
def test_a_converted_checkpoint_loads_into_either_layout(layouts, tmp_path, on_mesh):
  scanned, params, unrolled, per_layer = layouts
  mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2) if on_mesh else None
  save_converted(tmp_path / "scanned", scanned, params)
  save_converted(tmp_path / "unrolled", unrolled, per_layer)
  for directory in ("scanned", "unrolled"):
    for want, expected in ((True, params), (False, per_layer)):
      config, loaded = load_converted(tmp_path / directory, mesh, scan_layers=want)
      assert config.scan_layers == want
      if on_mesh:  # on the shardings the wanted layout's model asks for
        shardings = sharding.param_shardings(Lion(config), random_batch(config), mesh)
        assert jax.tree.all(jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim), loaded, shardings))
      got, expected = param_paths.flatten(jax.device_get(loaded)), param_paths.flatten(expected)
      assert sorted(got) == sorted(expected), (directory, want)
      for k, v in expected.items():
        np.testing.assert_array_equal(got[k], v, err_msg=f"{directory} -> scan_layers={want}: {k}")
    config, _ = load_converted(tmp_path / directory)  # as stored
    assert config.scan_layers == (directory == "scanned")


def test_an_uneven_qformer_cannot_be_scanned():
  config = presets.tiny("qformer")
  config.qformer.num_layers = 3
  with pytest.raises(UserError, match=r"qformer: 3 layers do not make units of 2 .*scan_layers=False"):
    nn.unbox(jax.eval_shape(lambda: init(config)))
  config.scan_layers = False
  jax.eval_shape(lambda: init(config))
