"""The embedded synthetic dataset: coloured shapes on light backgrounds, with records for every task.

The demo and the tests train on it, so the project never downloads data. Each image holds 1-4
non-overlapping circles, squares and triangles; its records (captions with spatial relations, VQA on
color, shape, count and existence, REC/REG on uniquely named shapes, grounded captions) follow the
JSONL schema of `records.py`, boxes in pixels. The tokenizers are trained on the records' own text
plus every instruction template, so the instructions built later tokenise without `<unk>`.

  python -m lion_jax.data.synthetic --out DIR --num_images N --seed S [--image_size 224] [--val_fraction 0.1]
      [--max_shapes 4] [--size_range 0.12 0.32] [--grid 1] [--tag_noise 0]

writes DIR/images/NNNNNN.png, DIR/train.jsonl, DIR/val.jsonl (image paths relative to DIR; val holds
the last images), DIR/spiece.model (+ .vocab), DIR/bert_vocab.txt and DIR/dataset.json (the summary).
Image i depends only on (seed, i), and the same arguments give byte-identical records and images.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from lion_jax import errors
from lion_jax.data import templates
from lion_jax.data.boxes import REC_ANSWER_PREFIX
from lion_jax.data.records import BOXES_PLACEHOLDER, Record, validate, write_jsonl
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, train_t5_sentencepiece, write_bert_vocab

SOURCE = "synthetic"
SHAPES = ("circle", "square", "triangle")
# Every shape color has a channel <= 60 and every background channel is >= 200, so a shape's pixels
# can never be confused with the background (the tests find shapes by exact color).
COLORS = {
  "red": (220, 40, 40),
  "green": (40, 160, 60),
  "blue": (40, 80, 220),
  "yellow": (235, 200, 30),
  "purple": (140, 50, 170),
  "black": (25, 25, 25),
}
BACKGROUND_RANGE = (200, 250)
MAX_SHAPES = 4
SIZE_RANGE = (0.12, 0.32)  # shape side as a fraction of the image side
MIN_GAP = 4  # pixels between any two shape boxes
PLACEMENT_TRIES = 100
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
T5_VOCAB_SIZE = 256  # SentencePiece pieces asked for; a small corpus may give fewer
SENTINEL = "<extra_id_0>"
# Box text: every coordinate the images can produce (pixel k of an image of side n is `k/n` with
# three decimals, so n + 1 values) is one T5 piece, as Pix2Seq quantises coordinates into tokens;
# a box is then 9 pieces instead of 25 characters. The rest of box text is learnt as characters:
# pieces learnt from the records would depend on which boxes they happen to hold ("679,0.").
BOX_CHARACTERS_LINE = " ".join("0123456789[],.;")


# Token lengths that hold every text the records and templates build (T5 input with the tag prompt,
# target, Q-Former instruction; tests/test_synthetic.py checks it): nothing is cut in the demo.
TEXT_LENGTHS = dict(max_input_len=80, max_target_len=28, max_qformer_len=48)


def coordinate_pieces(image_size: int) -> list[str]:
  return [f"{k / image_size:.3f}" for k in range(image_size + 1)]


@dataclasses.dataclass(frozen=True)
class Shape:
  kind: str  # one of SHAPES
  color: str  # a key of COLORS
  box: tuple[int, int, int, int]  # pixel xyxy; the shape's pixels span [x1, x2) x [y1, y2) exactly

  @property
  def name(self) -> str:
    return f"{self.color} {self.kind}"

  @property
  def center(self) -> tuple[float, float]:
    x1, y1, x2, y2 = self.box
    return (x1 + x2) / 2, (y1 + y2) / 2


@dataclasses.dataclass(frozen=True)
class Scene:
  background_top: tuple[int, int, int]
  background_bottom: tuple[int, int, int]  # equal to the top for a plain background
  shapes: tuple[Shape, ...]  # in drawing order, which is also the order captions mention them


def _boxes_apart(a: Sequence[int], b: Sequence[int]) -> bool:
  return a[2] + MIN_GAP <= b[0] or b[2] + MIN_GAP <= a[0] or a[3] + MIN_GAP <= b[1] or b[3] + MIN_GAP <= a[1]


def sample_scene(
  rng: np.random.Generator,
  image_size: int,
  max_shapes: int = MAX_SHAPES,
  size_range: tuple[float, float] = SIZE_RANGE,
  grid: int = 1,
) -> Scene:
  """A background and 1 to `max_shapes` shapes whose side is a `size_range` fraction of the image,
  placed with corners on a `grid`-pixel lattice; a shape that finds no free spot is dropped, so the
  scene's shape count is whatever got placed (at least one: the first always fits)."""
  top = tuple(int(v) for v in rng.integers(*BACKGROUND_RANGE, size=3, endpoint=True))
  bottom = top if rng.random() < 0.5 else tuple(int(v) for v in rng.integers(*BACKGROUND_RANGE, size=3, endpoint=True))
  colors = list(COLORS)
  shapes: list[Shape] = []
  for _ in range(int(rng.integers(1, max_shapes, endpoint=True))):
    kind, color = SHAPES[rng.integers(len(SHAPES))], colors[rng.integers(len(colors))]
    for _ in range(PLACEMENT_TRIES):
      side = grid * int(
        rng.integers(
          max(1, round(size_range[0] * image_size / grid)), round(size_range[1] * image_size / grid), endpoint=True
        )
      )
      x1, y1 = (grid * int(v) for v in rng.integers(0, (image_size - side) // grid, size=2, endpoint=True))
      box = (x1, y1, x1 + side, y1 + side)
      if all(_boxes_apart(box, s.box) for s in shapes):
        shapes.append(Shape(kind, color, box))
        break
  return Scene(top, bottom, tuple(shapes))


def render(scene: Scene, image_size: int) -> Image.Image:
  """The scene as an RGB image, without anti-aliasing so every shape pixel has its exact color."""
  weight = np.linspace(0.0, 1.0, image_size)[:, None, None]
  top, bottom = np.array(scene.background_top, float), np.array(scene.background_bottom, float)
  rows = np.round((1 - weight) * top + weight * bottom).astype(np.uint8)
  image = Image.fromarray(np.ascontiguousarray(np.broadcast_to(rows, (image_size, image_size, 3))))
  draw = ImageDraw.Draw(image)
  for shape in scene.shapes:
    x1, y1, x2, y2 = shape.box
    fill = COLORS[shape.color]
    if shape.kind == "square":
      draw.rectangle((x1, y1, x2 - 1, y2 - 1), fill=fill)  # PIL's corners are inclusive
    elif shape.kind == "circle":
      draw.ellipse((x1, y1, x2 - 1, y2 - 1), fill=fill)
    else:
      draw.polygon([(x1, y2 - 1), (x2 - 1, y2 - 1), (x1 + (x2 - 1 - x1) // 2, y1)], fill=fill)
  return image


def relation(a: Shape, b: Shape) -> str:
  """Where `a` is relative to `b`, along the axis on which their centres differ most."""
  dx, dy = a.center[0] - b.center[0], a.center[1] - b.center[1]
  if abs(dx) >= abs(dy):
    return "left of" if dx < 0 else "right of"
  return "above" if dy < 0 else "below"


def _a(shape: Shape) -> str:
  return f"a {shape.name}"  # every color name starts with a consonant


def _listing(phrases: Sequence[str]) -> str:
  return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _chain(phrases: Sequence[str], shapes: Sequence[Shape]) -> str:
  """'a red circle above a blue square, which is left of a green triangle, ...'."""
  text = f"{phrases[0]} {relation(shapes[0], shapes[1])} {phrases[1]}"
  for i in range(2, len(shapes)):
    text += f", which is {relation(shapes[i - 1], shapes[i])} {phrases[i]}"
  return text


def caption_answers(shapes: Sequence[Shape]) -> list[str]:
  phrases = [_a(s) for s in shapes]
  if len(shapes) == 1:
    return [phrases[0], f"a single {shapes[0].name}", f"an image with one {shapes[0].name}"]
  count = f"{NUMBER_WORDS[len(shapes)]} shapes: {_listing(phrases)}"
  if len(shapes) == 2:
    a, b = shapes
    return [_chain(phrases, shapes), f"{_a(b)} {relation(b, a)} {_a(a)}", count]
  pair = f"{phrases[0]} {relation(shapes[0], shapes[1])} {phrases[1]}, plus {_listing(phrases[2:])}"
  return [_chain(phrases, shapes), pair, count]


def grounded_caption_answers(shapes: Sequence[Shape]) -> list[str]:
  """Answers that all mention the shapes in drawing order, one `<boxes>` each, so the record's
  boxes fill the placeholders of whichever answer is picked."""
  phrases = [f"{_a(s)} {BOXES_PLACEHOLDER}" for s in shapes]
  if len(shapes) == 1:
    return [phrases[0]]
  return [_chain(phrases, shapes), f"{NUMBER_WORDS[len(shapes)]} shapes: {_listing(phrases)}"]


def tags_of(shapes: Sequence[Shape], rng: np.random.Generator | None = None, noise: float = 0.0) -> list[str]:
  """The colors and kinds in the scene, as an image tagger lists them: never positions or which color
  goes with which shape. With `noise` p > 0 (and `rng`), imperfect as RAM's tags are: each true tag
  is missing with probability p and each absent color or kind is listed with probability p / 3, so a
  model cannot answer from the tags what the pixels show."""
  true = {s.kind for s in shapes} | {s.color for s in shapes}
  if not noise:
    return sorted(true)
  kept = {t for t in sorted(true) if rng.random() >= noise}
  wrong = {t for t in (*SHAPES, *COLORS) if t not in true and rng.random() < noise / 3}
  if not kept | wrong:  # a tagger finds something in every scene; [] would read as "never tagged"
    kept = {sorted(true)[rng.integers(len(true))]}
  return sorted(kept | wrong)


def vqa_pairs(shapes: Sequence[Shape], rng: np.random.Generator) -> list[tuple[str, str]]:
  """(question, answer): the shape count, one kind's count, one present and one absent
  color+shape (so yes and no are exactly balanced), and color/shape questions where the answer is
  unique."""
  kind_counts = collections.Counter(s.kind for s in shapes)
  color_counts = collections.Counter(s.color for s in shapes)
  present = {(s.color, s.kind) for s in shapes}
  absent = [(c, k) for c in COLORS for k in SHAPES if (c, k) not in present]
  asked_kind = SHAPES[rng.integers(len(SHAPES))]
  yes = sorted(present)[rng.integers(len(present))]
  no = absent[rng.integers(len(absent))]
  pairs = [
    ("How many shapes are there?", NUMBER_WORDS[len(shapes)]),
    (f"How many {asked_kind}s are there?", NUMBER_WORDS[kind_counts[asked_kind]]),
    (f"Is there a {yes[0]} {yes[1]}?", "yes"),
    (f"Is there a {no[0]} {no[1]}?", "no"),
  ]
  unique_kinds = [s for s in shapes if kind_counts[s.kind] == 1]
  if unique_kinds:
    shape = unique_kinds[rng.integers(len(unique_kinds))]
    pairs.append((f"What color is the {shape.kind}?", shape.color))
  unique_colors = [s for s in shapes if color_counts[s.color] == 1]
  if unique_colors:
    shape = unique_colors[rng.integers(len(unique_colors))]
    pairs.append((f"What shape is the {shape.color} object?", shape.kind))
  return pairs


def scene_records(
  scene: Scene, image: str, image_index: int, image_size: int, rng: np.random.Generator, tag_noise: float = 0.0
) -> list[Record]:
  """Every task's records for one image, validated; REC/REG only for shapes whose color+shape is
  unique in the image, so each expression names exactly one box. The image's tags (`tags_of`, with
  `tag_noise`) are the same in all its records."""
  shapes = scene.shapes
  tags = tags_of(shapes, rng, tag_noise)
  common = dict(image=image, tags=tags, width=image_size, height=image_size, source=SOURCE)
  records = [Record("image_level", "caption", answers=caption_answers(shapes), **common)]
  records += [Record("image_level", "vqa", question=q, answers=[a], **common) for q, a in vqa_pairs(shapes, rng)]
  names = collections.Counter(s.name for s in shapes)
  for shape in (s for s in shapes if names[s.name] == 1):
    box = [list(shape.box)]
    records.append(Record("region_level", "rec", expression=f"the {shape.name}", boxes=box, **common))
    records.append(
      Record("region_level", "reg", expression=f"the {shape.name}", boxes=box, answers=[f"the {shape.name}"], **common)
    )
  records.append(
    Record(
      "region_level",
      "grounded_caption",
      answers=grounded_caption_answers(shapes),
      boxes=[list(s.box) for s in shapes],
      **common,
    )
  )
  per_task = collections.Counter()
  for record in records:
    record.id = f"{SOURCE}-{image_index:06d}-{record.task}-{per_task[record.task]}"
    per_task[record.task] += 1
    validate(record)
  return records


def _without_sentinel(text: str) -> list[str]:
  """The pieces SentencePiece itself sees: T5Tokenizer splits the sentinel out before encoding."""
  return [part for part in text.split(SENTINEL) if part.strip()]


def tokenizer_corpus(records: Sequence[Record]) -> list[str]:
  """Every distinct text the pipeline can feed the tokenizers, once: every instruction template,
  the records' questions, expressions, answers (without box placeholders) and tag prompts, and the
  characters of box text. Deduplicated so the handful of templates weigh as much as the thousands
  of near-identical records."""
  corpus = [BOX_CHARACTERS_LINE, REC_ANSWER_PREFIX.strip()]
  for template in (
    *templates.CAPTION_TEMPLATES,
    *templates.VQA_TEMPLATES,
    *templates.REC_TEMPLATES,
    *templates.REG_TEMPLATES,
    *templates.GROUNDED_CAPTION_TEMPLATES,
  ):
    corpus.append(template.format(question="", expr="", boxes="").strip())
  for record in records:
    corpus += [text for text in (record.question, record.expression) if text]
    corpus += [re.sub(rf"\s*{re.escape(BOXES_PLACEHOLDER)}", "", answer) for answer in record.answers]
    corpus += _without_sentinel(templates.tag_prompt(record.tags))
  return list(dict.fromkeys(corpus))


def bert_words(corpus: Sequence[str]) -> list[str]:
  """The lower-cased words of `corpus` (BERT splits punctuation into single characters, which the
  vocab holds anyway)."""
  return sorted({w for text in corpus for w in re.findall(r"[a-z0-9]+", text.lower())})


def _split_counts(records: Sequence[Record], num_images: int) -> dict[str, Any]:
  return {
    "images": num_images,
    "records": len(records),
    "tasks": dict(sorted(collections.Counter(r.task for r in records).items())),
  }


def generate(
  out_dir: str | os.PathLike,
  num_images: int = 2000,
  seed: int = 0,
  image_size: int = 224,
  val_fraction: float = 0.1,
  max_shapes: int = MAX_SHAPES,
  size_range: tuple[float, float] = SIZE_RANGE,
  grid: int = 1,
  tag_noise: float = 0.0,
) -> dict[str, Any]:
  """Writes the dataset under `out_dir`; returns the summary (also in dataset.json, whose file paths
  are relative to `out_dir`; the returned ones are full paths). `max_shapes` and `size_range` set
  how crowded and how small the scenes are; `grid` > 1 puts every box corner on a lattice of that
  many pixels, so a coordinate takes image_size / grid + 1 values; `tag_noise` makes the tags
  imperfect, as a real tagger's are (`tags_of`)."""
  if num_images < 1:
    raise errors.UserError(f"num_images must be >= 1, got {num_images}")
  if not 0.0 <= val_fraction < 1.0:
    raise errors.UserError(f"val_fraction must be in [0, 1), got {val_fraction}")
  if image_size < 32:
    raise errors.UserError(f"image_size must be >= 32 to fit {MAX_SHAPES} shapes, got {image_size}")
  if not 1 <= max_shapes <= len(NUMBER_WORDS) - 1:
    raise errors.UserError(f"max_shapes must be in [1, {len(NUMBER_WORDS) - 1}], got {max_shapes}")
  if grid < 1 or image_size % grid:
    raise errors.UserError(f"grid must be a positive divisor of image_size={image_size}, got {grid}")
  if not 0.0 <= tag_noise < 1.0:
    raise errors.UserError(f"tag_noise must be in [0, 1), got {tag_noise}")
  if not 0.0 < size_range[0] <= size_range[1] < 1.0:
    raise errors.UserError(f"size_range must satisfy 0 < low <= high < 1, got {tuple(size_range)}")
  out = Path(out_dir)
  (out / "images").mkdir(parents=True, exist_ok=True)
  num_val = min(int(round(num_images * val_fraction)), num_images - 1)
  num_train = num_images - num_val
  splits: dict[str, list[Record]] = {"train": [], "val": []}
  for index in range(num_images):
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, image_size, max_shapes, tuple(size_range), grid)
    image = f"images/{index:06d}.png"
    render(scene, image_size).save(out / image, format="PNG", compress_level=1)
    records = scene_records(scene, image, index, image_size, rng, tag_noise)
    splits["train" if index < num_train else "val"] += records
  for name, records in splits.items():
    write_jsonl(records, out / f"{name}.jsonl")

  corpus = tokenizer_corpus(splits["train"] + splits["val"])
  coordinates = coordinate_pieces(image_size)
  spiece = train_t5_sentencepiece(
    corpus, out / "spiece", T5_VOCAB_SIZE + len(coordinates), coordinates, model_type="bpe"
  )
  bert_vocab = write_bert_vocab(bert_words(corpus), out / "bert_vocab.txt")
  t5 = T5Tokenizer(spiece)
  summary = {
    "source": SOURCE,
    "seed": seed,
    "image_size": image_size,
    "num_images": num_images,
    "val_fraction": val_fraction,
    "max_shapes": max_shapes,
    "size_range": list(size_range),
    "grid": grid,
    "tag_noise": tag_noise,
    "splits": {"train": _split_counts(splits["train"], num_train), "val": _split_counts(splits["val"], num_val)},
    # The sizes the tokenizers report, i.e. what the embeddings need (T5's sentinels and the
    # Q-Former's [DEC] included).
    "t5_vocab_size": t5.vocab_size,
    "t5_sentinel_id": t5.sentinel_id(0),
    "bert_vocab_size": BertTokenizer(bert_vocab).vocab_size,
    "files": {
      "images": "images",
      "train": "train.jsonl",
      "val": "val.jsonl",
      "spiece_model": spiece.name,
      "spiece_vocab": "spiece.vocab",
      "bert_vocab": bert_vocab.name,
      "summary": "dataset.json",
    },
  }
  (out / "dataset.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
  return {**summary, "files": {k: str(out / v) for k, v in summary["files"].items()}}


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.data.synthetic", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--out", required=True, metavar="DIR", help="output directory")
  parser.add_argument(
    "--num_images",
    "--num-images",
    type=int,
    default=2000,
    metavar="N",
    help="images in all, the last val_fraction of them for val (default: %(default)s)",
  )
  parser.add_argument("--seed", type=int, default=0, help="image i depends only on (seed, i) (default: %(default)s)")
  parser.add_argument(
    "--image_size",
    "--image-size",
    type=int,
    default=224,
    metavar="PIXELS",
    help="side of the square images (default: %(default)s)",
  )
  parser.add_argument(
    "--val_fraction",
    "--val-fraction",
    type=float,
    default=0.1,
    metavar="F",
    help="fraction of the images in val.jsonl, in [0, 1) (default: %(default)s)",
  )
  parser.add_argument(
    "--max_shapes",
    "--max-shapes",
    type=int,
    default=MAX_SHAPES,
    metavar="N",
    help="at most this many shapes per image (default: %(default)s)",
  )
  parser.add_argument(
    "--size_range",
    "--size-range",
    type=float,
    nargs=2,
    default=SIZE_RANGE,
    metavar=("LOW", "HIGH"),
    help="shape side as a fraction of the image side (default: %(default)s)",
  )
  parser.add_argument(
    "--grid",
    type=int,
    default=1,
    metavar="PIXELS",
    help="box corners on a lattice of this many pixels (default: %(default)s)",
  )
  parser.add_argument(
    "--tag_noise",
    "--tag-noise",
    type=float,
    default=0.0,
    metavar="P",
    help="each true tag missing with probability P, each absent one listed with P/3 (default: %(default)s)",
  )
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: generate_and_report(args))


def generate_and_report(args: argparse.Namespace) -> None:
  """Runs `generate` with the flags and prints one line: where, how long, how much."""
  start = time.perf_counter()
  summary = generate(
    args.out,
    num_images=args.num_images,
    seed=args.seed,
    image_size=args.image_size,
    val_fraction=args.val_fraction,
    max_shapes=args.max_shapes,
    size_range=tuple(args.size_range),
    grid=args.grid,
    tag_noise=args.tag_noise,
  )
  seconds = time.perf_counter() - start
  counts = ", ".join(f"{name}: {s['images']} images / {s['records']} records" for name, s in summary["splits"].items())
  print(
    f"wrote {args.out} in {seconds:.1f}s ({counts}; T5 vocab {summary['t5_vocab_size']}, "
    f"BERT vocab {summary['bert_vocab_size']})"
  )


if __name__ == "__main__":
  sys.exit(main())
