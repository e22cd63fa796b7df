"""Image decoding and preprocessing, as LION's (BLIP-2's) processors do it.

Decode with PIL to RGB (grayscale, RGBA, palette and CMYK converted), resize bicubically to the
model size without keeping the aspect ratio, normalise with CLIP's mean and std, NHWC float32.
Training augmentation (random resized crop with scale (0.5, 1), horizontal flip) is for image-level
examples only: region-level targets are boxes, so their geometry is never changed. A flip is
reported to the caller, which swaps "left" and "right" in the text.
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from lion_jax.data.records import BadRecord

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
# The RAM tagger's preprocessing (ram/transform.py): ImageNet statistics after a bilinear resize.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def decode_image(source: str | os.PathLike | bytes) -> Image.Image:
  """A fully loaded RGB image; missing, truncated or undecodable files raise BadRecord."""
  where = "<image bytes>" if isinstance(source, bytes) else str(source)
  try:
    image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    image.load()  # decodes now, so a truncated file fails here and not later
  except FileNotFoundError:
    raise BadRecord("missing_image", f"{where} does not exist") from None
  except (OSError, ValueError, Image.DecompressionBombError) as e:
    raise BadRecord("unreadable_image", f"{where}: {e}") from None
  # As LAVIS: a plain convert (alpha is dropped, CMYK and palettes mapped by PIL).
  return image if image.mode == "RGB" else image.convert("RGB")


def _resized_normalised(image: Image.Image, size: int, resample, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  if image.size != (size, size):
    image = image.resize((size, size), resample)
  pixels = np.asarray(image, np.float32) / 255.0
  return (pixels - mean) / std


def to_model_input(image: Image.Image, size: int) -> np.ndarray:
  """Bicubic resize to size x size (aspect not kept), CLIP normalisation, [size, size, 3] float32."""
  return _resized_normalised(image, size, Image.Resampling.BICUBIC, CLIP_MEAN, CLIP_STD)


def to_ram_input(image: Image.Image, size: int) -> np.ndarray:
  """The RAM tagger's input, as torchvision's `Resize((size, size))` on a PIL image (PIL bilinear,
  aspect not kept) then ImageNet normalisation: [size, size, 3] float32."""
  return _resized_normalised(image, size, Image.Resampling.BILINEAR, IMAGENET_MEAN, IMAGENET_STD)


def random_resized_crop(
  image: Image.Image, rng: np.random.Generator, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)
) -> Image.Image:
  """torchvision's RandomResizedCrop box sampling (10 tries, then the central crop)."""
  width, height = image.size
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
    w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
      return image.crop((left, top, left + w, top + h))
  in_ratio = width / height
  if in_ratio < ratio[0]:
    w, h = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    w, h = int(round(height * ratio[1])), height
  else:
    w, h = width, height
  left, top = (width - w) // 2, (height - h) // 2
  return image.crop((left, top, left + w, top + h))


class ExampleImage(NamedTuple):
  pixels: np.ndarray  # [size, size, 3] float32
  original_size: tuple[int, int]  # (width, height) of the decoded image, before any crop
  flipped: bool  # mirrored left-right: the caller mirrors the text too (templates.mirror_record)


def load_example_image(
  path_or_bytes: str | Path | bytes, size: int, rng: np.random.Generator | None, augment: bool
) -> ExampleImage:
  """The model input of one example; augments (crop, then a 50% flip, both from `rng`) only when
  `augment` and `rng`, and says whether it flipped so the text can follow."""
  image = decode_image(path_or_bytes)
  original = image.size
  flipped = False
  if augment and rng is not None:
    image = random_resized_crop(image, rng)
    flipped = bool(rng.random() < 0.5)
    if flipped:
      image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
  return ExampleImage(to_model_input(image, size), original, flipped)
