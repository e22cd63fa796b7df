r"""Serve a LION checkpoint over OpenAI's chat-completions API, with a web page at /.

  python -m lion_jax.serve --checkpoint DIR [--tagger RAM_DIR] [--host 127.0.0.1] [--port 8000] \
      [--max_batch 8] [--max_wait_ms 10] [--data -1 --fsdp 1 --tensor 1]

  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model": "lion",
      "messages": [{"role": "user", "content": [{"type": "text", "text": "What is in the image?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,'"$(base64 -w0 photo.png)"'"}}]}]}'

Requests default to LION's settings (beam 5, repetition penalty 1.5); `temperature > 0` samples with
`top_p` (and `seed`). LION's own fields: `num_beams`, `repetition_penalty`, `task` (image_level /
region_level), `tags`; replies add `boxes` (pixels of the image) and `tags`. See docs/inference.md.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from lion_jax import errors, paths, sharding


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    prog="python -m lion_jax.serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  add = parser.add_argument
  add("--checkpoint", required=True, metavar="DIR", help="converted or exported checkpoint directory")
  add("--tagger", metavar="DIR", help="a converted RAM tagger, for requests without tags (default: none)")
  add("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
  add("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
  add("--model_name", default="lion", help="the model id clients ask for (default: %(default)s)")
  add("--max_batch", type=int, default=8, metavar="N", help="most requests per generation (default: %(default)s)")
  add(
    "--max_wait_ms",
    type=float,
    default=10.0,
    metavar="T",
    help="longest a request waits for others to batch with (default: %(default)s)",
  )
  for axis in sharding.MESH_AXES:
    add(
      f"--{axis}",
      type=int,
      default=-1 if axis == "data" else 1,
      metavar="N",
      help=f"devices on the mesh's {axis} axis, -1: the rest, as the evaluate CLI's config.mesh (default: %(default)s)",
    )
  add("--num_beams", type=int, default=5, metavar="N", help="beam width at temperature 0 (default: %(default)s)")
  add("--repetition_penalty", type=float, default=1.5, help="default repetition penalty (default: %(default)s)")
  add(
    "--max_tokens",
    type=int,
    default=256,
    metavar="N",
    help="new tokens per answer: the default and the most a request may ask for (default: %(default)s)",
  )
  add("--max_prompt_tokens", type=int, default=512, metavar="N", help="longest prompt (default: %(default)s)")
  add("--max_image_pixels", type=int, default=40_000_000, metavar="N", help="largest image (default: %(default)s)")
  add("--max_request_mb", type=float, default=32.0, metavar="MB", help="largest request body (default: %(default)s)")
  add("--allow_remote_images", action="store_true", help="fetch http(s) image URLs (default: refused with a 400)")
  add("--examples", metavar="DIR", help="a folder of images the page offers to pick (default: none)")
  args = parser.parse_args(argv)
  return errors.exit_code(lambda: serve(args))


def serve(args: argparse.Namespace) -> None:
  """Checks the flags before the checkpoint takes its time to load, then serves until interrupted."""
  for flag in ("checkpoint", "tagger", "examples"):
    value = getattr(args, flag)
    if value and not paths.as_path(value).is_dir():
      raise errors.MissingFile(f"--{flag}: no such folder: {value}")
  if args.max_batch < 1 or args.max_wait_ms < 0 or args.max_tokens < 1:
    raise errors.UserError("--max_batch and --max_tokens must be >= 1, --max_wait_ms >= 0")
  import uvicorn

  from lion_jax.inference.predictor import Predictor
  from lion_jax.inference.tagger import RamTagger
  from lion_jax.serve.app import build_app
  from lion_jax.serve.batching import Batcher, generate_answers
  from lion_jax.serve.protocol import Limits

  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
  mesh = sharding.make_mesh(args.data, args.fsdp, args.tensor)
  mesh = None if mesh.size == 1 else mesh
  tagger = RamTagger.load(args.tagger, mesh=mesh, batch_size=args.max_batch) if args.tagger else None
  predictor = Predictor.load(
    args.checkpoint,
    mesh=mesh,
    tagger=tagger,
    num_beams=args.num_beams,
    max_new_tokens=args.max_tokens,
    repetition_penalty=args.repetition_penalty,
  )
  limits = Limits(
    model=args.model_name,
    max_tokens=args.max_tokens,
    max_prompt_tokens=args.max_prompt_tokens,
    max_image_pixels=args.max_image_pixels,
    allow_remote_images=args.allow_remote_images,
    num_beams=args.num_beams,
    repetition_penalty=args.repetition_penalty,
    count_tokens=lambda text: len(predictor.t5.encode(text)),
  )
  batcher = Batcher(
    lambda settings, jobs: generate_answers(predictor, settings, jobs), args.max_batch, args.max_wait_ms
  )
  app = build_app(batcher, limits, int(args.max_request_mb * 2**20), Path(args.examples) if args.examples else None)
  print(f"serving {args.checkpoint} as {args.model_name!r} on http://{args.host}:{args.port}", flush=True)
  uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
  sys.exit(main())
