"""The embedded demo's data steps: generate the synthetic dataset before training, report after.

Kept apart from the command line (`lion_jax.main`) so that tests and notebooks can import them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax

from lion_jax import plot, stages
from lion_jax.convert.converted import load_converted
from lion_jax.data import synthetic
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.evaluation import blind, evaluators, runner

log = logging.getLogger(__name__)

# The three scores the demo reports per stage and in results.json, by evaluator name, with their
# table labels; each comes with its blind twin (evaluation.blind) when the evaluator is blind.
HEADLINE = (
  ("synthetic_caption", "CIDEr", "CIDEr"),
  ("synthetic_vqa", "accuracy", "VQA"),
  ("synthetic_rec", "accuracy", "REC"),
)
# The validation loss's image gain per task level (nats per target token): how much the image tells the model.
IMAGE_GAINS = (
  ("validation", "image_level/image_gain", "img_gain"),
  ("validation", "region_level/image_gain", "reg_gain"),
)


def table_columns() -> list[tuple[str, str, str]]:
  """(evaluator, metric, label) of each column of the per-stage table: every headline score, its blind
  twin beside it, then the image gains."""
  columns = []
  for ev, metric, label in HEADLINE:
    columns += [(ev, metric, label), (ev, metric + blind.SUFFIX, "blind")]
  return columns + list(IMAGE_GAINS)


def run_stage_names(config) -> list[str]:
  return [s.strip() for s in config.run_stages.split(",") if s.strip()]


def prepare_synthetic_data(config, workdir: Path) -> None:
  """Generates the synthetic dataset into WORKDIR/data once and points the config at it: sources
  and evaluators without `records` read its train and val splits, the vocabularies are its own, and
  when the run includes the `pretrain` stage the other stages start from its export."""
  data_dir = workdir / "data"
  if jax.process_index() == 0 and not (data_dir / "dataset.json").exists():
    log.info("generating %d synthetic images into %s", config.synthetic.num_images, data_dir)
    synthetic.generate(
      data_dir,
      num_images=config.synthetic.num_images,
      seed=config.seed,
      image_size=config.synthetic.image_size,
      max_shapes=config.synthetic.max_shapes,
      size_range=tuple(config.synthetic.size_range),
      grid=config.synthetic.grid,
      tag_noise=config.synthetic.tag_noise,
    )
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices("synthetic data ready")
  for split, specs in (("train", config.data.sources.values()), ("val", config.evals.values())):
    for spec in specs:
      if not spec.records:
        spec.records, spec.image_root = str(data_dir / f"{split}.jsonl"), str(data_dir)
  config.data.t5_vocab, config.data.bert_vocab = str(data_dir / "spiece.model"), str(data_dir / "bert_vocab.txt")
  t5, bert = T5Tokenizer(config.data.t5_vocab), BertTokenizer(config.data.bert_vocab)
  config.model.t5.vocab_size = -(-t5.vocab_size // 8) * 8  # padded to a multiple of 8
  config.model.soft_prompt_token_id = t5.sentinel_id(0)
  config.model.qformer.vocab_size = bert.vocab_size
  if "pretrain" in run_stage_names(config) and not config.pretrained:
    config.pretrained = str(workdir / "pretrain" / config.export_dir_name)


def stage_table(config, workdir: Path) -> dict[str, dict[str, float]]:
  """{stage: {'synthetic_caption.CIDEr': v, ...}} from each stage's last evaluation row."""
  table = {}
  for name in run_stage_names(config):
    if not (workdir / name / "metrics.jsonl").exists():
      continue
    metrics = plot.read_metrics(workdir / name)
    table[name] = {
      f"{ev}.{metric}": metrics[f"eval/{ev}/{metric}"][-1][1]
      for ev, metric, _ in table_columns()
      if f"eval/{ev}/{metric}" in metrics
    }
  return table


def format_stage_table(table: dict[str, dict[str, float]]) -> str:
  """One row per stage: each score beside its blind twin ('-' where not evaluated), then the image gains."""
  columns = [(f"{ev}.{metric}", label) for ev, metric, label in table_columns()]
  lines = [f"{'stage':<10s}" + "".join(f"{label:>10s}" for _, label in columns)]
  for stage, row in table.items():
    lines.append(f"{stage:<10s}" + "".join(f"{row[c]:>10.2f}" if c in row else f"{'-':>10s}" for c, _ in columns))
  return "\n".join(lines)


def evaluate_export(config, workdir: Path) -> dict:
  """The demo's last step: the final export, reloaded from disk, scored by the same evaluators that
  ran during training (WORKDIR/results.json, predictions under WORKDIR/eval), then the per-stage
  table and WORKDIR/curves.png. Multi-host: every process loads and predicts (each on its own
  devices, so no process waits on another), process 0 writes."""
  last_stage = run_stage_names(config)[-1]
  export = workdir / last_stage / config.export_dir_name
  if not (export / "config.json").exists():
    log.info("%s wrote no export (stages.%s.export is off): nothing to evaluate", last_stage, last_stage)
    return {}
  model_config, params = load_converted(export)
  data_config = stages.data_config(config, last_stage)
  rows = {}
  for name, _, _ in HEADLINE:
    evaluator = evaluators.Evaluator(name, config.evals[name], model_config, data_config, num_steps=0)
    rows[name] = {}
    for suffix, (predictions, scores) in evaluator.scored_passes(params).items():
      rows[name].update(blind.suffixed(scores) if suffix else scores)
      if jax.process_index() == 0:
        runner.write_results(workdir / "eval", name + suffix, evaluator.source.records, predictions, scores)
  # The export's losses and image gains, as the stages logged them.
  if config.evals.get("validation", {}).get("kind") == "loss":
    evaluator = evaluators.Evaluator("validation", config.evals.validation, model_config, data_config, num_steps=0)
    rows["validation"] = evaluator.loss_scalars(params)
  if jax.process_index() != 0:
    return rows
  (workdir / "results.json").write_text(json.dumps(rows, indent=2))
  print(runner.format_table(rows))
  print(format_stage_table(stage_table(config, workdir)))
  print(f"training curves: {plot.plot_run(workdir)}")
  return rows
