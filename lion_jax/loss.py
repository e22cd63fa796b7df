"""The training loss, in one place for the train step and the validation-loss evaluator."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from lion_jax.models.param_paths import TASK_LEVELS


def loss_and_metrics(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
  """Token-mean cross-entropy over the batch's target tokens (as LAVIS), plus sums per task level
  (`loss_sum_<level>`, `tokens_<level>`), so a level's loss can be averaged over many batches."""
  mask = batch["target_mask"].astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_ids"]) * mask
  loss = token_loss.sum() / jnp.maximum(mask.sum(), 1.0)
  per_example = token_loss.sum(-1)
  tokens = mask.sum(-1)
  metrics = {"loss_sum": token_loss.sum(), "tokens": mask.sum()}
  for task_id, name in enumerate(TASK_LEVELS):
    sel = (batch["task"] == task_id).astype(jnp.float32)
    metrics[f"loss_sum_{name}"] = (per_example * sel).sum()
    metrics[f"tokens_{name}"] = (tokens * sel).sum()
  return loss, metrics
