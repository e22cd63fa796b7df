"""The RAM release (`ram_swin_large_14m.pth` with its tag list and per-class thresholds) -> a converted
tagger directory: DIR/config.json (`kind: ram_tagger`), DIR/params, DIR/tag_list.txt and
DIR/tag_thresholds.txt (the user's files, checked and copied), DIR/conversion.json."""

from __future__ import annotations

import collections
import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.convert import mapping
from lion_jax.convert.sources import TorchSource
from lion_jax.errors import MissingFile, UserError
from lion_jax.models import presets
from lion_jax.models.ram import RamTaggingModel

TAG_LIST_NAME = "tag_list.txt"
THRESHOLDS_NAME = "tag_thresholds.txt"
# Older RAM checkpoints name the tagging head `vision_multi`; the official loader renames it.
LEGACY_PREFIXES = {"vision_multi.": "tagging_head."}


class _Renamed(Mapping):
  """A state dict seen with the official loader's renames applied."""

  def __init__(self, source: Mapping[str, np.ndarray]):
    self.source = source
    self.names = {self._rename(k): k for k in source}

  @staticmethod
  def _rename(key: str) -> str:
    for old, new in LEGACY_PREFIXES.items():
      if key.startswith(old):
        return new + key[len(old) :]
    return key

  def __getitem__(self, key: str) -> np.ndarray:
    return self.source[self.names[key]]

  def __iter__(self) -> Iterator[str]:
    return iter(self.names)

  def __len__(self) -> int:
    return len(self.names)


def read_tag_list(path: str | os.PathLike) -> list[str]:
  """The tags, one per line, kept as the official code reads them (`read().splitlines()`)."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"tag list not found: {path}")
  tags = path.read_text(encoding="utf-8").splitlines()
  empty = [i + 1 for i, t in enumerate(tags) if not t.strip()]
  if empty:
    raise UserError(f"{path}: lines {empty[:10]} are empty; the tag list has one tag per line")
  return tags


def read_thresholds(path: str | os.PathLike) -> np.ndarray:
  """The per-class thresholds (one number in [0, 1] per line), float32 as the official tensor holds them."""
  path = Path(path)
  if not path.is_file():
    raise MissingFile(f"thresholds file not found: {path}")
  values = []
  for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
    try:
      value = float(line)
    except ValueError:
      raise UserError(f"{path}:{line_no}: not a number: {line.strip()[:60]!r}") from None
    if not 0.0 <= value <= 1.0:
      raise UserError(f"{path}:{line_no}: threshold {value} is outside [0, 1]")
    values.append(value)
  return np.asarray(values, np.float32)


def load_ram_release(
  ram_pth: str | os.PathLike,
  tag_list: str | os.PathLike,
  thresholds: str | os.PathLike,
  preset: str = "ram_swin_large",
) -> tuple[ml_collections.ConfigDict, dict, dict[str, int]]:
  """(config, params, unused) from the release files; the config is `presets.RAM_PRESETS[preset]`
  with as many classes as the tag list. Every missing, unexpected or mis-shaped key is named;
  `unused` counts the known keys tagging does not read, by prefix (reported, not silently dropped)."""
  tags, limits = read_tag_list(tag_list), read_thresholds(thresholds)
  config = presets.RAM_PRESETS[preset](len(tags))
  if len(limits) != config.num_classes:
    raise UserError(f"{thresholds}: {len(limits)} lines, but the tagger has {config.num_classes} tag classes")
  source = _Renamed(TorchSource(ram_pth))
  model = RamTaggingModel(config)
  image = jnp.zeros((1, config.swin.image_size, config.swin.image_size, 3))
  abstract = jax.eval_shape(lambda: nn.unbox(model.init(jax.random.key(0), image)["params"]))
  entries = mapping.ram_tagger(config)
  flat = mapping.assemble(
    entries, source, mapping.flat_shapes(abstract), source_name=str(ram_pth), ignore=mapping.RAM_UNUSED
  )
  used = {e.src for e in entries}
  unused = collections.Counter(k.split(".")[0] for k in source if k not in used)
  return config, mapping.unflatten(flat), dict(unused)
