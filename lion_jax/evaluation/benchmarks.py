"""The paper's benchmarks: which metric each uses, how each is asked, and LION's published numbers
(paper Tables 1, 2, 4).

Records come from `lion_jax.data.adapters` (our JSONL); `kind` picks the metric and its answer
processing: caption -> CIDEr (x100, as papers print it) on the raw text, vqa -> VQAv2 soft accuracy
(x100) after VQAv2 answer normalisation, exact_match -> accuracy (x100) after the same
normalisation, rec -> accuracy at IoU >= 0.5 (x100) of the first box in the text, pope -> F1 and
accuracy (x100) of the yes/no read from the text, mmbench -> CircularEval accuracy (x100) of the
option scored highest (evaluation/mmbench.py), visdial -> R@k, MRR, NDCG (x100) of the 100 options
ranked by likelihood (evaluation/visdial.py).

The prompt is part of the benchmark: scores move by points with it. LION publishes no evaluation
prompts, so each benchmark is asked as InstructBLIP's evaluation configs ask it (LAVIS,
`lavis/projects/instructblip/*_flant5xl_eval*.yaml`; BLIP-2's zero-shot configs where InstructBLIP
has none), with their generation lengths, and REC with LION's own notebook prompt. docs/inference.md
lists them; `--config.prompt` overrides one (`{question}` / `{expr}` are filled from the record).
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from lion_jax.data import templates
from lion_jax.errors import UserError
from lion_jax.evaluation import mmbench, visdial


class Prompt(NamedTuple):
  text: str  # `{question}` / `{expr}` are filled from the record
  source: str
  generation: dict  # settings the source evaluates with (max_new_tokens, min_length, length_penalty)


CAPTION = Prompt(
  "A short image caption.",
  "LAVIS instructblip/caption_coco_flant5xl_eval_test.yaml (NoCaps the same)",
  dict(max_new_tokens=80, min_length=10, length_penalty=1.0),
)
OKVQA = Prompt(
  "Question: {question} Short Answer:",
  "LAVIS instructblip/qa_okvqa_flant5xl_eval.yaml",
  dict(max_new_tokens=10, min_length=1, length_penalty=-1.0),
)
SHORT_ANSWER = Prompt(
  "Question: {question} Short answer:",
  "LAVIS blip2/eval/gqa_zeroshot_flant5xl_eval.yaml (InstructBLIP has no GQA, IconQA, VSR or POPE config)",
  dict(max_new_tokens=10, min_length=1, length_penalty=-1.0),
)
REC = Prompt(templates.REC_TEMPLATES[0], "LION's notebook (playground.ipynb)", {})
TRAINING_TEMPLATE = Prompt("", "the task's first training template (lion_jax.data.templates)", {})
MMBENCH = Prompt(mmbench.PROMPT, "the common MMBench prompt (VLMEvalKit, LLaVA); evaluation/mmbench.py", {})
VISDIAL = Prompt(
  visdial.PROMPT, "the caption, then the rounds as LAVIS datasets/visdial_dialogue_datasets.py writes them", {}
)


class Benchmark(NamedTuple):
  kind: str
  paper: dict  # {"LION-4B": number, "LION-12B": number}; REC numbers are the fine-tuning setting
  prompt: Prompt
  fields: dict = {}  # the benchmark's own config fields and defaults


def _rec(paper: dict) -> Benchmark:
  """A REC split: only its `rec` records are asked (the RefCOCO adapters also write REG records)."""
  return Benchmark("rec", paper, REC, dict(tasks=("rec",)))


BENCHMARKS = {
  "coco_caption": Benchmark("caption", {"LION-4B": 138.20, "LION-12B": 139.25}, CAPTION),
  "flickr30k": Benchmark("caption", {"LION-4B": 85.57, "LION-12B": 87.12}, CAPTION),
  "textcaps": Benchmark("caption", {"LION-4B": 104.87, "LION-12B": 108.76}, CAPTION),
  "okvqa": Benchmark("vqa", {"LION-4B": 51.08, "LION-12B": 57.33}, OKVQA),
  "aokvqa": Benchmark("vqa", {"LION-4B": 59.98, "LION-12B": 60.87}, OKVQA),
  "gqa": Benchmark("exact_match", {"LION-4B": 49.50, "LION-12B": 51.56}, SHORT_ANSWER),
  "iconqa": Benchmark("exact_match", {"LION-4B": 54.91, "LION-12B": 54.89}, SHORT_ANSWER),
  "vsr": Benchmark("exact_match", {"LION-4B": 72.96, "LION-12B": 73.77}, SHORT_ANSWER),
  "refcoco_val": _rec({"LION-4B": 89.73, "LION-12B": 89.80}),
  "refcoco_testA": _rec({"LION-4B": 92.29, "LION-12B": 93.02}),
  "refcoco_testB": _rec({"LION-4B": 84.82, "LION-12B": 85.57}),
  "refcoco_plus_val": _rec({"LION-4B": 83.60, "LION-12B": 83.95}),
  "refcoco_plus_testA": _rec({"LION-4B": 88.72, "LION-12B": 89.22}),
  "refcoco_plus_testB": _rec({"LION-4B": 77.34, "LION-12B": 78.06}),
  "refcocog_val": _rec({"LION-4B": 85.69, "LION-12B": 85.52}),
  "refcocog_test": _rec({"LION-4B": 85.63, "LION-12B": 85.74}),
  "pope_random": Benchmark("pope", {"LION": 88.33}, SHORT_ANSWER),  # F1; the paper does not say which LION size
  "pope_popular": Benchmark("pope", {"LION": 85.94}, SHORT_ANSWER),
  "pope_adversarial": Benchmark("pope", {"LION": 84.71}, SHORT_ANSWER),
  # Table 3, MMBench test, LION-12B: overall and the l2-categories (mmbench.PAPER_L2_NAMES).
  "mmbench": Benchmark(
    "mmbench",
    {"LION-12B": 73.4, "LR": 51.7, "AR": 84.1, "RR": 78.4, "FP-S": 74.0, "FP-C": 60.8, "CP": 78.9},
    MMBENCH,
  ),
  # Table 1, VisDial MRR (x100). The 100 options x batch_size rounds go through the decoder at once.
  "visdial": Benchmark(
    "visdial", {"LION-4B": 50.02, "LION-12B": 50.42}, VISDIAL, dict(dense_annotations="", batch_size=2)
  ),
  # The embedded synthetic data (lion_jax.data.synthetic): no paper numbers, asked as trained.
  "synthetic_caption": Benchmark("caption", {}, TRAINING_TEMPLATE),
  "synthetic_vqa": Benchmark("exact_match", {}, TRAINING_TEMPLATE),
  "synthetic_rec": Benchmark("rec", {}, TRAINING_TEMPLATE),
}


def eval_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """Config for one benchmark: set `records` (JSONL) and `image_root` on the command line. `tasks`
  keeps only the records of those tasks (a file holding several, as the synthetic splits do).
  `prompt` ('' = the task's first training template) and the generation lengths default to the
  benchmark's source (module docstring)."""
  if name not in BENCHMARKS:
    raise UserError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
  benchmark = BENCHMARKS[name]
  config = dict(
    name=name,
    kind=benchmark.kind,
    records="",
    image_root="",
    tasks=(),  # a tuple, so that --config.tasks="('vqa',)" can set it
    prompt=benchmark.prompt.text,
    batch_size=16,
    num_beams=5,
    max_new_tokens=256,
    min_length=1,
    repetition_penalty=1.5,
    length_penalty=1.0,
    max_input_len=128,
    max_qformer_len=128,
    limit=0,
    use_tags=True,
    blind=False,  # also score the records blind (evaluation.blind): `<metric>_blind`, <name>_blind_results.json
    tagger="",  # a converted RAM tagger (python -m lion_jax.convert ram): tags the records without tags
    mesh=dict(data=-1, fsdp=1, tensor=1),
    distributed=False,  # jax.distributed.initialize() first (a multi-host evaluation)
  )
  config.update(benchmark.prompt.generation)
  config.update(benchmark.fields)
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
    tasks=(task,),
    num_beams=1,
    repetition_penalty=1.0,
    max_new_tokens=TEXT_LENGTHS["max_target_len"],
    max_input_len=TEXT_LENGTHS["max_input_len"],
    max_qformer_len=TEXT_LENGTHS["max_qformer_len"],
  )
