"""Ask a LION checkpoint about an image from the command line.

  python -m lion_jax.predict --checkpoint DIR --image PATH --question "..." \
      [--tags "dog, grass"] [--task region_level] [--draw OUT.png] [--num_beams 5] [--max_new_tokens 256]

Prints the answer (and the boxes in pixels); with --draw, saves the image with the boxes drawn.
"""

from __future__ import annotations

import argparse
import sys

from PIL import Image, ImageDraw

from lion_jax.data.records import BadRecord
from lion_jax.inference.predictor import Predictor


def draw_boxes(image: Image.Image, boxes, color=(255, 40, 40)) -> Image.Image:
  out = image.convert("RGB").copy()
  pen = ImageDraw.Draw(out)
  width = max(2, round(min(out.size) / 150))
  for i, box in enumerate(boxes):
    pen.rectangle(box, outline=color, width=width)
    pen.text((box[0] + width, box[1] + width), str(i + 1), fill=color)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m lion_jax.predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--checkpoint", required=True, help="converted or exported checkpoint directory")
  parser.add_argument("--image", required=True)
  parser.add_argument("--question", required=True)
  parser.add_argument("--tags", help="comma-separated image tags (precomputed with RAM)")
  parser.add_argument("--task", default="image_level", choices=["image_level", "region_level"])
  parser.add_argument("--draw", help="save the image with the predicted boxes here")
  parser.add_argument("--num_beams", type=int, default=5)
  parser.add_argument("--max_new_tokens", type=int, default=256)
  args = parser.parse_args(argv)
  try:
    predictor = Predictor.load(args.checkpoint, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    from lion_jax.data.images import decode_image
    image = decode_image(args.image)
    result = predictor(image, args.question, tags=args.tags, task=args.task)
  except (FileNotFoundError, ValueError, BadRecord) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(result.text)
  for i, box in enumerate(result.boxes):
    print(f"box {i + 1}: [{', '.join(f'{v:.1f}' for v in box)}]")
  if args.draw:
    draw_boxes(image, result.boxes).save(args.draw)
    print(f"saved {args.draw}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
