"""Post-LN BERT sublayers, shared by the Q-Former and the vision aggregator.

Both towers are HF/LAVIS `BertLayer`s: `LN(x + Dropout(Wo . Attn(x)))` and
`LN(x + Dropout(W2 . GELU(W1 x)))`. The aggregator zero-initialises the output projections (`Wo`,
`W2`), so that a fresh aggregator block is just LayerNorm(x).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from lion_jax.models import layers


class BertAttention(nn.Module):
  """Self- or cross-attention with its output projection, residual and LayerNorm.

  `memory` (keys/values) defaults to `x` (self-attention); `bias` is an additive mask that broadcasts
  to [B, H, Tq, Tk].
  """

  width: int
  num_heads: int
  ln_eps: float
  dropout_rate: float = 0.1
  zero_init_output: bool = False
  dtype: jnp.dtype = jnp.float32
  init_std: float = layers.INIT_STD

  @nn.compact
  def __call__(
    self, x: jax.Array, memory: jax.Array | None = None, bias: jax.Array | None = None, *, train: bool = False
  ) -> jax.Array:
    memory = x if memory is None else memory
    heads = lambda name: layers.Dense(
      self.width, ("embed", "heads"), dtype=self.dtype, name=name, init_std=self.init_std
    )
    q = layers.split_heads(heads("query")(x), self.num_heads)
    k = layers.split_heads(heads("key")(memory), self.num_heads)
    v = layers.split_heads(heads("value")(memory), self.num_heads)
    drop = layers.Dropout(self.dropout_rate)
    probs_dropout = None if not train else (lambda p: drop(p, deterministic=False))
    out = layers.attend(
      q, k, v, bias, scale=layers.head_scale(self.width // self.num_heads), probs_dropout=probs_dropout
    )
    out_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.normal(self.init_std)
    out = layers.Dense(self.width, ("heads", "embed"), kernel_init=out_init, dtype=self.dtype, name="out")(
      layers.merge_heads(out)
    )
    out = drop(out, deterministic=not train)
    return layers.LayerNorm(self.ln_eps, name="norm")(out + x)


class BertFeedForward(nn.Module):
  """`LN(x + Dropout(W2 . GELU(W1 x)))`."""

  width: int
  mlp_dim: int
  ln_eps: float
  dropout_rate: float = 0.1
  zero_init_output: bool = False
  dtype: jnp.dtype = jnp.float32
  init_std: float = layers.INIT_STD

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    y = layers.Dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="fc1", init_std=self.init_std)(x)
    y = layers.activation("gelu")(y)
    out_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.normal(self.init_std)
    y = layers.Dense(self.width, ("mlp", "embed"), kernel_init=out_init, dtype=self.dtype, name="fc2")(y)
    y = layers.Dropout(self.dropout_rate)(y, deterministic=not train)
    return layers.LayerNorm(self.ln_eps, name="norm")(y + x)
