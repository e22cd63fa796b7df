"""Benchmark metrics (captioning, VQA, REC, POPE, VisDial, MMBench) reproducing the official scripts."""

from lion_jax.evaluation.metrics import (
  bleu4,
  box_iou,
  cider,
  exact_match_accuracy,
  mean_reciprocal_rank,
  mmbench_circular_accuracy,
  normalize_vqa_answer,
  pope_scores,
  rec_accuracy,
  simple_tokenize,
  vqa_accuracy,
)

__all__ = [
  "bleu4",
  "box_iou",
  "cider",
  "exact_match_accuracy",
  "mean_reciprocal_rank",
  "mmbench_circular_accuracy",
  "normalize_vqa_answer",
  "pope_scores",
  "rec_accuracy",
  "simple_tokenize",
  "vqa_accuracy",
]
