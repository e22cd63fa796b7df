"""T5 v1.1 / FlanT5 encoder-decoder with LION's mixture of adapters beside every FFN.

Pre-norm RMSNorm blocks, unscaled dot-product attention with learned relative-position buckets
(bidirectional in the encoder, causal in the decoder; computed once per stack and shared by its
layers), a gated FFN whose activation comes from the checkpoint config (exact `gelu` for LION and
LAVIS, `gelu_new` for stock HF configs), dropout on embeddings, attention probabilities and every
sublayer output. The LM head is untied (FlanT5) or tied to the embedding with a d_model**-0.5 rescale.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.models import layer_stack, layers
from lion_jax.models.adapters import MixtureOfAdapters


def relative_position_bucket(
  relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
  """T5's bucketing of `key_pos - query_pos`: exact for small distances, log-spaced up to
  `max_distance`, one bucket beyond."""
  buckets = jnp.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(relative_position.dtype) * num_buckets
    n = jnp.abs(relative_position)
  else:
    n = -jnp.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  large = max_exact + (
    jnp.log(jnp.maximum(n, 1).astype(jnp.float32) / max_exact)
    / math.log(max_distance / max_exact)
    * (num_buckets - max_exact)
  ).astype(n.dtype)
  large = jnp.minimum(large, num_buckets - 1)
  return buckets + jnp.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Learned [num_buckets, num_heads] table -> additive bias [1, H, q_len, k_len]."""

  config: ml_collections.ConfigDict
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_offset: int | jax.Array = 0) -> jax.Array:
    """`q_offset` is the position of the first query (a traced step index when decoding)."""
    c = self.config
    table = self.param(
      "rel_embedding",
      nn.with_logical_partitioning(nn.initializers.normal(c.d_model**-0.5), (None, None)),
      (c.relative_buckets, c.num_heads),
    )
    rel = jnp.arange(k_len)[None, :] - (jnp.arange(q_len)[:, None] + q_offset)
    buckets = relative_position_bucket(rel, self.bidirectional, c.relative_buckets, c.relative_max_distance)
    return jnp.take(table, buckets, axis=0).transpose(2, 0, 1)[None]


class T5Attention(nn.Module):
  """Unscaled multi-head attention. For incremental decoding (`decode`), self-attention appends the
  new position at `cache_index` into a DECODE_CACHE buffer of `cache_len` positions; cross-attention
  projects the encoder output once into ENCODER_CACHE and reuses it (models/layer_stack.py)."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, bias, *, train=False, decode=False, cache_len=0, cache_index=None, is_cross=False):
    c = self.config
    inner = c.num_heads * c.d_kv
    proj = lambda name, std: layers.Dense(
      inner, ("embed", "heads"), use_bias=False, kernel_init=nn.initializers.normal(std), dtype=self.dtype, name=name
    )
    q = layers.split_heads(proj("q", (c.d_model * c.d_kv) ** -0.5)(x), c.num_heads)
    k_proj, v_proj = proj("k", c.d_model**-0.5), proj("v", c.d_model**-0.5)
    if decode and is_cross:
      projected = lambda proj: lambda: layers.split_heads(proj(memory), c.num_heads)
      k = self.variable(layer_stack.ENCODER_CACHE, "cached_key", projected(k_proj)).value
      v = self.variable(layer_stack.ENCODER_CACHE, "cached_value", projected(v_proj)).value
    else:
      k = layers.split_heads(k_proj(memory), c.num_heads)
      v = layers.split_heads(v_proj(memory), c.num_heads)
    if decode and not is_cross:
      shape = (x.shape[0], cache_len, c.num_heads, c.d_kv)
      cached_k = self.variable(layer_stack.DECODE_CACHE, "cached_key", jnp.zeros, shape, k.dtype)
      cached_v = self.variable(layer_stack.DECODE_CACHE, "cached_value", jnp.zeros, shape, v.dtype)
      cached_k.value = jax.lax.dynamic_update_slice_in_dim(cached_k.value, k, cache_index, axis=1)
      cached_v.value = jax.lax.dynamic_update_slice_in_dim(cached_v.value, v, cache_index, axis=1)
      k, v = cached_k.value, cached_v.value
    drop = layers.Dropout(c.dropout_rate)
    out = layers.attend(
      q, k, v, bias, scale=1.0, probs_dropout=(lambda p: drop(p, deterministic=False)) if train else None
    )
    return layers.Dense(
      c.d_model,
      ("heads", "embed"),
      use_bias=False,
      kernel_init=nn.initializers.normal(inner**-0.5),
      dtype=self.dtype,
      name="o",
    )(layers.merge_heads(out))


class T5FeedForward(nn.Module):
  """`wo(Dropout(act(wi_0 x) * wi_1 x))` (gated) or `wo(Dropout(act(wi x)))`."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    c = self.config
    wi = lambda name: layers.Dense(
      c.d_ff,
      ("embed", "mlp"),
      use_bias=False,
      kernel_init=nn.initializers.normal(c.d_model**-0.5),
      dtype=self.dtype,
      name=name,
    )
    act = layers.activation(c.activation)
    y = act(wi("wi_0")(x)) * wi("wi_1")(x) if c.gated else act(wi("wi")(x))
    y = layers.Dropout(c.dropout_rate)(y, deterministic=not train)
    return layers.Dense(
      c.d_model,
      ("mlp", "embed"),
      use_bias=False,
      kernel_init=nn.initializers.normal(c.d_ff**-0.5),
      dtype=self.dtype,
      name="wo",
    )(y)


class T5Block(nn.Module):
  """Self-attention, (decoder only) cross-attention, then the FFN sublayer with the MoA beside it.

  `train` and `cache_len` (> 0: one step of incremental decoding) are attributes, so that the block
  is rematerialised and scanned with array arguments only."""

  config: ml_collections.ConfigDict
  num_adapters: int
  is_decoder: bool
  train: bool = False
  cache_len: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, self_bias, memory, cross_bias, task, cache_index):
    c, train = self.config, self.train
    decode = self.cache_len > 0
    drop = lambda y: layers.Dropout(c.dropout_rate)(y, deterministic=not train)
    norm = lambda name: layers.RMSNorm(c.ln_eps, name=name)
    h = norm("self_attention_norm")(x)
    x = x + drop(
      T5Attention(c, self.dtype, name="self_attention")(
        h, h, self_bias, train=train, decode=decode, cache_len=self.cache_len, cache_index=cache_index
      )
    )
    if self.is_decoder:
      h = norm("cross_attention_norm")(x)
      x = x + drop(
        T5Attention(c, self.dtype, name="cross_attention")(
          h, memory, cross_bias, train=train, decode=decode, is_cross=True
        )
      )
    h = norm("ffn_norm")(x)
    out = x + drop(T5FeedForward(c, self.dtype, name="ffn")(h, train=train))
    if self.num_adapters:
      out = out + MixtureOfAdapters(
        c.d_model, c.adapter_bottleneck, self.num_adapters, c.num_task_types, self.dtype, name="moa"
      )(x, task)
    return layers.constrain(out, ("batch", "length", "embed"))


class T5Stack(nn.Module):
  config: ml_collections.ConfigDict
  num_adapters: int
  is_decoder: bool
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, x, mask, memory, memory_mask, task, *, train=False, cache_len=0, cache_index=None):
    """`x`: embedded inputs [B, T, d]; `mask`: [B, T] key padding (encoder only).

    Incremental decoding (decoder only): `cache_len` > 0 and `x` is the one new position
    `cache_index`; keys and values of earlier positions come from the 'cache' collection.
    """
    c = self.config
    t = x.shape[1]
    decode = cache_len > 0
    position_bias = RelativePositionBias(c, bidirectional=not self.is_decoder, name="relative_position_bias")
    if decode:
      bias = position_bias(1, cache_len, cache_index)
      visible = jnp.arange(cache_len)[None, :] <= cache_index
      bias = bias + jnp.where(visible, 0.0, jnp.finfo(jnp.float32).min)[None, None]
    else:
      bias = position_bias(t, t)
    if self.is_decoder:
      if not decode:
        causal = np.tril(np.ones((t, t), bool))
        bias = bias + jnp.where(causal, 0.0, jnp.finfo(jnp.float32).min)[None, None]
      cross_bias = layers.padding_bias(memory_mask)
    else:
      bias = bias + layers.padding_bias(mask)
      cross_bias = None
    x = layers.Dropout(c.dropout_rate)(x, deterministic=not train)
    num_layers = c.num_decoder_layers if self.is_decoder else c.num_layers
    remat = "none" if decode else self.remat  # no backward pass while decoding
    args = (x, bias, memory, cross_bias, task, cache_index)
    block_args = (c, self.num_adapters, self.is_decoder, train, cache_len, self.dtype)
    if self.scan_layers:
      body = layer_stack.carry_body(layer_stack.rematted(T5Block, remat, scanned=True))
      # A decoding step is a few small matmuls per layer: unrolled, its layers cost no loop overhead
      # (13-20% of a beam-5 decode on XLA CPU; benchmarks/RESULTS.md), for a little more compile time.
      unroll = num_layers if decode else 1
      stack = layer_stack.scanned(body, num_layers, broadcast=5, unroll=unroll)
      x, _ = stack(*block_args, name="layers")(*args)
    else:
      block = layer_stack.rematted(T5Block, remat, scanned=False)
      for i in range(num_layers):
        x = block(*block_args, name=f"layers_{i}")(x, *args[1:])
    x = layers.RMSNorm(c.ln_eps, name="final_norm")(x)
    return layers.Dropout(c.dropout_rate)(x, deterministic=not train)


class T5(nn.Module):
  """Shared embedding, encoder, decoder and LM head. `num_adapters` adapters per FFN (0 = plain T5)."""

  config: ml_collections.ConfigDict
  num_adapters: int = 0
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  def setup(self):
    c = self.config
    self.shared = self.param(
      "shared",
      nn.with_logical_partitioning(nn.initializers.normal(c.get("embedding_init_std", 1.0)), ("vocab", "embed")),
      (c.vocab_size, c.d_model),
    )
    stack = lambda is_decoder: T5Stack(c, self.num_adapters, is_decoder, self.dtype, self.scan_layers, self.remat)
    self.encoder = stack(False)
    self.decoder = stack(True)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense(
        c.vocab_size,
        ("embed", "vocab"),
        use_bias=False,
        kernel_init=nn.initializers.normal(c.get("embedding_init_std", 1.0)),
        dtype=self.dtype,
      )

  def embed(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.shared, ids, axis=0).astype(jnp.float32)  # the residual stream is float32

  def encode(self, inputs_embeds, mask, task, *, train=False):
    return self.encoder(inputs_embeds, mask, None, None, task, train=train)

  def decode(self, decoder_input_ids, encoded, encoder_mask, task, *, train=False, cache_len=0, cache_index=None):
    """Decoder -> logits [B, T, V] (float32). With `cache_len`, one step of incremental decoding:
    `decoder_input_ids` [B, 1] is position `cache_index` (call with mutable=['cache'])."""
    x = self.decoder(
      self.embed(decoder_input_ids),
      None,
      encoded,
      encoder_mask,
      task,
      train=train,
      cache_len=cache_len,
      cache_index=cache_index,
    )
    if self.config.tie_word_embeddings:
      x = x * (self.config.d_model**-0.5)
      logits = jnp.dot(x.astype(self.dtype), self.shared.T.astype(self.dtype))
    else:
      logits = self.lm_head(x)
    return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, input_ids, input_mask, decoder_input_ids, task=None, *, train=False):
    """Text-only T5: token ids in, logits out (used by tests and text-only evaluation)."""
    if task is None:
      task = jnp.zeros((input_ids.shape[0],), jnp.int32)
    encoded = self.encode(self.embed(input_ids), input_mask, task, train=train)
    return self.decode(decoder_input_ids, encoded, input_mask, task, train=train)
