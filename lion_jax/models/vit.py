"""EVA ViT-g/14, the frozen image tower of BLIP-2, InstructBLIP and LION.

Pre-LN transformer blocks with a fused qkv projection whose bias is [q_bias, 0, v_bias] (no key bias),
exact GELU, learned absolute positions (bicubically resized when the image size differs from the
trained grid) and no final norm. It returns the hidden states after the blocks its caller reads
(LION reads three: the last for the Q-Former and the aggregator's query stream, two earlier ones as
the aggregator's memories), and keeps no others, scanned or not.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.errors import UserError
from lion_jax.models import layer_stack, layers


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
  """Keys' cubic convolution weights for offsets -1, 0, 1, 2 (torch's bicubic uses a = -0.75)."""

  def near(x):  # |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + 1

  def far(x):  # 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.cache
def bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] matrix equal to torch `interpolate(mode='bicubic', align_corners=False)` in 1-D.

  Source positions are `(i + 0.5) * n_in / n_out - 0.5`; taps outside the grid are clamped to the
  border, as torch does.
  """
  src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  w = _cubic_weights(src - base)
  m = np.zeros((n_out, n_in), np.float64)
  for tap in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + tap, 0, n_in - 1)
    np.add.at(m, (np.arange(n_out), idx), w[:, tap])
  return m.astype(np.float32)


def resize_positions(pos: jax.Array, grid_out: tuple[int, int]) -> jax.Array:
  """Resizes [1, 1 + g*g, D] position embeddings (CLS first) to a (gh, gw) patch grid."""
  n = pos.shape[1] - 1
  g = int(round(n**0.5))
  if g * g != n:
    raise ValueError(f"position embedding has {n} patch positions, which is not a square grid")
  if (g, g) == tuple(grid_out):
    return pos
  patch = pos[0, 1:].reshape(g, g, -1).astype(jnp.float32)
  mh, mw = bicubic_matrix(g, grid_out[0]), bicubic_matrix(g, grid_out[1])
  patch = jnp.einsum("oi,pj,ijd->opd", mh, mw, patch).reshape(1, -1, pos.shape[-1])
  return jnp.concatenate([pos[:, :1].astype(jnp.float32), patch], axis=1).astype(pos.dtype)


def sincos_positions(grid: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """[1, 1 + grid*grid, width] fixed 2-D sine-cosine positions (as MAE and big_vision's `sincos2d`),
  zero for the CLS slot: a from-scratch tower starts with positions a linear map can read out."""
  if width % 4:
    raise ValueError(f"sincos positions need a width divisible by 4, got {width}")
  y, x = np.mgrid[:grid, :grid]
  omega = 1.0 / temperature ** (np.arange(width // 4) / (width // 4 - 1 if width > 4 else 1))
  y, x = y.reshape(-1, 1) * omega, x.reshape(-1, 1) * omega
  pe = np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1)
  return np.concatenate([np.zeros((1, width)), pe])[None].astype(np.float32)


class Attention(nn.Module):
  """EVA self-attention: fused qkv kernel, separate q and v biases, zero key bias."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w, h, std = self.config.width, self.config.num_heads, layers.init_std(self.config)
    qkv = layers.Dense(3 * w, ("embed", "qkv"), use_bias=False, dtype=self.dtype, name="qkv", init_std=std)(x)
    q_bias = self.param("q_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (w,))
    v_bias = self.param("v_bias", nn.with_logical_partitioning(nn.initializers.zeros, ("heads",)), (w,))
    q, k, v = jnp.split(qkv, 3, axis=-1)
    q = layers.split_heads(q + q_bias.astype(self.dtype), h)
    k = layers.split_heads(k, h)
    v = layers.split_heads(v + v_bias.astype(self.dtype), h)
    out = layers.attend(q, k, v, None, scale=layers.head_scale(w // h))
    return layers.Dense(w, ("heads", "embed"), dtype=self.dtype, name="proj", init_std=std)(layers.merge_heads(out))


class Block(nn.Module):
  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = self.config
    x = x + Attention(c, self.dtype, name="attn")(layers.LayerNorm(c.ln_eps, name="norm1")(x))
    y = layers.gelu_mlp(layers.LayerNorm(c.ln_eps, name="norm2")(x), c.mlp_dim, self.dtype, layers.init_std(c))
    return layers.constrain(x + y, ("batch", "length", "embed"))


class ReadingBlock(Block):
  """A block as the body of the scanned ViT: carries `(x, kept)` where `kept` [len(read), B, T, D]
  receives x after the blocks that are read; `slots[i]` is block i's row in `kept` (-1: not read)."""

  slots: tuple[int, ...] = ()

  def __call__(self, carry, index):
    x, kept = carry
    x = super().__call__(x)
    slot = jnp.asarray(self.slots)[index]
    row = jnp.maximum(slot, 0)
    kept = jax.lax.dynamic_update_index_in_dim(kept, jnp.where(slot >= 0, x, kept[row]), row, 0)
    return (x, kept), None


class VisionTransformer(nn.Module):
  """Image [B, H, W, 3] (normalised) -> the hidden states after the 1-based blocks `read`, each
  [B, 1 + patches, width]. `scan_layers` runs the blocks as one scan (models/layer_stack.py)."""

  config: ml_collections.ConfigDict
  dtype: jnp.dtype = jnp.float32
  scan_layers: bool = False
  remat: str = "none"

  @nn.compact
  def __call__(self, image: jax.Array, read: Sequence[int]) -> list[jax.Array]:
    c = self.config
    p = c.patch_size
    read = tuple(read)
    if not read or not all(1 <= r <= c.depth for r in read):
      raise UserError(f"ViT blocks {read} are read; the ViT has blocks 1..{c.depth}")
    if image.shape[1] % p or image.shape[2] % p:
      raise ValueError(f"image size {image.shape[1:3]} is not a multiple of the patch size {p}")
    normal = nn.initializers.normal(layers.init_std(c))
    patches = layers.patch_embedding(c.width, p, self.dtype, std=layers.init_std(c))(image.astype(self.dtype))
    b, gh, gw, _ = patches.shape
    x = patches.reshape(b, gh * gw, c.width).astype(jnp.float32)  # the residual stream is float32
    cls = self.param("cls_token", nn.with_logical_partitioning(normal, (None, None, "embed")), (1, 1, c.width))
    grid = c.image_size // p
    # EVA's learned positions start as noise; `pos_embed_init: sincos2d` starts them as sine-cosine
    # (for towers trained from scratch, e.g. the demo's; a converted checkpoint overwrites either).
    pos_init = normal
    if c.get("pos_embed_init", "normal") == "sincos2d":
      pos_init = lambda key, shape, dtype=jnp.float32: jnp.asarray(sincos_positions(grid, c.width), dtype)
    pos = self.param(
      "pos_embed", nn.with_logical_partitioning(pos_init, (None, None, "embed")), (1, grid * grid + 1, c.width)
    )
    x = jnp.concatenate([jnp.broadcast_to(cls.astype(jnp.float32), (b, 1, c.width)), x], axis=1)
    x = x + resize_positions(pos, (gh, gw)).astype(jnp.float32)
    if self.scan_layers:
      rows = sorted(set(read))
      slots = tuple(rows.index(i + 1) if i + 1 in rows else -1 for i in range(c.depth))
      body = layer_stack.rematted(ReadingBlock, self.remat, scanned=True)
      kept = jnp.zeros((len(rows),) + x.shape, x.dtype)
      blocks = layer_stack.scanned(body, c.depth, broadcast=0, per_layer=1)(c, self.dtype, slots, name="blocks")
      (_, kept), _ = blocks((x, kept), jnp.arange(c.depth))
      return [kept[rows.index(r)] for r in read]
    block = layer_stack.rematted(Block, self.remat, scanned=False)
    hidden = {}
    for i in range(c.depth):
      x = block(c, self.dtype, name=f"blocks_{i}")(x)
      hidden[i + 1] = x
    return [hidden[r] for r in read]
