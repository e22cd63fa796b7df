"""Blind evaluation: the same records, each example shown another example's image.

A VLM can score well from its prompt alone (tags, question priors; MMStar, Chen et al. 2024, found
public VLMs doing it), so a score means something only as far as it stands above its blind twin. A
blind run keeps every record's text, tags and sizes and swaps the pixels by a fixed derangement of the
evaluated set's distinct images: no example keeps its own image, and a rerun swaps them the same way.
Generation evaluators report `<metric>_blind` next to `<metric>`; the validation loss reports the
image gain (blind loss minus true loss, nats per target token) per task level.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from lion_jax.data.records import Record
from lion_jax.errors import UserError

SEED = 0  # the derangement is part of the measurement: fixed, so blind scores compare across runs
SUFFIX = "_blind"


def _image_key(record: Record) -> str:
  if record.image_bytes is not None:
    return "sha1:" + hashlib.sha1(record.image_bytes).hexdigest()
  return record.image


def partners(records: Sequence[Record]) -> np.ndarray:
  """For each record, the index of the record whose image it is shown in a blind run.

  The distinct images are put on one cycle in a fixed random order and each image's records get the
  next image's pixels (the image of its first record), so every example sees an image other than its
  own, whichever record of the set it is asked with."""
  keys = [_image_key(r) for r in records]
  distinct = list(dict.fromkeys(keys))
  if len(distinct) < 2:
    raise UserError(
      f"a blind evaluation shows each example another example's image, but the {len(records)} record(s) "
      f"evaluated have {len(distinct)} distinct image(s): evaluate more records (config.limit) or turn blind off"
    )
  order = np.random.default_rng(SEED).permutation(len(distinct))
  successor = {distinct[a]: distinct[b] for a, b in zip(order, np.roll(order, -1))}
  first: dict[str, int] = {}
  for i, key in enumerate(keys):
    first.setdefault(key, i)
  return np.array([first[successor[key]] for key in keys], np.int64)


def suffixed(scores: dict[str, float]) -> dict[str, float]:
  """{'CIDEr': v} -> {'CIDEr_blind': v}: a blind run's scores, to report next to the true ones."""
  return {f"{k}{SUFFIX}": v for k, v in scores.items()}
