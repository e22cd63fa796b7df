"""Benchmark VisDial v1.0 (paper Table 1): python -m lion_jax.evaluate --config=configs/eval/visdial.py \
    --checkpoint=DIR --config.records=visdial_1.0_val.json --config.image_root=VisualDialog_val2018 \
    [--config.dense_annotations=visdial_1.0_val_dense_annotations.json] [--output=DIR]

The official JSON and image folder as published; the test split (no gt_index) writes the submission
file instead of scores. Prompt and ranking: lion_jax/evaluation/visdial.py."""

from lion_jax.evaluation.benchmarks import eval_config


def get_config():
  return eval_config("visdial")
