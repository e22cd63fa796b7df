"""Device mesh, logical-axis rules and sharded parameter creation.

Every parameter and large activation carries logical axis names (`embed`, `mlp`, `heads`, ...); the
rules below (or the config's) map them to the mesh axes `data`, `fsdp` and `tensor`. A dimension that
the mapped mesh axes do not divide evenly (e.g. a 30523-word vocabulary on 2 tensor shards) is left
replicated instead of failing, and reported by `describe_fallbacks`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from lion_jax.errors import UserError

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axes. Batch is split over data and fsdp (FSDP is data parallelism with
# sharded weights); weights are split over fsdp on their model dimension and over tensor on their
# head / MLP / vocabulary dimension. A mesh axis is used at most once per array (flax skips reuse).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
  ("batch", ("data", "fsdp")),
  ("length", None),
  ("embed", "fsdp"),
  ("mlp", "tensor"),
  ("heads", "tensor"),
  ("qkv", "tensor"),
  ("vocab", "tensor"),
  ("layers", None),  # the stacked axis of scanned layers (models/layer_stack.py): each device holds every layer
)


def config_rules(config) -> tuple[tuple[str, Any], ...]:
  """The run config's `sharding_rules` (lists, as ml_collections stores them) as flax wants them."""
  return tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding_rules)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A (data, fsdp, tensor) mesh; one size may be -1, meaning all remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [data, fsdp, tensor]
  if sizes.count(-1) > 1:
    raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  known = int(np.prod([s for s in sizes if s != -1]))
  if -1 in sizes:
    if len(devices) % known:
      raise UserError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {len(devices)} devices")
    sizes[sizes.index(-1)] = len(devices) // known
  if int(np.prod(sizes)) != len(devices):
    raise UserError(
      f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, {len(devices)} are available"
    )
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)


def axes_within_a_process(mesh: Mesh) -> list[str]:
  """The mesh axes (of size > 1) along which one process holds several devices: their collectives
  run between devices of the same process as well as across processes."""
  axes = []
  for i, name in enumerate(mesh.axis_names):
    lines = np.moveaxis(mesh.devices, i, -1).reshape(-1, mesh.devices.shape[i])
    if mesh.devices.shape[i] > 1 and any(len({d.process_index for d in line}) < len(line) for line in lines):
      axes.append(name)
  return axes


def _fit_spec(spec: PartitionSpec, shape: tuple[int, ...], mesh: Mesh) -> PartitionSpec:
  """Drops mesh axes from dimensions they do not divide evenly."""
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = () if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
    fitted.append(axes if dim % size == 0 else None)
  return PartitionSpec(*fitted)


def _shapes(boxed_tree: Any) -> Any:
  """Leaf shapes of a tree that may hold `nn.Partitioned` boxes (without unboxing, which would
  apply sharding constraints)."""
  is_box = lambda x: isinstance(x, nn.Partitioned)
  return jax.tree.map(lambda x: (x.value if is_box(x) else x).shape, boxed_tree, is_leaf=is_box)


def logical_shardings(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """NamedShardings for a tree of `nn.LogicallyPartitioned` leaves (values or ShapeDtypeStructs)."""
  specs = nn.get_partition_spec(boxed_tree)
  mesh_specs = nn.logical_to_mesh(specs, rules)
  shapes = _shapes(boxed_tree)
  return jax.tree.map(
    lambda spec, shape: NamedSharding(mesh, _fit_spec(spec, shape, mesh)),
    mesh_specs,
    shapes,
    is_leaf=lambda x: isinstance(x, PartitionSpec),
  )


def describe_fallbacks(boxed_tree: Any, mesh: Mesh, rules=DEFAULT_RULES) -> list[str]:
  """Parameters whose rule-given sharding had to be dropped because a dimension was not divisible."""
  specs = nn.logical_to_mesh(nn.get_partition_spec(boxed_tree), rules)
  shapes = _shapes(boxed_tree)
  notes = []

  def note(path, spec, shape):
    full = PartitionSpec(*(tuple(spec) + (None,) * (len(shape) - len(spec))))
    if _fit_spec(spec, shape, mesh) != full:
      notes.append(f"{jax.tree_util.keystr(path)} {shape}: {full} -> {_fit_spec(spec, shape, mesh)}")

  jax.tree_util.tree_map_with_path(note, specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))
  return notes


def param_shardings(model: nn.Module, example_batch: dict, mesh: Mesh, rules=DEFAULT_RULES) -> Any:
  """The NamedSharding of every parameter of `model` under the rules (nothing is allocated)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example_batch)["params"])
    return logical_shardings(boxed, mesh, rules)


def init_sharded(
  model: nn.Module, rng: jax.Array, example_batch: dict, mesh: Mesh, rules=DEFAULT_RULES
) -> tuple[Any, Any]:
  """Creates parameters already sharded: shapes first, then shardings, then a jitted init.

  Returns (params, shardings) with the logical boxes removed.
  """
  shardings = param_shardings(model, example_batch, mesh, rules)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    params = jax.jit(lambda r, b: nn.unbox(model.init(r, b)["params"]), out_shardings=shardings)(rng, example_batch)
  return params, shardings


def put_host_array(value: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """A host array that every process holds whole (a loaded checkpoint, a batch), as a global array
  on `sharding`: each process copies only the shards its own devices hold. `jax.device_put` of a
  host array onto a multi-process sharding first all-gathers the whole array across processes to
  check it is the same everywhere: one collective (and one compile per shape) per parameter."""
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def put_global_batch(batch: dict[str, np.ndarray], batch_sharding: NamedSharding) -> dict[str, jax.Array]:
  """A batch every process holds whole, as global arrays split over the batch axes: each process
  copies only the rows its own devices hold (one process or many)."""
  return {k: put_host_array(v, batch_sharding) for k, v in batch.items()}


def batch_axes_size(mesh: Mesh, rules=DEFAULT_RULES) -> int:
  """How many ways a batch is split: the product of the mesh axes the `batch` axis maps to."""
  spec = batch_sharding(mesh, rules).spec[0]
  names = () if spec is None else (spec if isinstance(spec, tuple) else (spec,))
  return int(np.prod([mesh.shape[name] for name in names]))


def batch_sharding(mesh: Mesh, rules=DEFAULT_RULES) -> NamedSharding:
  """Sharding of a batch array: leading dimension over the `batch` mesh axes."""
  return NamedSharding(mesh, nn.logical_to_mesh_axes(("batch",), rules))
