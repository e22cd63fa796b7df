"""AdamW over the trainable tree only, with LION's weight-decay rule and learning-rate schedules.

Frozen towers are a separate tree that never reaches the optimizer, so they get no optimizer state
and weight decay cannot touch them. Weight decay (0.05 in LION) applies as in the official
`get_optimizer_params`: to every parameter with 2 or more dimensions (none of which is a norm or a
bias here); the MoA gates ([task types, d_model]) are decayed too, as there.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lion_jax.errors import UserError


def decay_mask(params):
  """True for parameters with >= 2 dimensions (norm scales, biases and adapter scales are 1-D)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, num_steps: int):
  """`constant`; `warmup_cosine` (linear warm-up, cosine to `min_lr` at num_steps); `lion_epoch_cosine`
  (the official stage-4 recipe: constant for the first epoch, then cosine over epochs, held
  constant within each epoch of `steps_per_epoch` steps)."""
  c = config
  if c.schedule == "constant":
    return optax.constant_schedule(c.lr)
  if c.schedule == "warmup_cosine":
    return optax.warmup_cosine_decay_schedule(
      0.0, c.lr, max(c.warmup_steps, 1), max(num_steps, c.warmup_steps + 1), end_value=c.min_lr
    )
  if c.schedule == "lion_epoch_cosine":
    num_epochs = max(1, math.ceil(num_steps / c.steps_per_epoch))

    def schedule(step):
      epoch = jnp.floor_divide(step, c.steps_per_epoch)
      return c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + jnp.cos(jnp.pi * epoch / num_epochs))

    return schedule
  raise UserError(f"optimizer.schedule={c.schedule!r}; expected constant, warmup_cosine or lion_epoch_cosine")


def make_optimizer(config: ml_collections.ConfigDict, num_steps: int):
  """(optax transform, schedule). `config` is the `optimizer` section of the run config."""
  schedule = learning_rate_schedule(config, num_steps)
  parts = []
  if config.clip_grad_norm:
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  parts.append(
    optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=decay_mask)
  )
  return optax.chain(*parts), schedule
