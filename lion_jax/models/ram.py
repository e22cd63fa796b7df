"""The Recognize Anything (RAM) tagger as LION runs it: image -> one logit per tag class.

RAM's tagging path (official `RAM.generate_tag`): the Swin tower's tokens (mean token first) are
projected to the label-embedding width; every tag class has a learned embedding, projected and
passed through ReLU into a query; a 2-layer BERT-style head lets the queries cross-attend to the
image (tagging mode has no self-attention, no embeddings and no input norm); one linear layer shared
by all classes turns each query into its logit. The Tag2Text text encoder and decoder that the
released checkpoint also holds are not part of tagging, so they are not built here.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lion_jax.models import bert, layers
from lion_jax.models.swin import SwinTransformer


class TaggingLayer(nn.Module):
  """Cross-attention of the label queries to the image, then the feed-forward sublayer (both post-LN)."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, queries: jax.Array, image: jax.Array) -> jax.Array:
    h = self.config
    attention = bert.BertAttention(h.width, h.num_heads, h.ln_eps, 0.0, dtype=self.dtype, name="cross_attention")
    x = attention(queries, image)
    return bert.BertFeedForward(h.width, h.mlp_dim, h.ln_eps, 0.0, dtype=self.dtype, name="ffn")(x)


class RamTaggingModel(nn.Module):
  """Image [B, S, S, 3] (RAM-normalised) -> tag logits [B, num_classes] (sigmoid gives the probabilities)."""

  config: ml_collections.ConfigDict

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    c = self.config
    dtype = jnp.dtype(c.dtype)
    tokens = SwinTransformer(c.swin, dtype, name="swin")(image)
    memory = layers.Dense(c.embed_dim, ("embed", "mlp"), dtype=dtype, name="image_proj")(tokens)
    label_embed = self.param(
      "label_embed",
      nn.with_logical_partitioning(layers.normal_002, ("vocab", "embed")),
      (c.num_classes, c.embed_dim),
    )
    queries = layers.Dense(c.head.width, ("embed", "mlp"), dtype=dtype, name="wordvec_proj")(label_embed)
    queries = jnp.broadcast_to(jax.nn.relu(queries.astype(jnp.float32)), (image.shape[0],) + queries.shape)
    for i in range(c.head.num_layers):
      queries = TaggingLayer(c.head, dtype, name=f"tagging_{i}")(queries, memory)
    logits = layers.Dense(1, ("embed", None), dtype=dtype, name="fc")(queries)
    return logits[..., 0].astype(jnp.float32)
