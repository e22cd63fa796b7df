"""Swin Transformer, the image tower of the Recognize Anything tagger (RAM's Swin-L at 384 px).

Pre-LN blocks attending within 12x12 windows, every second block on windows shifted by half a
window (with a -100 bias between tokens that were not neighbours before the shift), a learned
relative-position bias per head, and patch merging between stages. The output is RAM's: the final
LayerNorm's tokens with their mean in front, [B, 1 + tokens, width]. Each stage's output (after its
patch merging, as HF `SwinModel`'s hidden states) is sown under 'intermediates' / 'stage_{i}'.

Layouts follow the official code (docs/model.md, "RAM tagger"): windows are taken row-major with the
batch outermost, patch merging concatenates the (even row, even col), (odd, even), (even, odd),
(odd, odd) sub-grids, and a stage whose grid is no larger than a window runs one unshifted window.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.errors import UserError
from lion_jax.models import layers

# The attention bias between tokens of a shifted window that come from different regions (official value).
SHIFT_MASK_VALUE = -100.0


def relative_position_index(window: int) -> np.ndarray:
  """[N, N] row of the [(2w-1)^2, heads] bias table for each token pair of a w x w window (N = w^2)."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(2, -1)
  rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
  return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def windows(x: jax.Array, window: int) -> jax.Array:
  """[B, R, R, C] -> [B, windows, window^2, C], windows row-major (jax or numpy arrays)."""
  b, r, _, c = x.shape
  n = r // window
  x = x.reshape(b, n, window, n, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, n * n, window * window, c)


def unwindow(x: jax.Array, resolution: int) -> jax.Array:
  """The inverse of `windows`: [B, windows, window^2, C] -> [B, R, R, C]."""
  b, _, tokens, c = x.shape
  window = int(round(tokens**0.5))
  n = resolution // window
  x = x.reshape(b, n, n, window, window, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, resolution, resolution, c)


def shift_mask(resolution: int, window: int, shift: int) -> np.ndarray:
  """[windows, N, N] additive mask of a shifted block: 0 within a region, SHIFT_MASK_VALUE across."""
  region = np.zeros((1, resolution, resolution, 1), np.float32)
  bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
  for i, (rows, cols) in enumerate((r, c) for r in bounds for c in bounds):
    region[:, rows, cols, :] = i
  ids = windows(region, window)[0, :, :, 0]  # numpy: built once per trace, a constant
  return np.where(ids[:, None, :] != ids[:, :, None], SHIFT_MASK_VALUE, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head self-attention within each window, with the relative-position bias table."""

  width: int
  num_heads: int
  window: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
    qkv = layers.Dense(3 * self.width, ("embed", "qkv"), dtype=self.dtype, name="qkv")(x)
    q, k, v = (layers.split_heads(t, self.num_heads) for t in jnp.split(qkv, 3, axis=-1))
    table = self.param(
      "relative_position_bias_table",
      nn.with_logical_partitioning(nn.initializers.truncated_normal(0.02), (None, "heads")),
      ((2 * self.window - 1) ** 2, self.num_heads),
    )
    tokens = self.window**2
    bias = table[relative_position_index(self.window).reshape(-1)].reshape(tokens, tokens, self.num_heads)
    bias = bias.transpose(2, 0, 1)  # [H, N, N]
    if mask is not None:
      bias = bias + jnp.asarray(mask)[:, None]  # [windows, H, N, N]
    out = layers.attend(q, k, v, bias, scale=layers.head_scale(self.width // self.num_heads))
    return layers.Dense(self.width, ("heads", "embed"), dtype=self.dtype, name="proj")(layers.merge_heads(out))


class SwinBlock(nn.Module):
  """`x + WMSA(LN(x))`, then `x + MLP(LN(x))`; windows shifted by `shift` (0: not shifted)."""

  width: int
  num_heads: int
  window: int
  shift: int
  mlp_dim: int
  ln_eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, r, _, c = x.shape
    y = layers.LayerNorm(self.ln_eps, name="norm1")(x)
    if self.shift:
      y = jnp.roll(y, (-self.shift, -self.shift), axis=(1, 2))
    mask = shift_mask(r, self.window, self.shift) if self.shift else None
    y = WindowAttention(self.width, self.num_heads, self.window, self.dtype, name="attn")(windows(y, self.window), mask)
    y = unwindow(y, r)
    if self.shift:
      y = jnp.roll(y, (self.shift, self.shift), axis=(1, 2))
    x = x + y.astype(jnp.float32)
    y = layers.gelu_mlp(layers.LayerNorm(self.ln_eps, name="norm2")(x), self.mlp_dim, self.dtype)
    return layers.constrain(x + y.astype(jnp.float32), ("batch", None, None, "embed"))


class PatchMerging(nn.Module):
  """2x2 neighbours concatenated (official order), LayerNorm, then a bias-free projection to 2C."""

  ln_eps: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], axis=-1)
    x = layers.LayerNorm(self.ln_eps, name="norm")(x)
    return layers.Dense(2 * c, ("mlp", "embed"), use_bias=False, dtype=self.dtype, name="reduction")(x)


class SwinTransformer(nn.Module):
  """Image [B, S, S, 3] (normalised) -> [B, 1 + tokens, width]: the mean token, then the tokens."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    c = self.config
    if image.shape[1] != c.image_size or image.shape[2] != c.image_size:
      raise UserError(f"the Swin tower takes {c.image_size}x{c.image_size} images, got {image.shape[1:3]}")
    x = layers.patch_embedding(c.embed_dim, c.patch_size, self.dtype)(image.astype(self.dtype))
    x = layers.LayerNorm(c.ln_eps, name="patch_norm")(x)
    for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
      resolution, width = x.shape[1], x.shape[-1]
      if resolution % min(c.window, resolution):
        raise UserError(f"Swin stage {i}: grid {resolution} is not a multiple of the window {c.window}")
      window = min(c.window, resolution)  # a grid no larger than a window: one window, never shifted
      for j in range(depth):
        shift = window // 2 if j % 2 and resolution > c.window else 0
        x = SwinBlock(
          width, heads, window, shift, int(width * c.mlp_ratio), c.ln_eps, self.dtype, name=f"stage_{i}_block_{j}"
        )(x)
      if i < len(c.depths) - 1:
        x = PatchMerging(c.ln_eps, self.dtype, name=f"stage_{i}_merge")(x)
      self.sow("intermediates", f"stage_{i}", x.reshape(x.shape[0], -1, x.shape[-1]))
    x = layers.LayerNorm(c.ln_eps, name="norm")(x.reshape(x.shape[0], -1, x.shape[-1]))
    return jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
