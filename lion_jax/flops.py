"""FLOPs of a step counted on its jaxpr: the matmuls and convolutions, each scan body times its length.

XLA's cost analysis counts a while loop's body once, so it undercounts a scanned layer stack by its
depth (0.3 instead of 3.95 TFLOP per example for the XL stage-3 step). The jaxpr has the global
shapes and the scan lengths, and after autodiff and remat it holds every matmul the step runs,
recomputations included. Elementwise work is left out, as in the usual MFU convention (6 x
parameters x tokens counts matmuls only).
"""

from __future__ import annotations

import math

from jax.extend import core


def _dot_general(eqn) -> float:
  (lhs_contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lhs_contract)


def _conv(eqn) -> float:
  """2 x output elements x (kernel window x input features per group)."""
  rhs = eqn.invars[1].aval.shape
  spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, *spatial)
  window = math.prod(rhs[d] for d in spec[2:])
  return 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * rhs[spec[1]]


def matmul_flops(jaxpr) -> float:
  """Global matmul + convolution FLOPs of a (closed) jaxpr; a `while` body (unknown trip count) is
  counted once, a `cond` by its costliest branch."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general(eqn)
    elif name == "conv_general_dilated":
      total += _conv(eqn)
    subs = [matmul_flops(sub) for sub in core.jaxprs_in_params(eqn.params)]
    if not subs:
      continue
    if name == "scan":
      total += eqn.params["length"] * sum(subs)
    elif name == "cond":
      total += max(subs)
    else:
      total += sum(subs)
  return total


def step_flops(jitted, *args) -> float:
  """Global FLOPs of one call of a jitted function on (abstract) `args`, traced under the caller's
  mesh and sharding rules."""
  return matmul_flops(jitted.trace(*args).jaxpr)
