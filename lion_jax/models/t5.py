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

from lion_jax.models import layers
from lion_jax.models.adapters import MixtureOfAdapters


def relative_position_bucket(relative_position: np.ndarray, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> np.ndarray:
  """T5's bucketing of `key_pos - query_pos` (static shapes, so computed in numpy)."""
  buckets = np.zeros_like(relative_position)
  if bidirectional:
    num_buckets //= 2
    buckets += (relative_position > 0).astype(np.int64) * num_buckets
    n = np.abs(relative_position)
  else:
    n = -np.minimum(relative_position, 0)
  max_exact = num_buckets // 2
  is_small = n < max_exact
  with np.errstate(divide="ignore"):
    large = max_exact + (np.log(np.maximum(n, 1) / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(np.int64)
  large = np.minimum(large, num_buckets - 1)
  return buckets + np.where(is_small, n, large)


class RelativePositionBias(nn.Module):
  """Learned [num_buckets, num_heads] table -> additive bias [1, H, q_len, k_len]."""

  config: ml_collections.ConfigDict
  bidirectional: bool

  @nn.compact
  def __call__(self, q_len: int, k_len: int, q_offset: int = 0) -> jax.Array:
    c = self.config
    table = self.param("rel_embedding", nn.with_logical_partitioning(
        nn.initializers.normal(c.d_model ** -0.5), (None, None)), (c.relative_buckets, c.num_heads))
    rel = np.arange(k_len)[None, :] - (np.arange(q_len)[:, None] + q_offset)
    buckets = relative_position_bucket(rel, self.bidirectional, c.relative_buckets, c.relative_max_distance)
    return jnp.take(table, jnp.asarray(buckets), axis=0).transpose(2, 0, 1)[None]


class T5Attention(nn.Module):
  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, memory, bias, *, train=False):
    c = self.config
    inner = c.num_heads * c.d_kv
    proj = lambda name, std: layers.Dense(inner, ("embed", "heads"), use_bias=False,
                                          kernel_init=nn.initializers.normal(std), dtype=self.dtype,
                                          name=name)
    q = layers.split_heads(proj("q", (c.d_model * c.d_kv) ** -0.5)(x), c.num_heads)
    k = layers.split_heads(proj("k", c.d_model ** -0.5)(memory), c.num_heads)
    v = layers.split_heads(proj("v", c.d_model ** -0.5)(memory), c.num_heads)
    drop = nn.Dropout(c.dropout_rate)
    out = layers.attend(q, k, v, bias, scale=1.0,
                        probs_dropout=(lambda p: drop(p, deterministic=False)) if train else None)
    return layers.Dense(c.d_model, ("heads", "embed"), use_bias=False,
                        kernel_init=nn.initializers.normal(inner ** -0.5), dtype=self.dtype,
                        name="o")(layers.merge_heads(out))


class T5FeedForward(nn.Module):
  """`wo(Dropout(act(wi_0 x) * wi_1 x))` (gated) or `wo(Dropout(act(wi x)))`."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train=False):
    c = self.config
    wi = lambda name: layers.Dense(c.d_ff, ("embed", "mlp"), use_bias=False,
                                   kernel_init=nn.initializers.normal(c.d_model ** -0.5),
                                   dtype=self.dtype, name=name)
    act = layers.activation(c.activation)
    y = act(wi("wi_0")(x)) * wi("wi_1")(x) if c.gated else act(wi("wi")(x))
    y = nn.Dropout(c.dropout_rate)(y, deterministic=not train)
    return layers.Dense(c.d_model, ("mlp", "embed"), use_bias=False,
                        kernel_init=nn.initializers.normal(c.d_ff ** -0.5), dtype=self.dtype,
                        name="wo")(y)


class T5Block(nn.Module):
  """Self-attention, (decoder only) cross-attention, then the FFN sublayer with the MoA beside it."""

  config: ml_collections.ConfigDict
  num_adapters: int
  is_decoder: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, self_bias, memory, cross_bias, task, *, train=False):
    c = self.config
    drop = lambda y: nn.Dropout(c.dropout_rate)(y, deterministic=not train)
    norm = lambda name: layers.RMSNorm(c.ln_eps, name=name)
    h = norm("self_attention_norm")(x)
    x = x + drop(T5Attention(c, self.dtype, name="self_attention")(h, h, self_bias, train=train))
    if self.is_decoder:
      h = norm("cross_attention_norm")(x)
      x = x + drop(T5Attention(c, self.dtype, name="cross_attention")(h, memory, cross_bias, train=train))
    h = norm("ffn_norm")(x)
    out = x + drop(T5FeedForward(c, self.dtype, name="ffn")(h, train=train))
    if self.num_adapters:
      out = out + MixtureOfAdapters(c.d_model, c.adapter_bottleneck, self.num_adapters,
                                    c.num_task_types, self.dtype, name="moa")(x, task)
    return layers.constrain(out, ("batch", "length", "embed"))


class T5Stack(nn.Module):
  config: ml_collections.ConfigDict
  num_adapters: int
  is_decoder: bool
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, memory, memory_mask, task, *, train=False):
    """`x`: embedded inputs [B, T, d]; `mask`: [B, T] key padding (encoder only)."""
    c = self.config
    t = x.shape[1]
    bias = RelativePositionBias(c, bidirectional=not self.is_decoder, name="relative_position_bias")(t, t)
    if self.is_decoder:
      causal = np.tril(np.ones((t, t), bool))
      bias = bias + jnp.where(causal, 0.0, jnp.finfo(jnp.float32).min)[None, None]
      cross_bias = layers.padding_bias(memory_mask)
    else:
      bias = bias + layers.padding_bias(mask)
      cross_bias = None
    x = nn.Dropout(c.dropout_rate)(x, deterministic=not train)
    num_layers = c.num_decoder_layers if self.is_decoder else c.num_layers
    for i in range(num_layers):
      x = T5Block(c, self.num_adapters, self.is_decoder, self.dtype, name=f"layers_{i}")(
          x, bias, memory, cross_bias, task, train=train)
    x = layers.RMSNorm(c.ln_eps, name="final_norm")(x)
    return nn.Dropout(c.dropout_rate)(x, deterministic=not train)


class T5(nn.Module):
  """Shared embedding, encoder, decoder and LM head. `num_adapters` adapters per FFN (0 = plain T5)."""

  config: ml_collections.ConfigDict
  num_adapters: int = 0
  dtype: jnp.dtype = jnp.float32

  def setup(self):
    c = self.config
    self.shared = self.param("shared", nn.with_logical_partitioning(nn.initializers.normal(1.0),
                                                                    ("vocab", "embed")),
                             (c.vocab_size, c.d_model))
    self.encoder = T5Stack(c, self.num_adapters, is_decoder=False, dtype=self.dtype)
    self.decoder = T5Stack(c, self.num_adapters, is_decoder=True, dtype=self.dtype)
    if not c.tie_word_embeddings:
      self.lm_head = layers.Dense(c.vocab_size, ("embed", "vocab"), use_bias=False,
                                  kernel_init=nn.initializers.normal(1.0), dtype=self.dtype)

  def embed(self, ids: jax.Array) -> jax.Array:
    return jnp.take(self.shared, ids, axis=0).astype(self.dtype)

  def encode(self, inputs_embeds, mask, task, *, train=False):
    return self.encoder(inputs_embeds, mask, None, None, task, train=train)

  def decode(self, decoder_input_ids, encoded, encoder_mask, task, *, train=False):
    """Decoder hidden states -> logits [B, T, V] (float32)."""
    x = self.decoder(self.embed(decoder_input_ids), None, encoded, encoder_mask, task, train=train)
    if self.config.tie_word_embeddings:
      x = x * (self.config.d_model ** -0.5)
      logits = jnp.dot(x, self.shared.T.astype(self.dtype))
    else:
      logits = self.lm_head(x)
    return layers.constrain(logits.astype(jnp.float32), ("batch", "length", "vocab"))

  def __call__(self, input_ids, input_mask, decoder_input_ids, task=None, *, train=False):
    """Text-only T5: token ids in, logits out (used by tests and text-only evaluation)."""
    if task is None:
      task = jnp.zeros((input_ids.shape[0],), jnp.int32)
    encoded = self.encode(self.embed(input_ids), input_mask, task, train=train)
    return self.decode(decoder_input_ids, encoded, input_mask, task, train=train)
