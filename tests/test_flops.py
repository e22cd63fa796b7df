"""Step FLOPs from the jaxpr: scan bodies count once per layer, so both layer layouts count the same."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lion_jax.flops import matmul_flops
from lion_jax.models import Lion, layer_stack, presets
from tests.test_model import init, random_batch


def test_scans_count_per_iteration_and_conds_their_costliest_branch():
  x, w = jnp.ones((4, 8)), jnp.ones((8, 8))
  scanned = lambda x: jax.lax.scan(lambda c, _: (c @ w, None), x, None, length=3)[0]
  assert matmul_flops(jax.make_jaxpr(scanned)(x)) == 3 * 2 * 4 * 8 * 8
  branches = lambda p, x: jax.lax.cond(p, lambda x: x @ w @ w, lambda x: x @ w, x)
  assert matmul_flops(jax.make_jaxpr(branches)(True, x)) == 2 * (2 * 4 * 8 * 8)
  image, kernel = jnp.ones((2, 14, 14, 3)), jnp.ones((7, 7, 3, 16))
  conv = lambda i, k: jax.lax.conv_general_dilated(i, k, (7, 7), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert matmul_flops(jax.make_jaxpr(conv)(image, kernel)) == 2 * (2 * 2 * 2 * 16) * (7 * 7 * 3)


def test_both_layer_layouts_count_the_same_and_remat_counts_the_recomputation():
  config = presets.tiny("all")
  unrolled = layer_stack.unrolled_config(config)
  batch = random_batch(config)
  params = jax.eval_shape(lambda: init(config))
  per_layer = jax.eval_shape(lambda: init(unrolled))
  forward = lambda c: lambda p: Lion(c).apply({"params": p}, batch)
  assert matmul_flops(jax.make_jaxpr(forward(config))(params)) == matmul_flops(
    jax.make_jaxpr(forward(unrolled))(per_layer)
  )

  def backward(c):
    return jax.make_jaxpr(jax.grad(lambda p: forward(c)(p).sum()))(params)

  full = config.copy_and_resolve_references()
  full.remat = "full"
  plain, recomputed = matmul_flops(backward(config)), matmul_flops(backward(full))
  assert plain < recomputed < 1.5 * plain
  assert np.isclose(plain / matmul_flops(jax.make_jaxpr(forward(config))(params)), 3.0, rtol=0.2)
