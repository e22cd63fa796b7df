"""Benchmark MMBench (paper Table 3): python -m lion_jax.evaluate --config=configs/eval/mmbench.py \
    --checkpoint=DIR --config.records=mmbench_dev_en.tsv [--output=DIR]

The official TSV as published (base64 images inside, so no image_root); a split without answers
(test) writes the leaderboard's .xlsx instead of scores. CircularEval and the prompt:
lion_jax/evaluation/mmbench.py."""

from lion_jax.evaluation.benchmarks import eval_config


def get_config():
  return eval_config("mmbench")
