"""The paper's benchmarks: which metric each uses and LION's published numbers (paper Tables 1, 2, 4).

Records come from `lion_jax.data.adapters` (our JSONL); `kind` picks the metric:
caption -> CIDEr (x100, as papers print it), vqa -> VQAv2 soft accuracy (x100), exact_match -> accuracy
(x100), rec -> accuracy at IoU >= 0.5 (x100), pope -> F1 and accuracy (x100).
"""

from __future__ import annotations

import ml_collections

from lion_jax.errors import UserError

# name: (kind, {"LION-4B": number, "LION-12B": number}); REC numbers are the fine-tuning setting.
BENCHMARKS = {
  "coco_caption": ("caption", {"LION-4B": 138.20, "LION-12B": 139.25}),
  "flickr30k": ("caption", {"LION-4B": 85.57, "LION-12B": 87.12}),
  "textcaps": ("caption", {"LION-4B": 104.87, "LION-12B": 108.76}),
  "okvqa": ("vqa", {"LION-4B": 51.08, "LION-12B": 57.33}),
  "aokvqa": ("vqa", {"LION-4B": 59.98, "LION-12B": 60.87}),
  "gqa": ("exact_match", {"LION-4B": 49.50, "LION-12B": 51.56}),
  "iconqa": ("exact_match", {"LION-4B": 54.91, "LION-12B": 54.89}),
  "vsr": ("exact_match", {"LION-4B": 72.96, "LION-12B": 73.77}),
  "refcoco_val": ("rec", {"LION-4B": 89.73, "LION-12B": 89.80}),
  "refcoco_testA": ("rec", {"LION-4B": 92.29, "LION-12B": 93.02}),
  "refcoco_testB": ("rec", {"LION-4B": 84.82, "LION-12B": 85.57}),
  "refcoco_plus_val": ("rec", {"LION-4B": 83.60, "LION-12B": 83.95}),
  "refcoco_plus_testA": ("rec", {"LION-4B": 88.72, "LION-12B": 89.22}),
  "refcoco_plus_testB": ("rec", {"LION-4B": 77.34, "LION-12B": 78.06}),
  "refcocog_val": ("rec", {"LION-4B": 85.69, "LION-12B": 85.52}),
  "refcocog_test": ("rec", {"LION-4B": 85.63, "LION-12B": 85.74}),
  "pope_random": ("pope", {"LION": 88.33}),  # F1; the paper does not say which LION size
  "pope_popular": ("pope", {"LION": 85.94}),
  "pope_adversarial": ("pope", {"LION": 84.71}),
  # The embedded synthetic data (lion_jax.data.synthetic): no paper numbers.
  "synthetic_caption": ("caption", {}),
  "synthetic_vqa": ("exact_match", {}),
  "synthetic_rec": ("rec", {}),
}


def eval_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """Config for one benchmark: set `records` (JSONL) and `image_root` on the command line. `tasks`
  keeps only the records of those tasks (a file holding several, as the synthetic splits do)."""
  if name not in BENCHMARKS:
    raise UserError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  config = dict(
    name=name,
    kind=BENCHMARKS[name][0],
    records="",
    image_root="",
    tasks=[],
    batch_size=16,
    num_beams=5,
    max_new_tokens=256,
    repetition_penalty=1.5,
    length_penalty=1.0,
    max_input_len=128,
    max_qformer_len=128,
    limit=0,
    use_tags=True,
    mesh=dict(data=-1, fsdp=1, tensor=1),
  )
  unknown = sorted(set(overrides) - set(config))
  if unknown:
    raise UserError(f"eval_config({name!r}): unknown fields {unknown}")
  config.update(overrides)
  return ml_collections.ConfigDict(config)


def synthetic_eval_config(task: str) -> ml_collections.ConfigDict:
  """configs/eval/synthetic_<task>.py: the demo's evaluator settings (configs/demo.py): greedy search,
  no repetition penalty (box text repeats digits), the synthetic texts' lengths, that task's records."""
  from lion_jax.data.synthetic import TEXT_LENGTHS

  return eval_config(
    f"synthetic_{task}",
    tasks=[task],
    num_beams=1,
    repetition_penalty=1.0,
    max_new_tokens=TEXT_LENGTHS["max_target_len"],
    max_input_len=TEXT_LENGTHS["max_input_len"],
    max_qformer_len=TEXT_LENGTHS["max_qformer_len"],
  )
