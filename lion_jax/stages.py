"""Stage-wise training: which parameters each stage trains and where it takes them from.

LION trains in three stages (paper, Fig. 3; official modes in parentheses):
  stage 1 (`qformer`):    image-level data; Q-Former branch + one adapter per FFN (the image-level one)
  stage 2 (`aggregator`): region-level data; aggregator + one adapter per FFN (the region-level one)
  stage 3 (`all`):        both; Q-Former, aggregator, two adapters + gates per FFN

`handoff` is the explicit map from earlier stages' final trainables to a stage's initial ones. In
stage 3 the gates start one-hot with task 0 (region) on adapter 0 and task 1 (image) on adapter 1,
so adapter 0 comes from stage 2 and adapter 1 from stage 1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_MOA = re.compile(r"^(t5/(?:encoder|decoder)/layers_\d+/moa/)adapter_0/(.*)$")


def handoff(visual_input: str, previous: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Flat trainable params for a stage, taken from `previous` = {'stage1': flat, 'stage2': flat}.

  Only the entries returned are overwritten in the stage's fresh init; everything else (gates,
  modules no earlier stage trained) keeps its initial value.
  """
  out: dict[str, np.ndarray] = {}
  stage1, stage2 = previous.get("stage1", {}), previous.get("stage2", {})
  for key in ("soft_prompt",):  # the newest stage that trained it wins
    for prev in (stage1, stage2):
      if key in prev:
        out[key] = prev[key]
  if visual_input == "aggregator":
    return out
  if visual_input == "all":
    out.update({k: v for k, v in stage1.items() if k.startswith("qformer/")})
    out.update({k: v for k, v in stage2.items() if k.startswith("aggregator/")})
    for src, adapter in ((stage1, "adapter_1"), (stage2, "adapter_0")):
      for k, v in src.items():
        m = _MOA.match(k)
        if m:
          out[f"{m.group(1)}{adapter}/{m.group(2)}"] = v
    return out
  if visual_input == "qformer":
    return out
  raise ValueError(f"unknown visual_input {visual_input!r}")
