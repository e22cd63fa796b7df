"""Benchmark refcoco_plus_testA:

  python -m lion_jax.evaluate --config=configs/eval/refcoco_plus_testA.py --checkpoint=DIR \
    --config.records=RECORDS.jsonl --config.image_root=IMAGES"""

from lion_jax.evaluation.benchmarks import eval_config


def get_config():
  return eval_config("refcoco_plus_testA")
