"""Freezing as configuration and the tower-pretraining stage: what each stage trains, saves and hands on."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from lion_jax import checkpoints, sharding, train
from lion_jax.errors import UserError
from lion_jax.models import param_paths
from lion_jax.models.param_paths import LION, FreezeRule
from tests.test_train import make_config, saved_paths

STEPS = 4
LAST_TWO_VIT_BLOCKS_TRAIN = (r"vit/(?!blocks_(3|4)/).*", r"t5/(?!.*/moa/).*")  # the tiny ViT has blocks 0-4


def test_freeze_rule_matches_whole_paths():
  assert LION.is_frozen("vit/blocks_0/attn/qkv/kernel") and LION.is_frozen("t5/encoder/layers_0/ffn/wo/kernel")
  assert not LION.is_frozen("t5/encoder/layers_0/moa/adapter_1/down/kernel")
  assert not LION.is_frozen("t5/decoder/layers_1/moa/gate_0")
  assert not LION.is_frozen("qformer/query_tokens") and not LION.is_frozen("soft_prompt")
  assert not FreezeRule(["vit"]).is_frozen("vit/cls_token")  # a whole-path match, not a prefix
  trainable, frozen = FreezeRule([]).split({"vit": {"a": 1}, "t5": {"b": 2}})
  assert frozen == {} and trainable == {"vit": {"a": 1}, "t5": {"b": 2}}
  with pytest.raises(ValueError, match=r"stages.x.frozen: '\(' is not a valid regular expression"):
    FreezeRule(["("], "stages.x.frozen")
  with pytest.raises(ValueError, match=r"stages.x.frozen: pattern\(s\) \['vitt/.\*'\] match no parameter"):
    FreezeRule(["vit/.*", "vitt/.*"], "stages.x.frozen").check(["vit/cls_token", "t5/shared/embedding"])


def test_a_stage_can_also_train_the_last_two_vit_blocks(data_dir, tmp_path):
  config = make_config(data_dir, tmp_path, steps=STEPS, stages_to_run="stage1")
  config.stages.stage1.frozen = list(LAST_TWO_VIT_BLOCKS_TRAIN)
  mesh = sharding.make_mesh(**config.mesh)
  rules = sharding.config_rules(config)
  # Scanned blocks share one stacked array per parameter: training two of them is refused, by name.
  with pytest.raises(UserError, match=r"freezes some of the 5 layers stacked in vit/blocks/.*scan_layers=False"):
    train.abstract_state(config, "stage1", mesh, rules, 1)
  config.model.scan_layers = False
  abstract, abstract_frozen, *_ = train.abstract_state(config, "stage1", mesh, rules, 1)
  init_trainable, init_frozen = train.init_params(config, "stage1", mesh, rules, [], (abstract.params, abstract_frozen))
  init_trainable = param_paths.flatten(jax.device_get(init_trainable))
  init_frozen = param_paths.flatten(jax.device_get(init_frozen))
  train.run(config, tmp_path)

  s1 = checkpoints.load_final_trainables(tmp_path / "stage1" / "checkpoints", "stage1")
  vit_trained = sorted({k.split("/")[1] for k in s1 if k.startswith("vit/")})
  assert vit_trained == ["blocks_3", "blocks_4"]
  for k in s1:
    if k.startswith("vit/blocks_4/fc1"):
      assert not np.array_equal(s1[k], init_trainable[k]), k  # trained
  step_dir = tmp_path / "stage1" / "checkpoints" / str(STEPS)
  for item in ("trainable", "opt_state"):
    paths = saved_paths(step_dir, item)
    assert any("vit/blocks_3/" in p for p in paths), item
    assert not any("vit/blocks_2/" in p or "vit/cls_token" in p or "/ffn/" in p and "/moa/" not in p for p in paths), (
      item
    )

  # Stage 2 (LION's rule: the whole ViT frozen) starts from stage 1's trained blocks; the rest of
  # the ViT is bitwise the initial one in both stages.
  abstract2, frozen2_abstract, *_ = train.abstract_state(config, "stage2", mesh, rules, 1)
  _, frozen2 = train.init_params(
    config, "stage2", mesh, rules, [("qformer", "moa", s1)], (abstract2.params, frozen2_abstract)
  )
  frozen2 = param_paths.flatten(jax.device_get(frozen2))
  key3, key0 = "vit/blocks_3/fc1/kernel", "vit/blocks_0/fc1/kernel"
  np.testing.assert_array_equal(frozen2[key3], s1[key3])
  np.testing.assert_array_equal(frozen2[key0], init_frozen[key0])


def test_a_pattern_that_matches_nothing_is_an_error(data_dir, tmp_path):
  config = make_config(data_dir, tmp_path, steps=STEPS)
  config.stages.stage1.frozen = ["vit/.*", "t5/(?!.*/moa/).*", "vision_tower/.*"]
  with pytest.raises(ValueError, match=r"stages.stage1.frozen: pattern\(s\) \['vision_tower/.\*'\] match no parameter"):
    train.run(config, tmp_path)
