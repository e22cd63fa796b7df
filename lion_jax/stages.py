"""Stage-wise training: what each stage builds, what it trains, and where it starts from.

LION trains in three stages (paper, Fig. 3; official modes in parentheses):
  stage 1 (`qformer`):    image-level data; Q-Former branch + one adapter per FFN (the image-level one)
  stage 2 (`aggregator`): region-level data; aggregator + one adapter per FFN (the region-level one)
  stage 3 (`all`):        both; Q-Former, aggregator, two adapters + gates per FFN

A stage config (`config.stages.<name>`, built by `run_config.stage`) says:
  visual_input   the layout above
  frozen         whole-path regular expressions of the parameters it keeps fixed (models.param_paths;
                 LION's rule by default: the ViT and the T5 body; `()` trains everything)
  adapters       `moa` (LION's), `single` (one adapter shared by both levels) or `none` (plain T5)
  soft_prompt    whether the model has the tag soft prompt (the learned vector at `<extra_id_0>`)
  tags           whether records' tags go into the prompt (LION's tag template; without the soft
                 prompt its `<extra_id_0>` is a plain token)
  pretrained     '' = `config.pretrained`, 'random' = a fresh init, or a converted checkpoint directory
  init_from      earlier stages whose final trainables start this one (`handoff`)
  lr             0 = `config.optimizer.lr`, else this stage's peak learning rate
  mixture, num_steps, export

`handoff` is the explicit map from earlier stages' final trainables to a stage's initial values. A
single-adapter stage trains the adapter of its task level: stage 1 the image-level one, stage 2 the
region-level one. In stage 3 task t's gate starts one-hot on adapter t, so adapter 0 comes from
stage 2 and adapter 1 from stage 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import ml_collections
import numpy as np

from lion_jax.models import adapters_per_ffn, layer_stack, param_paths
from lion_jax.models.param_paths import FreezeRule

# The task level whose adapter a single-adapter stage of this layout trains.
_ADAPTER_OF_LAYOUT = {"qformer": param_paths.IMAGE_LEVEL, "aggregator": param_paths.REGION_LEVEL}
RANDOM = "random"


def model_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.model` with the stage's layout, adapters and soft prompt."""
  stage = config.stages[name]
  model = config.model.copy_and_resolve_references()
  model.unlock()  # a converted checkpoint's config may predate `adapters`
  model.visual_input = stage.visual_input
  model.adapters = stage.get("adapters", "moa")
  model.use_soft_prompt = bool(stage.get("soft_prompt", True)) and model.use_soft_prompt
  return model


def data_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.data` with the stage's mixture and tag settings (its model's soft prompt included)."""
  data = config.data.copy_and_resolve_references()
  data.mixture = config.stages[name].mixture
  data.use_tags = data.use_tags and bool(config.stages[name].get("tags", True))
  data.soft_prompt = model_config(config, name).use_soft_prompt
  return data


def optimizer_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
  """`config.optimizer` with the stage's own learning rate, if it sets one."""
  optimizer = config.optimizer.copy_and_resolve_references()
  if config.stages[name].get("lr", 0.0):
    optimizer.lr = config.stages[name].lr
  return optimizer


def freeze_rule(config: ml_collections.ConfigDict, name: str) -> FreezeRule:
  stacks = layer_stack.scanned_stacks(model_config(config, name))
  return FreezeRule(config.stages[name].get("frozen", param_paths.LION_FROZEN), f"stages.{name}.frozen", stacks)


def pretrained_dir(config: ml_collections.ConfigDict, name: str) -> str:
  """The converted checkpoint a stage starts from ('' for a fresh init)."""
  own = config.stages[name].get("pretrained", "")
  chosen = own or config.pretrained
  return "" if chosen == RANDOM else chosen


def _levels_of_adapter(layout: str, adapters: str, index: int) -> tuple[int, ...]:
  """The task levels adapter `index` serves in a stage of this layout and adapter mode."""
  if adapters == "single":
    return (param_paths.REGION_LEVEL, param_paths.IMAGE_LEVEL)
  return (index,) if adapters_per_ffn(layout, adapters) == 2 else (_ADAPTER_OF_LAYOUT[layout],)


def _adapter_for_level(layout: str, adapters: str, level: int) -> int | None:
  """The adapter that serves `level` in a stage of this layout and mode (None: no adapter does)."""
  if adapters == "none":
    return None
  if adapters == "single":
    return 0
  if adapters_per_ffn(layout, adapters) == 2:
    return level
  return 0 if _ADAPTER_OF_LAYOUT[layout] == level else None


def handoff(
  layout: str, adapters: str, previous: Sequence[tuple[str, str, Mapping[str, np.ndarray]]]
) -> dict[str, np.ndarray]:
  """Initial values for a stage of `layout` and adapter mode `adapters` from earlier stages, given as
  (their layout, their adapter mode, their flat final trainables) in `init_from` order (a later
  stage wins where two trained the same path).

  Adapter weights go to the adapter of the same task level (stage 1's single adapter becomes stage
  3's adapter 1, and has no place in stage 2; a shared adapter serves both levels); every other
  trained path is carried over as it is. The caller drops, and reports, the paths this stage's model
  does not have (e.g. stage 1's Q-Former in stage 2).
  """
  out: dict[str, np.ndarray] = {}
  for source_layout, source_adapters, trained in previous:
    for path, value in trained.items():
      index = param_paths.adapter_index(path)
      if index is None:
        out[path] = value
        continue
      for level in _levels_of_adapter(source_layout, source_adapters, index):
        target = _adapter_for_level(layout, adapters, level)
        if target is not None:
          out[param_paths.rename_adapter(path, target)] = value
  return out
