"""Repeated layers, scanned or unrolled, and the two parameter layouts that follow from it.

`config.scan_layers` (a model config field, True in every preset) runs the ViT blocks, the Q-Former
layers and the T5 encoder and decoder blocks as one `nn.scan` each: the program holds one layer,
not 24 + 24 + 12 + 39, so it traces and compiles in about a minute instead of ten (XL stage 3,
docs/scaling.md). Their parameters then live in one
subtree per stack with a leading layer axis (logical name `layers`, unsharded by the default rules):

  unrolled                                 scanned
  vit/blocks_7/attn/qkv/kernel             vit/blocks/attn/qkv/kernel                [39, ...]
  qformer/encoder/layers_5/...             qformer/encoder/layers/layers_1/...       [6, ...]
  t5/encoder/layers_3/moa/gate_1           t5/encoder/layers/moa/gate_1              [24, ...]

A scanned Q-Former unit is `cross_attention_freq` layers (the first of each cross-attends), so layer
i is sublayer `layers_{i % freq}` of unit i // freq. The converters speak the unrolled layout (one
source key per layer); `to_layout` turns a flat tree of either layout into the config's, so a
converted checkpoint, a stage's trainables and an export load into either.

`config.remat` recomputes each layer in the backward pass: `none`, `full` (keep only the layer's
input) or `matmuls` (keep the matmul outputs, recompute the rest: MaxText's `minimal` policy).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from lion_jax.errors import UserError

LAYER_AXIS = "layers"

REMAT_POLICIES = {
  "none": None,
  "full": jax.checkpoint_policies.nothing_saveable,
  "matmuls": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def check_remat(remat: str) -> None:
  if remat not in REMAT_POLICIES:
    raise UserError(f"model.remat={remat!r}; expected one of {sorted(REMAT_POLICIES)}")


def rematted(block: type[nn.Module], remat: str, *, scanned: bool) -> type[nn.Module]:
  """`block` recomputed in the backward pass by the `remat` policy (itself for `none`)."""
  check_remat(remat)
  if remat == "none":
    return block
  # Inside a scan the loop already keeps XLA from merging the recomputation away (MaxText does the same).
  return nn.remat(block, policy=REMAT_POLICIES[remat], prevent_cse=not scanned)


def carry_body(block: type[nn.Module]) -> type[nn.Module]:
  """`block` (called as `block(x, *args) -> x`) as a scan body, `(x, *args) -> (x, None)`; the
  subclass keeps the block's parameter names, so a scanned layer holds exactly a layer's parameters."""

  class Body(block):
    def __call__(self, x, *args):
      return super().__call__(x, *args), None

  Body.__name__ = Body.__qualname__ = f"Scanned{block.__name__}"
  return Body


# The variable collections of incremental decoding (models/t5.py): self-attention's growing keys
# and values, and cross-attention's projection of the encoder output, made on the first step and
# only read after it, so that a scanned decoder does not restack it on every step, nor beam search
# reorder it.
DECODE_CACHE, ENCODER_CACHE = "cache", "encoder_cache"


def scanned(
  body: type[nn.Module], length: int, *, broadcast: int, per_layer: int = 0, unroll: int = 1
) -> type[nn.Module]:
  """`body` (`(carry, *args) -> (carry, y)`) run `length` times over stacked parameters (and caches):
  the first `broadcast` args are the same for every layer, the next `per_layer` have a leading layer
  axis. `unroll` layers run per loop iteration (`lax.scan`'s unroll)."""
  return nn.scan(
    body,
    variable_axes={"params": 0, DECODE_CACHE: 0, ENCODER_CACHE: 0},
    split_rngs={"params": True, "dropout": True},
    in_axes=(nn.broadcast,) * broadcast + (0,) * per_layer,
    length=length,
    unroll=unroll,
    metadata_params={nn.PARTITION_NAME: LAYER_AXIS},
  )


def scan_units(depth: int, group: int, where: str) -> int:
  """Scanned units of a stack: `depth / group` (a depth the unit does not divide cannot be scanned)."""
  if depth % group:
    raise UserError(
      f"{where}: {depth} layers do not make units of {group} (a Q-Former unit is cross_attention_freq "
      "layers), so they cannot be scanned: set model.scan_layers=False"
    )
  return depth // group


# ---------------------------------------------------------------------- parameter layouts ---


@dataclasses.dataclass(frozen=True)
class Stack:
  """A stack's unrolled prefix (`prefix_{i}/`), scanned prefix (`prefix/`), depth and layers per unit."""

  prefix: str
  depth: int
  group: int = 1

  @property
  def units(self) -> int:
    return scan_units(self.depth, self.group, self.prefix)

  def unrolled(self, i: int) -> str:
    return f"{self.prefix}_{i}/"

  def scanned(self, i: int) -> tuple[str, int]:
    """(path prefix, index on the layer axis) of layer i in the scanned layout."""
    sub = f"layers_{i % self.group}/" if self.group > 1 else ""
    return f"{self.prefix}/{sub}", i // self.group


def stacks(config: ml_collections.ConfigDict) -> tuple[Stack, ...]:
  """The scanned stacks of a LION model config (towers its layout lacks simply have no parameters)."""
  q = config.qformer
  return (
    Stack("vit/blocks", config.vit.depth),
    Stack("qformer/encoder/layers", q.num_layers, q.cross_attention_freq),
    Stack("t5/encoder/layers", config.t5.num_layers),
    Stack("t5/decoder/layers", config.t5.num_decoder_layers),
  )


def scanned_stacks(config: ml_collections.ConfigDict) -> tuple[Stack, ...]:
  """The stacks whose layers the model config scans (none when `scan_layers` is off)."""
  return stacks(config) if config.get("scan_layers", False) else ()


def _unrolled_pattern(stack: Stack) -> re.Pattern:
  return re.compile(rf"^{re.escape(stack.prefix)}_(\d+)/(.*)$")


def is_scanned(flat: Mapping[str, Any], config: ml_collections.ConfigDict) -> bool:
  """Whether a flat parameter tree is in the scanned layout (an error if it mixes both)."""
  found = set()
  for stack in stacks(config):
    pattern, scanned_prefix = _unrolled_pattern(stack), f"{stack.prefix}/"
    for path in flat:
      if pattern.match(path):
        found.add("unrolled")
      elif path.startswith(scanned_prefix):
        found.add("scanned")
  if len(found) > 1:
    raise UserError("the parameter tree mixes the scanned and the unrolled layer layouts")
  return found == {"scanned"}


def _stack_of(scanned_path: str, specs: Sequence[Stack]) -> Stack | None:
  return next((s for s in specs if scanned_path.startswith(f"{s.prefix}/")), None)


def unrolled_paths(path: str, specs: Sequence[Stack]) -> list[str] | None:
  """The unrolled paths of the layers a scanned leaf stacks (None for a path in no scanned stack), so
  that rules written for per-layer paths (freezing) can be applied to a stacked leaf."""
  stack = _stack_of(path, specs)
  if stack is None:
    return None
  rest = path[len(stack.prefix) + 1 :]
  subs = range(stack.group)
  if stack.group > 1:
    head, rest = rest.split("/", 1)
    subs = [int(head.removeprefix("layers_"))]
  return [f"{stack.unrolled(unit * stack.group + sub)}{rest}" for unit in range(stack.units) for sub in subs]


def to_scanned(flat: Mapping[str, Any], config: ml_collections.ConfigDict, xp=np) -> dict[str, Any]:
  """Unrolled flat tree -> scanned (every layer of a stack must be there). `xp`: numpy on the host,
  jax.numpy inside a jitted relayout on the mesh."""
  out, layers = {}, {}
  specs = stacks(config)
  patterns = [(s, _unrolled_pattern(s)) for s in specs]
  for path, value in flat.items():
    for stack, pattern in patterns:
      m = pattern.match(path)
      if m:
        prefix, index = stack.scanned(int(m.group(1)))
        layers.setdefault(prefix + m.group(2), {})[index] = value
        break
    else:
      out[path] = value
  for path, by_index in layers.items():
    units = _stack_of(path, specs).units
    if sorted(by_index) != list(range(units)):
      raise UserError(f"{path}: the checkpoint has layers {sorted(by_index)} of this stack, the model {units} units")
    out[path] = xp.stack([by_index[i] for i in range(units)])
  return out


def to_unrolled(flat: Mapping[str, Any], config: ml_collections.ConfigDict) -> dict[str, Any]:
  """Scanned flat tree -> unrolled (slices of the layer axis)."""
  out = {}
  specs = stacks(config)
  for path, value in flat.items():
    layer_paths = unrolled_paths(path, specs)
    if layer_paths is None:
      out[path] = value
      continue
    if value.shape[0] != len(layer_paths):
      raise UserError(f"{path}: {value.shape[0]} stacked layers, the model has {len(layer_paths)}")
    out.update(zip(layer_paths, value))
  return out


def to_layout(flat: Mapping[str, Any], config: ml_collections.ConfigDict, xp=np) -> dict[str, Any]:
  """A flat tree of either layout in the layout `config.scan_layers` asks for."""
  want = bool(config.get("scan_layers", False))
  if is_scanned(flat, config) == want:
    return dict(flat)
  return to_scanned(flat, config, xp) if want else to_unrolled(flat, config)


def unrolled_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same model with unrolled layers: the layout the converters assemble (one source key per layer)."""
  out = ml_collections.ConfigDict(config.to_dict())
  out.scan_layers = False
  return out
