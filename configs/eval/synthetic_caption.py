"""The embedded synthetic data's caption records, scored as the demo scores them (greedy, the demo's lengths):

  python -m lion_jax.evaluate --config=configs/eval/synthetic_caption.py --checkpoint=EXPORT \
      --config.records=DATA/val.jsonl --config.image_root=DATA --output=OUT

Any set from `python -m lion_jax.data.synthetic` works (the demo's own split is WORKDIR/data).
"""

from lion_jax.evaluation.benchmarks import synthetic_eval_config


def get_config():
  return synthetic_eval_config("caption")
