"""Boxes as text, the way LION (after Shikra) reads and writes them.

`[x1,y1,x2,y2]`: corners normalised by the original image width and height, clamped to [0, 1],
three decimals, no spaces; several boxes share one bracket separated by `;`
(`[0.100,0.200,0.300,0.400;0.500,0.500,0.900,0.800]`). REC targets are `Answer: ` + boxes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

REC_ANSWER_PREFIX = "Answer: "

_NUMBER = r"\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)\s*"  # unambiguous: a long digit run is read in linear time
_BOX = rf"{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}"
_BRACKET = re.compile(rf"\[({_BOX}(?:;{_BOX})*)\]")


def normalise_box(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
  """Pixel xyxy -> [0, 1] xyxy (clamped)."""
  x1, y1, x2, y2 = box
  clamp = lambda v: min(max(v, 0.0), 1.0)
  return clamp(x1 / width), clamp(y1 / height), clamp(x2 / width), clamp(y2 / height)


def format_boxes(boxes: Sequence[Sequence[float]], width: float, height: float) -> str:
  """Pixel xyxy boxes -> `[x1,y1,x2,y2;...]` text."""
  if not boxes:
    raise ValueError("format_boxes needs at least one box")
  parts = [",".join(f"{v:.3f}" for v in normalise_box(b, width, height)) for b in boxes]
  return "[" + ";".join(parts) + "]"


def parse_boxes(text: str) -> list[tuple[float, float, float, float]]:
  """Every box in `text`, normalised xyxy, in order of appearance.

  Tolerates spaces, integers and separate brackets per box (`[1,2,3,4];[...]`); text that holds no
  well-formed box gives `[]`, never an exception.
  """
  boxes = []
  for group in _BRACKET.findall(text):
    for part in group.split(";"):
      values = [float(v) for v in part.split(",")]
      boxes.append(tuple(values))
  return boxes


def parse_first_box(text: str) -> tuple[float, float, float, float] | None:
  boxes = parse_boxes(text)
  return boxes[0] if boxes else None
