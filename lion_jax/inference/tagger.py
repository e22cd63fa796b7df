"""`RamTagger`: image tags as the official LION computes them, from a converted RAM directory.

    tagger = RamTagger.load("ram_converted/")            # or RamTagger.load(dir, mesh=mesh)
    tagger(image)                 # -> ["dog", "grass", ...]  (a `Tagger`: image -> tags)
    tagger.tag_batch(images)      # many images at once, split over the mesh's batch axes

A class is a tag when its sigmoid probability is above its own threshold (strictly, as the official
`generate_tag`; its `threshold` argument is unused there, so it is not offered here). Tags come in
tag-list order, and `templates.tag_prompt` joins them with ", " as LION's `generate_tags` does.
The tagger always runs deterministically (the official code leaves RAM in training mode, with
dropout on, so its tags vary between calls: docs/model.md, "RAM tagger").
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from PIL import Image

from lion_jax import paths, sharding
from lion_jax.convert.converted import load_config, load_model_params
from lion_jax.convert.ram import TAG_LIST_NAME, THRESHOLDS_NAME, read_tag_list, read_thresholds
from lion_jax.data import images as image_ops
from lion_jax.errors import UserError
from lion_jax.models import presets
from lion_jax.models.ram import RamTaggingModel


class RamTagger:
  """A converted RAM tagger, on one device or sharded on a mesh (parameters and batches)."""

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    params,
    tags: Sequence[str],
    thresholds: np.ndarray,
    *,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    batch_size: int = 8,
  ):
    self.config, self.params, self.tags, self.thresholds = config, params, list(tags), np.asarray(thresholds)
    self.mesh, self.rules = mesh, rules
    split = 1 if mesh is None else sharding.batch_axes_size(mesh, rules)
    self.batch_size = -(-batch_size // split) * split  # rows per call, a multiple of the batch split
    self._probabilities = jax.jit(lambda p, x: jax.nn.sigmoid(RamTaggingModel(config).apply({"params": p}, x)))

  @classmethod
  def load(
    cls,
    directory: str | os.PathLike,
    mesh: Mesh | None = None,
    rules=sharding.DEFAULT_RULES,
    batch_size: int = 8,
    dtype: str | None = None,
  ) -> RamTagger:
    """A directory written by `python -m lion_jax.convert ram`; with `mesh`, restored onto its
    shardings. `dtype` ("bfloat16") overrides the compute dtype (float32, as the official tagger),
    with the LION towers' precision rules (models/layers.py); the parameters stay float32."""
    directory = paths.as_path(directory)
    config = load_config(directory)
    if config.get("kind") != presets.RAM_KIND:
      raise UserError(
        f"{directory} is not a converted RAM tagger (its config.json has no kind={presets.RAM_KIND!r}); "
        "convert one with `python -m lion_jax.convert ram`"
      )
    if dtype is not None:
      config.dtype = dtype
    size = config.swin.image_size
    example = np.zeros((1, size, size, 3), np.float32)
    params = load_model_params(directory, RamTaggingModel(config), example, mesh, rules)
    return cls(
      config,
      params,
      read_tag_list(directory / TAG_LIST_NAME),
      read_thresholds(directory / THRESHOLDS_NAME),
      mesh=mesh,
      rules=rules,
      batch_size=batch_size,
    )

  def pixels(self, image: Image.Image) -> np.ndarray:
    """RAM's preprocessing of one image (separate from LION's 224 px CLIP preprocessing), in any PIL
    mode: converted to RGB first, as the official RAM transform does (every entry point comes here)."""
    return image_ops.to_ram_input(image.convert("RGB"), self.config.swin.image_size)

  def probabilities(self, num_images: int, load: Callable[[int], np.ndarray]) -> np.ndarray:
    """[num_images, classes] tag probabilities; `load(i)` gives image i's pixels. On a mesh each
    process loads only the rows its devices hold (so a dataset is read once over all hosts), and
    every process gets every row."""
    size = self.config.swin.image_size
    out = []
    for first in range(0, num_images, self.batch_size):
      rows = [min(first + r, num_images - 1) for r in range(self.batch_size)]  # the last batch repeats its last row
      # Each image loaded once per batch: the repeated padding rows and devices holding the same rows share it.
      image = functools.lru_cache(maxsize=None)(load)
      if self.mesh is None:
        out.append(np.asarray(self._probabilities(self.params, np.stack([image(i) for i in rows]))))
        continue
      batch = jax.make_array_from_callback(
        (self.batch_size, size, size, 3),
        sharding.batch_sharding(self.mesh, self.rules),
        lambda index, rows=rows, image=image: np.stack([image(i) for i in rows[index[0]]]),
      )
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(self.rules):
        probabilities = self._probabilities(self.params, batch)
      out.append(np.asarray(multihost_utils.process_allgather(probabilities, tiled=True)))
    return np.concatenate(out)[:num_images] if out else np.zeros((0, len(self.tags)), np.float32)

  def tags_of(self, probabilities: np.ndarray) -> list[list[str]]:
    """Each row's tags: the classes above their thresholds, in tag-list order."""
    return [[self.tags[c] for c in np.flatnonzero(row > self.thresholds)] for row in probabilities]

  def tag_batch(self, images: Sequence[Image.Image]) -> list[list[str]]:
    pixels = [self.pixels(image) for image in images]
    return self.tags_of(self.probabilities(len(pixels), pixels.__getitem__))

  def __call__(self, image: Image.Image) -> list[str]:
    return self.tag_batch([image])[0]
