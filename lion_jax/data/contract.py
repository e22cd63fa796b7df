"""The batch contract: the keys, per-example shapes and dtypes of what the model and a train step read.

One home for it: the pipeline's examples, the model's init batch (`models.example_batch`), the
trainer's and planner's compile-ahead batch and the evaluators' loss batches all come from here, so a
new input is added in one place. Lengths are the data config's limits (T5 input and target, Q-Former
text); a batch is `{key: array[batch, *shape]}`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MODEL_KEYS = ("image", "qformer_ids", "qformer_mask", "input_ids", "input_mask", "decoder_input_ids", "task")
TRAIN_KEYS = MODEL_KEYS + ("target_ids", "target_mask")  # what a train step or a validation loss reads


def spec(image_size: int, qformer_len: int, input_len: int, target_len: int) -> dict[str, tuple[tuple, Any]]:
  """{key: (per-example shape, dtype)} for every key of TRAIN_KEYS."""
  ids = lambda n: ((n,), np.int32)
  return dict(
    image=((image_size, image_size, 3), np.float32),
    qformer_ids=ids(qformer_len),
    qformer_mask=ids(qformer_len),
    input_ids=ids(input_len),
    input_mask=ids(input_len),
    decoder_input_ids=ids(target_len),
    task=((), np.int32),
    target_ids=ids(target_len),
    target_mask=ids(target_len),
  )


def data_spec(data_config) -> dict[str, tuple[tuple, Any]]:
  """The contract at a data config's image size and length limits."""
  c = data_config
  return spec(c.image_size, c.max_qformer_len, c.max_input_len, c.max_target_len)


def zeros(batch_spec: dict[str, tuple[tuple, Any]], batch_size: int, keys=TRAIN_KEYS) -> dict[str, np.ndarray]:
  """A batch of `keys` with every mask set and everything else zero (for init and compiling ahead)."""
  return {
    k: (np.ones if k.endswith("_mask") else np.zeros)((batch_size,) + batch_spec[k][0], batch_spec[k][1]) for k in keys
  }
