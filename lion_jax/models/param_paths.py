"""The parameter-path vocabulary and the freezing rule: how every part of LION is addressed.

Parameters are addressed by the '/'-joined path of their Flax tree, e.g.

  vit/blocks_3/mlp/fc1/kernel                          the EVA ViT
  qformer/...                                          the Q-Former branch (stages 1, 3)
  aggregator/...                                       the vision aggregator (stages 2, 3)
  t5/encoder/layers_0/ffn/wi_0/kernel                  the FlanT5 body
  t5/encoder/layers_0/moa/adapter_1/down/kernel        an adapter of the mixture beside that FFN
  t5/encoder/layers_0/moa/gate_1                       its per-task gate (only with two adapters)
  soft_prompt                                          the learned tag-prompt vector

in the unrolled layout; with `scan_layers` a stack's layers share one subtree with a leading layer
axis (`t5/encoder/layers/moa/gate_1`, `vit/blocks/...`: models/layer_stack.py), which the same
rules address.

Freezing, the stage hand-off, the parameter summary and the converters all speak this vocabulary, so
it lives here once. A `FreezeRule` is a list of regular expressions, each matched against the whole
path: a parameter is frozen when any pattern matches it. LION's rule freezes the ViT and the T5 body
and trains everything else a stage creates.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from flax import traverse_util

from lion_jax.errors import UserError
from lion_jax.models import layer_stack

VIT, QFORMER, AGGREGATOR, T5, SOFT_PROMPT, MOA = "vit", "qformer", "aggregator", "t5", "soft_prompt", "moa"

# Task types as the official code numbers them; task t's gate row starts on adapter t (adapters.py).
REGION_LEVEL, IMAGE_LEVEL = 0, 1
TASK_LEVELS = ("region_level", "image_level")  # name of task type 0, 1

LION_FROZEN = (r"vit/.*", r"t5/(?!.*/moa/).*")  # the ViT and the T5 body; adapters and gates train

_ADAPTER = re.compile(r"^(t5/(?:encoder|decoder)/layers(?:_\d+)?/moa/)adapter_(\d+)/(.*)$")


def adapter(index: int) -> str:
  return f"adapter_{index}"


def gate(index: int) -> str:
  return f"gate_{index}"


def adapter_index(path: str) -> int | None:
  """k for a path inside `.../moa/adapter_k/`, else None."""
  m = _ADAPTER.match(path)
  return int(m.group(2)) if m else None


def rename_adapter(path: str, index: int) -> str | None:
  """`.../moa/adapter_k/rest` -> `.../moa/adapter_<index>/rest`; None for a path that is no adapter's."""
  m = _ADAPTER.match(path)
  return f"{m.group(1)}{adapter(index)}/{m.group(3)}" if m else None


def module_of(path: str) -> str:
  """The part of LION a parameter belongs to, for summaries: 'vit', 't5 body', 't5 adapters+gates', ..."""
  if path.startswith(f"{T5}/"):
    return "t5 adapters+gates" if f"/{MOA}/" in path else "t5 body"
  return path.split("/")[0]


def flatten(tree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]):
  return traverse_util.unflatten_dict(flat, sep="/")


def merge(*trees):
  """One tree from several with disjoint paths (later trees win on a shared path)."""
  out: dict[str, Any] = {}
  for tree in trees:
    out.update(flatten(tree))
  return unflatten(out)


class FreezeRule:
  """Which parameters a stage keeps fixed: whole-path regular expressions (`()` trains everything).

  Patterns speak per-layer paths (`vit/blocks_38/...`) in either layout: given the model's scanned
  `stacks`, a stacked leaf is frozen when the patterns freeze every layer it holds, trainable when
  they freeze none, and an error when they split it (stacked layers train or freeze together)."""

  def __init__(self, patterns: Iterable[str], where: str = "frozen", stacks: Sequence[layer_stack.Stack] = ()):
    self.patterns = tuple(patterns)
    self.where = where
    self.stacks = tuple(stacks)
    self._compiled = []
    for p in self.patterns:
      try:
        self._compiled.append(re.compile(p))
      except re.error as e:
        raise UserError(f"{where}: {p!r} is not a valid regular expression: {e}") from None

  def _layer_paths(self, path: str) -> list[str]:
    return layer_stack.unrolled_paths(path, self.stacks) or [path]

  def is_frozen(self, path: str) -> bool:
    layer_paths = self._layer_paths(path)
    frozen = [any(c.fullmatch(p) for c in self._compiled) for p in layer_paths]
    if any(frozen) and not all(frozen):
      kept = [p for p, f in zip(layer_paths, frozen) if not f]
      raise UserError(
        f"{self.where} freezes some of the {len(layer_paths)} layers stacked in {path} but not {kept[:3]}: "
        "scanned layers train or freeze together; set --config.model.scan_layers=False to train part of a stack"
      )
    return frozen[0]

  def split(self, tree) -> tuple[dict, dict]:
    """(trainable, frozen) subtrees of a parameter (or sharding, or abstract) tree."""
    flat = flatten(tree)
    is_frozen = {k: self.is_frozen(k) for k in flat}  # once per path: a stacked leaf expands to its layers
    trainable = {k: v for k, v in flat.items() if not is_frozen[k]}
    frozen = {k: v for k, v in flat.items() if is_frozen[k]}
    return unflatten(trainable), unflatten(frozen)

  def check(self, paths: Sequence[str]) -> None:
    """Every pattern must match some parameter: a typo would otherwise silently train a tower."""
    layer_paths = [p for path in paths for p in self._layer_paths(path)]
    unused = [p for p, c in zip(self.patterns, self._compiled) if not any(c.fullmatch(k) for k in layer_paths)]
    if unused:
      example = next(iter(layer_paths), "")
      raise UserError(
        f"{self.where}: pattern(s) {unused} match no parameter of this model; patterns are "
        f"regular expressions over whole '/'-joined paths such as {example!r}"
      )


LION = FreezeRule(LION_FROZEN, "LION's freezing rule")
