"""Mixture of adapters (MoA): LION's parallel adapters beside every T5 FFN sublayer.

Each adapter is `scale * up(ReLU(down(h)))` with a 64-wide bottleneck, reading the pre-norm residual
`h` of the FFN sublayer; its output is added after the FFN residual. With several adapters, adapter k
is weighted per channel by a learned gate row chosen by the example's task type:
`sum_k gate_k[task] * adapter_k(h)`. Gates start one-hot (task t uses adapter t only), and `up` starts
at zero, so a fresh MoA adds exactly nothing.

Task types follow the official code: 0 = region-level, 1 = image-level. The official model routes a
whole batch with one index; routing here is per example, which equals it for homogeneous batches.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lion_jax.models import layers


def one_hot_gate(adapter_index: int):
  """Gate init: row `adapter_index` (task type == adapter index) is ones, the others zeros."""

  def init(key, shape, dtype=jnp.float32):
    del key
    return jnp.zeros(shape, dtype).at[adapter_index].set(1.0)

  return init


class Adapter(nn.Module):
  d_model: int
  bottleneck: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    y = layers.Dense(
      self.bottleneck, ("embed", None), kernel_init=layers.torch_linear_init, dtype=self.dtype, name="down"
    )(h)
    y = layers.Dense(self.d_model, (None, "embed"), kernel_init=nn.initializers.zeros, dtype=self.dtype, name="up")(
      jax.nn.relu(y)
    )
    scale = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones, (None,)), (1,))
    return y * scale.astype(jnp.float32)  # float32 out, as the official fp32 adapter's


class MixtureOfAdapters(nn.Module):
  """`num_adapters` adapters; with more than one, per-task gates of shape [num_task_types, d_model]."""

  d_model: int
  bottleneck: int
  num_adapters: int
  num_task_types: int = 2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, h: jax.Array, task: jax.Array) -> jax.Array:
    if self.num_adapters == 1:
      return Adapter(self.d_model, self.bottleneck, self.dtype, name="adapter_0")(h)
    out = jnp.zeros_like(h)
    for k in range(self.num_adapters):
      gate = self.param(
        f"gate_{k}", nn.with_logical_partitioning(one_hot_gate(k), (None, "embed")), (self.num_task_types, self.d_model)
      )
      row = jnp.take(gate, task, axis=0)[:, None, :].astype(jnp.float32)  # [B, 1, d]
      out = out + row * Adapter(self.d_model, self.bottleneck, self.dtype, name=f"adapter_{k}")(h)
    return out
