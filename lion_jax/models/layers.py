"""Building blocks shared by every tower: dense layers with logical axes, norms, attention.

Every parameter is created through `nn.with_logical_partitioning`, so a sharding rule set in the
config (not this code) decides where it lives on the device mesh.

Mixed precision follows the official recipe (PyTorch bf16 autocast): `Dense` and the attention matmuls
run in the compute dtype; norms (statistics and outputs), softmax and therefore the residual streams
stay float32, since every residual add takes a float32 input (docs/model.md, "Precision").
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry2x32_p

from lion_jax.errors import UserError

Array = jax.Array
_log = logging.getLogger(__name__)
Dtype = Any
Initializer = Callable[..., Array]

# BERT / EVA initialiser: N(0, 0.02) (truncated for EVA, plain for BERT; the difference is irrelevant
# for towers that are always loaded from a checkpoint).
# EVA's and BERT's init, the towers' default: N(0, 0.02) matrices and embeddings. A tower's config may
# set `init_std` instead (towers trained from scratch at small widths: ~fan-in**-0.5; see init_std()).
INIT_STD = 0.02
normal_002 = nn.initializers.normal(stddev=INIT_STD)


def init_std(config) -> float:
  """A tower config's `init_std` (EVA/BERT's 0.02 when unset): its N(0, std) kernels and embeddings."""
  return config.get("init_std", INIT_STD)


# torch.nn.Linear default weight init: kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def exact_gelu(x: Array) -> Array:
  """`x * Phi(x)` written with erf, as torch does: the same values as `jax.nn.gelu(approximate=False)`
  to float rounding, and twice as fast on XLA CPU (which expands `erfc` into both of its branches)."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def activation(name: str) -> Callable[[Array], Array]:
  """Activations by their HF names: `gelu` is exact (erf), `gelu_new` the tanh approximation."""
  table = {
    "gelu": exact_gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
  }
  if name not in table:
    raise UserError(f"unknown activation {name!r}; expected one of {sorted(table)}")
  fn = table[name]
  return lambda x: fn(x.astype(jnp.float32))


def keep_mask(key: Array, rate: float, shape: tuple[int, ...]) -> Array:
  """Boolean mask, each element True with probability 1 - rate (rate rounded to a multiple of 2^-16).

  `jax.random.bernoulli` spends one threefry2x32 hash (64 bits) per element, a tenth of the CPU
  training step. Here each hash gives four 16-bit uniforms. Counters are the element's index along
  the leading dimensions, so the mask depends only on the key and the position, never on the device
  mesh (the same property as JAX's partitionable threefry). Keys of other PRNG implementations fall
  back to `jax.random.bernoulli`, as do masks of 2^34 or more elements.
  """
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  *lead, last = shape or (1,)
  words = -(-last // 4)  # hashes per row; each yields 2 x 32 bits = 4 x 16 bits
  if data.shape != (2,) or not shape or math.prod(lead) * words >= 2**32:  # counters are uint32
    return jax.random.bernoulli(key, 1.0 - rate, shape)
  counters = jax.lax.iota(jnp.uint32, math.prod(lead) * words).reshape(*lead, words)
  bits1, bits2 = threefry2x32_p.bind(data[0], data[1], counters, jnp.zeros_like(counters))
  bits16 = jax.lax.bitcast_convert_type(jnp.stack([bits1, bits2], -1), jnp.uint16)
  bits16 = bits16.reshape(*lead, 4 * words)[..., :last]
  return bits16 >= np.uint16(round(rate * 65536))


class Dropout(nn.Module):
  """Inverted dropout (as `nn.Dropout`) drawing its mask from `keep_mask`; needs the 'dropout' rng."""

  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    if self.rate >= 1.0:
      return jnp.zeros_like(x)
    keep = keep_mask(self.make_rng("dropout"), self.rate, x.shape)
    return jnp.where(keep, x / (1.0 - self.rate), 0.0).astype(x.dtype)


class Dense(nn.Module):
  """`y = x @ kernel (+ bias)` with logical axis names (in_axis, out_axis) on the kernel."""

  features: int
  axes: tuple[str | None, str | None]
  use_bias: bool = True
  kernel_init: Initializer | None = None  # None: N(0, init_std)
  dtype: Dtype = jnp.float32
  init_std: float = INIT_STD

  @nn.compact
  def __call__(self, x: Array) -> Array:
    kernel_init = self.kernel_init or nn.initializers.normal(self.init_std)
    kernel = self.param(
      "kernel", nn.with_logical_partitioning(kernel_init, self.axes), (x.shape[-1], self.features), jnp.float32
    )
    # Accumulated in float32 with the bias added before the one rounding to the compute dtype, as a
    # bf16 `addmm` does under autocast.
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype), preferred_element_type=jnp.float32)
    if self.use_bias:
      bias = self.param(
        "bias", nn.with_logical_partitioning(nn.initializers.zeros, self.axes[1:]), (self.features,), jnp.float32
      )
      y = y + bias.astype(jnp.float32)
    return y.astype(self.dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed and returned in float32 (the next `Dense` casts its input to the compute dtype)."""

  epsilon: float
  axis_name: str | None = "embed"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    d = x.shape[-1]
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)), (d,), jnp.float32
    )
    bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)), (d,), jnp.float32)
    xf = x.astype(jnp.float32)
    mean = xf.mean(-1, keepdims=True)
    var = jnp.square(xf - mean).mean(-1, keepdims=True)
    return (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32) + bias.astype(jnp.float32)


class RMSNorm(nn.Module):
  """T5's norm: scale only, no mean subtraction; computed and returned in float32."""

  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: Array) -> Array:
    scale = self.param(
      "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],), jnp.float32
    )
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.epsilon)
    return y * scale.astype(jnp.float32)


def patch_embedding(
  features: int, patch: int, dtype: Dtype, name: str = "patch_embed", std: float = INIT_STD
) -> nn.Conv:
  """The non-overlapping patch x patch convolution that turns an NHWC image into patch tokens."""
  return nn.Conv(
    features,
    (patch, patch),
    strides=(patch, patch),
    padding="VALID",
    dtype=dtype,
    kernel_init=nn.with_logical_partitioning(nn.initializers.normal(std), (None, None, None, "embed")),
    bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
    name=name,
  )


def gelu_mlp(x: Array, hidden: int, dtype: Dtype, std: float = INIT_STD) -> Array:
  """`fc2(GELU(fc1(x)))` (exact GELU), its Dense layers named fc1 and fc2 in the calling module."""
  y = Dense(hidden, ("embed", "mlp"), dtype=dtype, name="fc1", init_std=std)(x)
  y = activation("gelu")(y)
  return Dense(x.shape[-1], ("mlp", "embed"), dtype=dtype, name="fc2", init_std=std)(y)


def padding_bias(mask: Array, dtype: Dtype = jnp.float32) -> Array:
  """[B, K] 0/1 key mask -> additive bias [B, 1, 1, K] (0 where kept, a large negative where masked)."""
  return jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(dtype).min).astype(dtype)


# Which attention kernel `attend` uses: "auto" (cuDNN's fused attention through
# `jax.nn.dot_product_attention` on GPU where it supports the call, the einsum path elsewhere),
# "einsum" (always the einsum path), or "xla" (`jax.nn.dot_product_attention`'s XLA implementation:
# the fused path's argument handling, checked against the einsum path on CPU). Read at trace time.
ATTENTION_KERNELS = ("auto", "einsum", "xla")
_attention_kernel: contextvars.ContextVar[str] = contextvars.ContextVar("attention_kernel", default="auto")


@contextlib.contextmanager
def attention_kernel(name: str):
  """Traces the attention inside the block with kernel `name` (ATTENTION_KERNELS), e.g. to time the
  einsum path against cuDNN's on a GPU (benchmarks/stage3_step_and_decode.py --attention)."""
  if name not in ATTENTION_KERNELS:
    raise UserError(f"attention kernel {name!r}; expected one of {ATTENTION_KERNELS}")
  token = _attention_kernel.set(name)
  try:
    yield
  finally:
    _attention_kernel.reset(token)


def _fused_implementation(q: Array, bias: Array | None, probs_dropout) -> str | None:
  """ "cudnn" or "xla" where `jax.nn.dot_product_attention` serves this call, else None (einsum path).

  cuDNN's fused attention takes [B, T, H, D] in bf16/fp16 with head size <= 128 (a multiple of 8)
  and an additive [B|1, H|1, Tq, Tk] bias (padding, causal and T5 relative-position biases are all
  written as one), but no dropout on the probabilities (training's BERT and T5 attention dropout)."""
  kernel = _attention_kernel.get()
  if kernel == "einsum" or probs_dropout is not None or q.ndim != 4 or (bias is not None and bias.ndim != 4):
    return None
  if kernel == "xla":
    return "xla"
  on_gpu = jax.default_backend() == "gpu"
  head = q.shape[-1]
  return "cudnn" if on_gpu and q.dtype in (jnp.bfloat16, jnp.float16) and head <= 128 and head % 8 == 0 else None


def attend(
  q: Array,
  k: Array,
  v: Array,
  bias: Array | None,
  *,
  scale: float,
  probs_dropout: Callable[[Array], Array] | None = None,
) -> Array:
  """Multi-head attention core on [..., T, H, D] tensors; softmax in float32.

  `bias` is added to the logits (padding masks, causal masks, T5 relative positions, Swin's window
  biases) and broadcasts to [..., H, Tq, Tk]; the leading dims are batch dims (Swin's are [B,
  windows]). `probs_dropout`, when given, is applied to the attention probabilities.

  On GPU a call cuDNN supports runs as its fused kernel (`_fused_implementation`); elsewhere the
  einsum path below, whose logits are laid out [B, Tq, H, Tk], next to q's own layout: the values are
  the same as with [B, H, Tq, Tk], but XLA CPU then runs the two matmuls and the softmax as separate,
  faster kernels (1.7x on the benchmark ViT's attention forward; benchmarks/RESULTS.md).
  """
  implementation = _fused_implementation(q, bias, probs_dropout)
  if implementation is not None:
    # In the compute dtype, masked entries at its most negative finite value (not -inf).
    fused_bias = None if bias is None else jnp.maximum(bias, jnp.finfo(q.dtype).min).astype(q.dtype)
    try:
      return jax.nn.dot_product_attention(q, k, v, fused_bias, scale=scale, implementation=implementation)
    except (NotImplementedError, ValueError) as e:  # raised while tracing: cuDNN does not take these shapes
      if implementation != "cudnn":
        raise
      _log.info("cuDNN attention does not take q %s k %s (%s); the einsum path runs it", q.shape, k.shape, e)
  if scale != 1.0:
    # On q, as EVA does (a pass over Tq x D, not Tq x Tk), rounded once from float32 as torch does.
    q = (q.astype(jnp.float32) * scale).astype(q.dtype)
  logits = jnp.einsum("...qhd,...khd->...qhk", q, k, preferred_element_type=jnp.float32)
  if bias is not None:
    logits = logits + jnp.swapaxes(bias, -3, -2).astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  if probs_dropout is not None:
    probs = probs_dropout(probs)
  return jnp.einsum("...qhk,...khd->...qhd", probs.astype(v.dtype), v)


def split_heads(x: Array, num_heads: int) -> Array:
  return x.reshape(*x.shape[:-1], num_heads, x.shape[-1] // num_heads)


def merge_heads(x: Array) -> Array:
  return x.reshape(*x.shape[:-2], x.shape[-2] * x.shape[-1])


def constrain(x: Array, axes: Sequence[str | None]) -> Array:
  """Logical sharding constraint on an activation (a no-op outside a mesh with rules)."""
  return nn.with_logical_constraint(x, tuple(axes))


def head_scale(head_dim: int) -> float:
  return 1.0 / math.sqrt(head_dim)
