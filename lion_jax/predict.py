r"""Ask a LION checkpoint about an image from the command line.

  python -m lion_jax.predict --checkpoint DIR --image PATH --question "..." \
      [--tags "dog, grass" | --tagger RAM_DIR] [--task region_level] [--draw OUT.png] [--num_beams 5]

Prints the answer (and the boxes in pixels, and the tags a --tagger computed); with --draw, saves the
image with the boxes drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from lion_jax import errors, paths
from lion_jax.data.images import decode_image
from lion_jax.inference.predictor import Predictor
from lion_jax.inference.tagger import RamTagger


def draw_boxes(image: Image.Image, boxes, color=(255, 40, 40)) -> Image.Image:
  out = image.convert("RGB").copy()
  pen = ImageDraw.Draw(out)
  width = max(2, round(min(out.size) / 150))
  for i, box in enumerate(boxes):
    pen.rectangle(box, outline=color, width=width)
    pen.text((box[0] + width, box[1] + width), str(i + 1), fill=color)
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--checkpoint", required=True, metavar="DIR", help="converted or exported checkpoint directory")
  parser.add_argument("--image", required=True, metavar="FILE", help="the image to ask about")
  parser.add_argument("--question", required=True, help="the question or instruction")
  parser.add_argument("--tags", help="comma-separated image tags, precomputed with RAM (default: none)")
  parser.add_argument(
    "--tagger", metavar="DIR", help="a converted RAM tagger (lion_jax.convert ram), used without --tags (default: none)"
  )
  parser.add_argument(
    "--task",
    default="image_level",
    choices=["image_level", "region_level"],
    help="the adapter gate to route through; region_level for boxes (default: %(default)s)",
  )
  parser.add_argument("--draw", metavar="FILE", help="save the image with the predicted boxes here (default: none)")
  parser.add_argument("--num_beams", type=int, default=5, metavar="N", help="beam width (default: %(default)s)")
  parser.add_argument(
    "--max_new_tokens", type=int, default=256, metavar="N", help="longest answer in tokens (default: %(default)s)"
  )
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: answer(args))


def answer(args: argparse.Namespace) -> None:
  """Prints the answer and its boxes; the inputs are checked before the checkpoint takes its time to load."""
  if not paths.as_path(args.checkpoint).is_dir():
    raise errors.MissingFile(f"--checkpoint: no such folder: {args.checkpoint}")
  if not Path(args.image).is_file():
    raise errors.MissingFile(f"--image: no such file: {args.image}")
  if args.tagger and not paths.as_path(args.tagger).is_dir():
    raise errors.MissingFile(f"--tagger: no such folder: {args.tagger}")
  image = decode_image(args.image)
  tagger = RamTagger.load(args.tagger, batch_size=1) if args.tagger else None
  predictor = Predictor.load(
    args.checkpoint, num_beams=args.num_beams, max_new_tokens=args.max_new_tokens, tagger=tagger
  )
  result = predictor(image, args.question, tags=args.tags, task=args.task)
  print(result.text)
  if tagger is not None and args.tags is None:
    print(f"tags: {', '.join(result.tags)}")
  for i, box in enumerate(result.boxes):
    print(f"box {i + 1}: [{', '.join(f'{v:.1f}' for v in box)}]")
  if args.draw:
    draw_boxes(image, result.boxes).save(args.draw)
    print(f"saved {args.draw}")


if __name__ == "__main__":
  sys.exit(main())
