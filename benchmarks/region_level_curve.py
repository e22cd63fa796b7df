"""How long region-level grounding takes to learn at the demo's size: REC and blind REC against steps
and CPU minutes.

  python -m benchmarks.region_level_curve [--steps 6000] [--eval_every 500] [--eval 64] [--out DIR]

Runs configs/demo.py's tower pretraining (ViT, Q-Former, aggregator and T5 from scratch on both task
levels: where the demo's model learns to localise) for `--steps` steps instead of the demo's 900,
evaluating every `--eval_every` steps REC accuracy at IoU 0.5, its blind twin (each expression asked
with another validation image: what the prompt alone gives) and the region-level image gain of the
validation loss. Each evaluation is one row of benchmarks/results/region_level_curve.jsonl's record,
with the training minutes up to it (the logged step times) and the wall minutes (evaluations too).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from benchmarks.common import record


def curve_config(steps: int, eval_every: int, eval_limit: int):
  from configs import demo

  config = demo.get_config(f"eval={eval_limit}")
  config.stages.pretrain.num_steps = steps
  config.run_stages = "pretrain"
  config.checkpoint_every_steps = eval_every
  for name in list(config.evals):
    if name not in ("synthetic_rec", "validation"):
      del config.evals[name]
  for spec in config.evals.values():
    spec.every_steps = eval_every
  return config


def curve_rows(metrics: dict, log_every: int) -> list[dict]:
  """One row per evaluation: step, training minutes (sum of logged step times), REC, blind REC, gain."""
  step_times = dict(metrics["step_time_s"])
  rows = []
  for step, rec in metrics["eval/synthetic_rec/accuracy"]:
    train_minutes = sum(t * log_every for s, t in step_times.items() if s <= step) / 60
    rows.append(
      {
        "step": step,
        "train_minutes": round(train_minutes, 2),
        "rec": rec,
        "rec_blind": dict(metrics["eval/synthetic_rec/accuracy_blind"])[step],
        "region_image_gain": dict(metrics["eval/validation/region_level/image_gain"])[step],
      }
    )
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--steps", type=int, default=6000, help="pretraining steps (the demo's: 900)")
  parser.add_argument("--eval_every", type=int, default=500, help="steps between evaluations")
  parser.add_argument("--eval", type=int, default=64, help="validation REC expressions per evaluation")
  parser.add_argument("--out", default="/tmp/lion-region-curve", help="work directory")
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  from lion_jax import demo, plot, train

  workdir = Path(args.out)
  config = curve_config(args.steps, args.eval_every, args.eval)
  demo.prepare_synthetic_data(config, workdir)
  start = time.perf_counter()
  train.run(config, workdir)
  wall_minutes = (time.perf_counter() - start) / 60
  rows = curve_rows(plot.read_metrics(workdir / "pretrain"), config.log_every_steps)
  for row in rows:
    print(
      f"step {row['step']:>6d}  {row['train_minutes']:6.1f} train min  REC {row['rec']:5.1f}  "
      f"blind {row['rec_blind']:5.1f}  region image gain {row['region_image_gain']:.3f}"
    )
  record(
    "region_level_curve",
    {"steps": args.steps, "eval_every": args.eval_every, "eval": args.eval, "wall_minutes": wall_minutes, "rows": rows},
  )


if __name__ == "__main__":
  main()
