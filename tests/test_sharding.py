"""Mesh facts the trainer reads from lion_jax/sharding.py."""

from types import SimpleNamespace

import jax
import numpy as np

from lion_jax import sharding


def fake_mesh(shape: tuple[int, int, int], devices_per_process: int) -> SimpleNamespace:
  """A (data, fsdp, tensor) mesh of devices ordered by process, as sharding.make_mesh orders them."""
  devices = [SimpleNamespace(process_index=i // devices_per_process) for i in range(int(np.prod(shape)))]
  return SimpleNamespace(devices=np.array(devices, dtype=object).reshape(shape), axis_names=sharding.MESH_AXES)


def test_axes_within_a_process_are_the_axes_along_which_one_process_holds_several_devices():
  assert sharding.axes_within_a_process(fake_mesh((4, 2, 1), devices_per_process=2)) == ["fsdp"]
  assert sharding.axes_within_a_process(fake_mesh((8, 1, 1), devices_per_process=2)) == ["data"]
  assert sharding.axes_within_a_process(fake_mesh((8, 1, 1), devices_per_process=1)) == []
  assert sharding.axes_within_a_process(fake_mesh((2, 2, 2), devices_per_process=4)) == ["fsdp", "tensor"]


def test_a_host_array_is_put_onto_its_sharding_shard_by_shard():
  mesh = sharding.make_mesh(2, 2, 2)
  spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp", "tensor"))
  value = np.arange(24, dtype=np.float32).reshape(4, 6)
  placed = sharding.put_host_array(value, spec)
  assert placed.sharding == spec and placed.addressable_shards[0].data.shape == (2, 3)
  np.testing.assert_array_equal(np.asarray(placed), value)
  scalar = sharding.put_host_array(
    np.asarray(7, np.int32), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  )
  assert int(scalar) == 7 and scalar.dtype == np.int32
