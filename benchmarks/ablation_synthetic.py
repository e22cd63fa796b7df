"""The paper's central claim at the demo's scale: LION's stage-wise recipe with a mixture of adapters
against three ablations, on the embedded synthetic data, several seeds.

  python -m benchmarks.ablation_synthetic [--seeds 0,1,2] [--steps 100] [--eval 128] [--out DIR]

Per seed: one synthetic dataset and one tower-pretraining run (configs/demo.py's `pretrain`), shared
by every variant, then each variant from that export with the same total steps after pretraining:
  lion            stage 1 (image level) -> stage 2 (region level) -> stage 3 (both, two gated adapters)
  one_stage       one stage on the mixed data, layout `all`, a single adapter (no stages, no MoA)
  shared_adapter  the three stages, but one adapter shared by both task levels instead of two
  no_tags         the three stages without the soft prompt, so without tags in the prompt
Scores are the last stage's end-of-stage evaluation (caption CIDEr, VQA and REC accuracy, x100 on
`--eval` validation records each); mean and standard deviation over seeds go to
benchmarks/results/ablation_synthetic.jsonl and are printed as a table.
"""

from __future__ import annotations

import argparse
import logging
import statistics
from pathlib import Path

from benchmarks.common import record

VARIANTS = ("lion", "one_stage", "shared_adapter", "no_tags")


def variant_config(name: str, seed: int, steps: int, eval_limit: int):
  """configs/demo.py, changed only where the variant differs from LION's recipe."""
  from configs import demo
  from lion_jax import run_config

  config = demo.get_config(f"steps={steps},eval={eval_limit}")
  config.seed = seed
  stages = config.stages
  if name == "one_stage":
    total = sum(stages[s].num_steps for s in ("stage1", "stage2", "stage3"))
    config.stages.joint = run_config.stage("all", dict(stages.stage3.mixture), total, adapters="single", export=True)
    config.run_stages = "joint"
  else:
    config.run_stages = "stage1,stage2,stage3"
    for stage in ("stage1", "stage2", "stage3"):
      if name == "shared_adapter":
        stages[stage].adapters = "single"
      elif name == "no_tags":
        stages[stage].update(soft_prompt=False, tags=False)
      elif name != "lion":
        raise ValueError(f"unknown variant {name!r}; expected one of {VARIANTS}")
  return config


def last_scores(workdir: Path, config) -> dict[str, float]:
  from lion_jax import demo

  return demo.stage_table(config, workdir)[demo.run_stage_names(config)[-1]]


def run_seed(seed: int, variants, steps: int, eval_limit: int, out: Path) -> dict[str, dict[str, float]]:
  from lion_jax import demo, train

  pretrain_dir = out / f"seed{seed}" / "pretrain_run"
  config = variant_config("lion", seed, steps, eval_limit)
  config.run_stages = "pretrain"
  demo.prepare_synthetic_data(config, pretrain_dir)
  train.run(config, pretrain_dir)
  scores = {}
  for name in variants:
    workdir = out / f"seed{seed}" / name
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "data").exists():
      (workdir / "data").symlink_to(pretrain_dir / "data")
    config = variant_config(name, seed, steps, eval_limit)
    config.pretrained = str(pretrain_dir / "pretrain" / config.export_dir_name)
    demo.prepare_synthetic_data(config, workdir)
    train.run(config, workdir)
    scores[name] = last_scores(workdir, config)
    print(f"seed {seed} {name}: {scores[name]}", flush=True)
  return scores


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (data, init and order)")
  parser.add_argument("--steps", type=int, default=100, help="configs/demo.py's `steps` (scales every stage)")
  parser.add_argument("--eval", type=int, default=128, help="validation records per metric")
  parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {VARIANTS}")
  parser.add_argument("--out", default="/tmp/lion-ablation", help="work directory (one per seed and variant)")
  args = parser.parse_args()
  logging.getLogger().setLevel(logging.WARNING)
  seeds = [int(s) for s in args.seeds.split(",")]
  variants = [v for v in args.variants.split(",") if v]
  per_seed = {seed: run_seed(seed, variants, args.steps, args.eval, Path(args.out)) for seed in seeds}
  summary = {}
  for name in variants:
    metrics = per_seed[seeds[0]][name].keys()
    values = {m: [per_seed[s][name][m] for s in seeds] for m in metrics}
    summary[name] = {
      m: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
      for m, v in values.items()
    }
    print(f"{name:<16s}" + "".join(f"  {m} {s['mean']:6.2f} ± {s['std']:5.2f}" for m, s in summary[name].items()))
  record("ablation_synthetic", {"seeds": seeds, "steps": args.steps, "eval": args.eval, "variants": summary})


if __name__ == "__main__":
  main()
