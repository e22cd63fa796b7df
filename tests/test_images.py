"""Image decoding and preprocessing."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image

from lion_jax.data import images
from lion_jax.data.records import BadRecord


def _png(image: Image.Image, fmt="PNG") -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt)
  return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA", "P", "CMYK", "LA", "I;16"])
def test_every_mode_becomes_rgb(mode, tmp_path):
  base = Image.new("RGB", (12, 8), (200, 40, 10))
  image = base.convert(mode)
  fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
  path = tmp_path / f"x.{fmt.lower()}"
  image.save(path, format=fmt)
  decoded = images.decode_image(path)
  assert decoded.mode == "RGB" and decoded.size == (12, 8)


def test_missing_truncated_and_garbage_files_are_bad_records(tmp_path):
  with pytest.raises(BadRecord) as e:
    images.decode_image(tmp_path / "nope.jpg")
  assert e.value.reason == "missing_image" and "nope.jpg" in str(e.value)
  data = _png(Image.new("RGB", (64, 64), (1, 2, 3)), "JPEG")
  (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
  (tmp_path / "junk.jpg").write_bytes(b"definitely not an image")
  for name in ("cut.jpg", "junk.jpg"):
    with pytest.raises(BadRecord) as e:
      images.decode_image(tmp_path / name)
    assert e.value.reason == "unreadable_image" and name in str(e.value)


def test_resize_and_clip_normalisation():
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 256, (30, 50, 3), dtype=np.uint8))
  out = images.to_model_input(image, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.float32
  expected = np.asarray(image.resize((16, 16), Image.Resampling.BICUBIC), np.float32) / 255.0
  np.testing.assert_allclose(out * images.CLIP_STD + images.CLIP_MEAN, expected, atol=1e-6)


def test_augmentation_only_when_asked_and_deterministic():
  rng = np.random.default_rng(0)
  data = _png(Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)))
  plain, size, flipped = images.load_example_image(data, 16, np.random.default_rng(1), augment=False)
  assert size == (60, 40) and not flipped
  np.testing.assert_array_equal(plain, images.load_example_image(data, 16, None, augment=True)[0])
  a = images.load_example_image(data, 16, np.random.default_rng(1), augment=True)[0]
  b = images.load_example_image(data, 16, np.random.default_rng(1), augment=True)[0]
  np.testing.assert_array_equal(a, b)
  assert np.abs(a - plain).max() > 0.1


def test_random_resized_crop_stays_inside_and_covers_half_the_area_or_more():
  image = Image.new("RGB", (100, 80))
  rng = np.random.default_rng(0)
  for _ in range(50):
    crop = images.random_resized_crop(image, rng)
    assert 0 < crop.size[0] <= 100 and 0 < crop.size[1] <= 80
    assert crop.size[0] * crop.size[1] >= 0.5 * 8000 * 0.9


def test_a_flip_is_reported_and_matches_the_pixels():
  data = _png(Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)))
  seen = set()
  for seed in range(20):
    rng = np.random.default_rng(seed)
    crop = images.random_resized_crop(images.decode_image(data), copy.deepcopy(rng))  # the crop it draws
    example = images.load_example_image(data, 16, rng, augment=True)
    mirrored = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    np.testing.assert_array_equal(example.pixels, images.to_model_input(mirrored if example.flipped else crop, 16))
    seen.add(example.flipped)
  assert seen == {True, False}
