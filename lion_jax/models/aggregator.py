"""LION's vision aggregator: the region-level branch.

Two post-LN BERT blocks at ViT width: the query stream starts as the last ViT hidden state; block i
self-attends (bidirectionally, no mask) and then cross-attends to an earlier ViT hidden state (LION:
blocks 29 and 19 of 39). Output projections start at zero, so a fresh aggregator is LayerNorm(x).
Then LayerNorm (eps 1e-5) -> Linear -> exact GELU -> Linear to the T5 width: one token per ViT token.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lion_jax.models import layers
from lion_jax.models.bert import BertAttention, BertFeedForward


class AggregatorBlock(nn.Module):
  """A HF `BertLayer` with `add_cross_attention=True` and no masks."""

  config: ml_collections.ConfigDict
  width: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, memory: jax.Array, *, train: bool = False) -> jax.Array:
    c = self.config
    std = layers.init_std(c)
    attn = lambda name: BertAttention(
      self.width,
      c.num_heads,
      c.ln_eps,
      c.dropout_rate,
      zero_init_output=True,
      dtype=self.dtype,
      init_std=std,
      name=name,
    )
    x = attn("self_attention")(x, train=train)
    x = attn("cross_attention")(x, memory=memory, train=train)
    return BertFeedForward(
      self.width, c.mlp_dim, c.ln_eps, c.dropout_rate, zero_init_output=True, dtype=self.dtype, init_std=std, name="ffn"
    )(x, train=train)


class Aggregator(nn.Module):
  config: ml_collections.ConfigDict
  width: int
  d_model: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, query: jax.Array, memories: Sequence[jax.Array], *, train: bool = False):
    c = self.config
    x = query
    for i, memory in enumerate(memories):
      x = AggregatorBlock(c, self.width, self.dtype, name=f"blocks_{i}")(x, memory, train=train)
    x = layers.LayerNorm(c.out_ln_eps, name="out_norm")(x)
    x = layers.Dense(
      c.proj_dim, ("embed", "mlp"), kernel_init=layers.torch_linear_init, dtype=self.dtype, name="proj_in"
    )(x)
    x = layers.activation("gelu")(x)
    return layers.Dense(
      self.d_model, ("mlp", "embed"), kernel_init=layers.torch_linear_init, dtype=self.dtype, name="proj_out"
    )(x)
