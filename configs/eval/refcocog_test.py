"""Benchmark refcocog_test: python -m lion_jax.evaluate --config=configs/eval/refcocog_test.py --checkpoint=DIR \
    --config.records=RECORDS.jsonl --config.image_root=IMAGES"""

from lion_jax.evaluation.benchmarks import eval_config


def get_config():
  return eval_config("refcocog_test")
