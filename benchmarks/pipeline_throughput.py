"""Input-pipeline throughput (examples/s) on 224x224 synthetic images, with 0, 1 and 2 worker processes.

  python benchmarks/pipeline_throughput.py [--num_images 400] [--batch 16] [--batches 40] [--out FILE]

Generates the synthetic dataset once into a temp dir, then times `--batches` batches per setting
after a warm-up of 3 batches (worker start-up excluded). Appends one JSON line per setting to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from absl import flags

from lion_jax.data import pipeline, synthetic


def config_for(root: Path, num_workers: int):
  c = pipeline.default_config()
  c.sources = {
    "image": dict(records=str(root / "train.jsonl"), image_root=str(root), task_types=["image_level"]),
    "region": dict(records=str(root / "train.jsonl"), image_root=str(root), task_types=["region_level"]),
  }
  c.mixture = {"image": 1.0, "region": 1.0}
  c.update(
    t5_vocab=str(root / "spiece.model"),
    bert_vocab=str(root / "bert_vocab.txt"),
    image_size=224,
    num_workers=num_workers,
  )
  return c


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_images", "--num-images", type=int, default=400, help="synthetic images generated")
  parser.add_argument("--batch", type=int, default=16, help="batch size")
  parser.add_argument("--batches", type=int, default=40, help="batches timed per worker count")
  parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="Grain worker counts to time")
  parser.add_argument(
    "--out",
    default=str(Path(__file__).parent / "results" / "pipeline_throughput.jsonl"),
    help="JSONL file the rows are appended to",
  )
  args = parser.parse_args()
  flags.FLAGS.mark_as_parsed()  # Grain's worker processes read absl flags
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    synthetic.generate(root, num_images=args.num_images, seed=0, image_size=224)
    for workers in args.workers:
      it = pipeline.make_iterator(config_for(root, workers), batch_size=args.batch)
      for _ in range(3):
        next(it)
      start = time.perf_counter()
      for _ in range(args.batches):
        next(it)
      seconds = time.perf_counter() - start
      it.close()
      result = {
        "benchmark": "pipeline_throughput",
        "workers": workers,
        "batch": args.batch,
        "batches": args.batches,
        "image_size": 224,
        "examples_per_s": round(args.batch * args.batches / seconds, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
      }
      print(json.dumps(result))
      Path(args.out).parent.mkdir(parents=True, exist_ok=True)
      with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
  main()
