"""Flax modules of LION; `Lion` is the assembled model (see lion.py for the batch contract)."""

from lion_jax.models.lion import VISUAL_INPUTS, Lion, abstract_params, adapters_per_ffn, example_batch, num_adapters
from lion_jax.models.presets import PRESETS
from lion_jax.models.presets import get as get_preset

__all__ = [
  "Lion",
  "adapters_per_ffn",
  "VISUAL_INPUTS",
  "abstract_params",
  "example_batch",
  "num_adapters",
  "PRESETS",
  "get_preset",
]
