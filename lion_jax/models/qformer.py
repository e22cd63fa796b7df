"""The instruction-aware Q-Former of InstructBLIP, which LION keeps as its image-level branch.

A 12-layer post-LN BERT over [32 learned queries; question tokens]. Self-attention is bidirectional
with a padding mask; only the query positions cross-attend (every `cross_attention_freq`-th layer) to
the normalised last ViT hidden state, and query positions use their own FFN weights. The first
`num_queries` outputs are projected to the T5 width.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lion_jax.models import layer_stack, layers
from lion_jax.models.bert import BertAttention, BertFeedForward


class QFormerLayer(nn.Module):
  """One layer over [queries; text]: `num_queries` and `train` are attributes so that the layer can be
  rematerialised and scanned with array arguments only."""

  config: ml_collections.ConfigDict
  has_cross_attention: bool
  num_queries: int
  train: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, self_bias, image):
    c, train = self.config, self.train
    std = layers.init_std(c)
    attn = lambda name: BertAttention(
      c.width, c.num_heads, c.ln_eps, c.dropout_rate, dtype=self.dtype, init_std=std, name=name
    )
    ffn = lambda name: BertFeedForward(
      c.width, c.mlp_dim, c.ln_eps, c.dropout_rate, dtype=self.dtype, init_std=std, name=name
    )
    x = attn("self_attention")(x, bias=self_bias, train=train)
    queries, text = x[:, : self.num_queries], x[:, self.num_queries :]
    if self.has_cross_attention:
      queries = attn("cross_attention")(queries, memory=image, train=train)
    out = [ffn("query_ffn")(queries, train=train)]
    if text.shape[1]:
      out.append(ffn("text_ffn")(text, train=train))
    return jnp.concatenate(out, axis=1)


class QFormerUnit(nn.Module):
  """The scanned unit: `cross_attention_freq` layers, the first with cross-attention (layer_stack.py)."""

  config: ml_collections.ConfigDict
  num_queries: int
  train: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, self_bias, image):
    for j in range(self.config.cross_attention_freq):
      layer = QFormerLayer(self.config, j == 0, self.num_queries, self.train, self.dtype, name=f"layers_{j}")
      x = layer(x, self_bias, image)
    return x


class QFormerEncoder(nn.Module):
  """BERT embeddings + layers. Mirrors HF `InstructBlipQFormerModel` (queries given from outside)."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(
    self, queries: jax.Array, text_ids: jax.Array, text_mask: jax.Array, image: jax.Array, *, train: bool = False
  ) -> jax.Array:
    c = self.config
    b, nq = queries.shape[0], queries.shape[1]
    if text_ids.shape[1] > c.max_positions:
      raise ValueError(
        f"Q-Former text has {text_ids.shape[1]} tokens; at most {c.max_positions} fit "
        "the position table (truncate on the left when tokenising)"
      )
    emb = lambda name, n: self.param(
      name, nn.with_logical_partitioning(nn.initializers.normal(layers.init_std(c)), (None, "embed")), (n, c.width)
    )
    words = emb("word_embeddings", c.vocab_size)
    positions = emb("position_embeddings", c.max_positions)
    text = jnp.take(words, text_ids, axis=0) + positions[None, : text_ids.shape[1]]
    x = jnp.concatenate([queries.astype(jnp.float32), text.astype(jnp.float32)], axis=1)
    x = layers.LayerNorm(c.ln_eps, name="embed_norm")(x)
    x = layers.Dropout(c.dropout_rate)(x, deterministic=not train)
    mask = jnp.concatenate([jnp.ones((b, nq), text_mask.dtype), text_mask], axis=1)
    self_bias = layers.padding_bias(mask)
    if self.scan_layers:
      unit = layer_stack.carry_body(layer_stack.rematted(QFormerUnit, self.remat, scanned=True))
      depth = layer_stack.scan_units(c.num_layers, c.cross_attention_freq, "qformer")
      units = layer_stack.scanned(unit, depth, broadcast=2)
      x, _ = units(c, nq, train, self.dtype, name="layers")(x, self_bias, image)
      return x
    layer = layer_stack.rematted(QFormerLayer, self.remat, scanned=False)
    for i in range(c.num_layers):
      x = layer(c, i % c.cross_attention_freq == 0, nq, train, self.dtype, name=f"layers_{i}")(x, self_bias, image)
    return x


class QFormerBranch(nn.Module):
  """Last ViT hidden state + question -> `num_queries` tokens of width `d_model` for T5."""

  config: ml_collections.ConfigDict
  d_model: int
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(
    self, vit_last: jax.Array, text_ids: jax.Array, text_mask: jax.Array, *, train: bool = False
  ) -> jax.Array:
    c = self.config
    image = layers.LayerNorm(c.vision_ln_eps, name="vision_norm")(vit_last)
    queries = self.param(
      "query_tokens",
      nn.with_logical_partitioning(nn.initializers.normal(layers.init_std(c)), (None, None, "embed")),
      (1, c.num_queries, c.width),
    )
    queries = jnp.broadcast_to(queries, (vit_last.shape[0],) + queries.shape[1:])
    x = QFormerEncoder(c, self.dtype, self.scan_layers, self.remat, name="encoder")(
      queries, text_ids, text_mask, image, train=train
    )
    return layers.Dense(
      self.d_model, (None, "embed"), kernel_init=layers.torch_linear_init, dtype=self.dtype, name="proj"
    )(x[:, : c.num_queries])
