"""Batched evaluation: records -> generated answers -> the benchmark's metric.

Every record is prompted with the benchmark's prompt (`config.prompt`, evaluation/benchmarks.py) or
else the first (fixed) template of its task, images are preprocessed
without augmentation, and generation uses the given beam settings. The T5 prompt is never cut (the
official `generate` does not truncate it); the Q-Former text is, as there. Predictions are written
next to the scores, so a number can always be traced back to the answers that made it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np

from lion_jax.convert.converted import load_converted, tokenizer_files
from lion_jax.data import images, templates
from lion_jax.data.records import BadRecord, Record, load_records
from lion_jax.data.tags import Tagger, missing_tags_warning
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer, bucketed_length, pad_batch
from lion_jax.errors import MissingFile, UserError
from lion_jax.evaluation import benchmarks, metrics, mmbench, visdial
from lion_jax.inference.generate import generate

log = logging.getLogger(__name__)


def _prepare(record: Record, image_root: Path, image_size: int, text_settings: dict, tagger):
  image = images.decode_image(record.image_source(image_root))
  if tagger is not None and not record.tags:
    record = dataclasses.replace(record, tags=list(tagger(image)))
  text = templates.build_text(record, None, image.width, image.height, **text_settings)
  return images.to_model_input(image, image_size), text, image.size


def model_inputs(
  t5: T5Tokenizer,
  bert: BertTokenizer,
  pixels: Sequence[np.ndarray],
  t5_inputs: Sequence[str],
  qformer_texts: Sequence[str],
  task_ids: Sequence[int],
  *,
  batch_size: int,
  max_input_len: int,
  max_qformer_len: int,
) -> dict[str, np.ndarray]:
  """One evaluation batch of the model's inputs, padded to `batch_size` rows by repeating the first
  (the last batch keeps the compiled shape; callers drop the extra rows). T5 inputs are padded to
  `max_input_len`, a longer one to its bucketed length, never cut; the Q-Former text is cut from the
  left at `max_qformer_len`, as in training."""
  pad = batch_size - len(pixels)
  repeat = lambda rows: list(rows) + [rows[0]] * pad
  rows = [t5.encode(text) for text in repeat(t5_inputs)]
  input_ids, input_mask = pad_batch(rows, bucketed_length(max(map(len, rows)), max_input_len), t5.pad_id)
  q_ids, q_mask = bert.encode_batch(repeat(qformer_texts), max_length=max_qformer_len, truncation_side="left")
  return dict(
    image=np.stack(repeat(pixels)),
    qformer_ids=q_ids,
    qformer_mask=q_mask,
    input_ids=input_ids,
    input_mask=input_mask,
    task=np.array(repeat(task_ids), np.int32),
  )


def predict_records(
  config,
  params,
  t5: T5Tokenizer,
  bert: BertTokenizer,
  records: Sequence[Record],
  image_root: str | Path,
  *,
  batch_size: int = 16,
  max_input_len: int = 128,
  max_qformer_len: int = 128,
  use_tags: bool = True,
  tagger: Tagger | None = None,
  prompt: str = "",
  progress: bool = True,
  **generate_settings,
) -> list[str | None]:
  """Generated text per record (None for a record whose image cannot be read; counted and logged).

  T5 prompts are padded to `max_input_len` (the training limit, one compiled shape), a batch holding a
  longer one to its bucketed length: whole, never truncated. A model with a soft prompt always gets
  the tag prompt; `tagger` (image -> tags) fills it for records without tags. `prompt` replaces the
  tasks' first templates (templates.build_text)."""
  image_root = Path(image_root)
  soft_prompt = bool(config.use_soft_prompt)
  without_tags = sum(not r.tags for r in records)
  if soft_prompt and use_tags and tagger is None and without_tags:
    log.warning(missing_tags_warning(without_tags, len(records)))
  text_settings = dict(soft_prompt=soft_prompt, use_tags=use_tags, prompt=prompt)
  max_qformer_len = min(max_qformer_len, config.qformer.max_positions)  # the model's position table
  outputs: list[str | None] = [None] * len(records)
  iterator = range(0, len(records), batch_size)
  if progress:
    from tqdm import tqdm

    iterator = tqdm(iterator, desc="evaluating", unit="batch")
  for start in iterator:
    chunk = list(range(start, min(start + batch_size, len(records))))
    prepared, kept = [], []
    for i in chunk:
      try:
        prepared.append(_prepare(records[i], image_root, config.vit.image_size, text_settings, tagger))
        kept.append(i)
      except BadRecord as e:
        log.warning("skipping record %d (%s): %s", i, records[i].image, e)
    if not kept:
      continue
    n = len(kept)
    batch = model_inputs(
      t5,
      bert,
      [p[0] for p in prepared],
      [p[1].t5_input for p in prepared],
      [p[1].instruction for p in prepared],
      [records[i].task_id for i in kept],
      batch_size=batch_size,
      max_input_len=max_input_len,
      max_qformer_len=max_qformer_len,
    )
    ids = np.asarray(jax.device_get(generate(config, params, batch, **generate_settings)))
    for row, i in zip(ids[:n], kept):
      outputs[i] = t5.decode(row.tolist())
  return outputs


def score(kind: str, records: Sequence[Record], predictions: Sequence[str | None]) -> dict[str, float]:
  """The benchmark metric(s), x100 as the paper prints them; unreadable records count as wrong."""
  preds = [p or "" for p in predictions]
  if kind == "caption":
    refs = {str(i): r.answers for i, r in enumerate(records)}
    hyps = {str(i): p for i, p in enumerate(preds)}
    return {"CIDEr": 100 * metrics.cider(refs, hyps), "BLEU-4": 100 * metrics.bleu4(refs, hyps)}
  if kind == "vqa":
    return {"accuracy": 100 * metrics.vqa_accuracy(preds, [r.answers for r in records])}
  if kind == "exact_match":
    return {"accuracy": 100 * metrics.exact_match_accuracy(preds, [r.answers for r in records])}
  if kind == "rec":
    unsized = [r.id or r.image for r in records if not (r.width and r.height)]
    if unsized:
      raise UserError(f"REC records need width and height to normalise their boxes; missing in {unsized[:5]}")
    gts = [[b[0] / r.width, b[1] / r.height, b[2] / r.width, b[3] / r.height] for r in records for b in r.boxes[:1]]
    return {"accuracy": 100 * metrics.rec_accuracy(preds, gts)}
  if kind == "pope":
    scores = metrics.pope_scores(preds, [r.answers[0].strip().lower() for r in records])
    return {k: (100 * v if k != "yes_ratio" else v) for k, v in scores.items()}
  raise ValueError(f"unknown benchmark kind {kind!r}")


def write_results(directory: str | Path, name: str, records: Sequence[Record], predictions, scores) -> Path:
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / f"{name}_predictions.jsonl", "w", encoding="utf-8") as f:
    for r, p in zip(records, predictions):
      f.write(json.dumps({"id": r.id, "image": r.image, "prediction": p, "answers": r.answers}) + "\n")
  path = directory / f"{name}_results.json"
  path.write_text(json.dumps(scores, indent=2))
  return path


def format_table(rows: dict[str, dict[str, float]], paper: dict[str, dict[str, float]] | None = None) -> str:
  """A plain-text table: one row per benchmark, its scores, and the paper's LION numbers when known."""
  lines = []
  for name, scores in rows.items():
    ours = ", ".join(f"{k} {v:.2f}" for k, v in scores.items() if k != "yes_ratio")
    theirs = ", ".join(f"{k} {v:.2f}" for k, v in (paper or {}).get(name, {}).items())
    lines.append(f"{name:<20s} {ours}" + (f"   | paper: {theirs}" if theirs else ""))
  return "\n".join(lines)


def run_benchmark(
  config, checkpoint: str | Path, output: str | Path | None = None, tagger: Tagger | None = None
) -> dict[str, float]:
  """One benchmark config (lion_jax.evaluation.benchmarks.eval_config) on a checkpoint directory:
  predictions and scores written to `output` (default: the checkpoint), a table printed. `tagger`
  tags the images of records without tags. MMBench and VisDial read their original files
  (`evaluation.mmbench`, `evaluation.visdial`)."""
  if config.kind == "mmbench":
    return run_mmbench(config, checkpoint, output)
  if config.kind == "visdial":
    return run_visdial(config, checkpoint, output)
  if not config.records or not config.image_root:
    raise UserError(f"set --config.records and --config.image_root for {config.name}")
  model_config, params, t5, bert = load_for_evaluation(checkpoint)
  records, _ = load_records(config.records)
  if config.get("tasks"):
    records = [r for r in records if r.task in config.tasks]
  if config.limit:
    records = records[: config.limit]
  predictions = predict_records(
    model_config,
    params,
    t5,
    bert,
    records,
    config.image_root,
    batch_size=config.batch_size,
    max_input_len=config.max_input_len,
    max_qformer_len=config.max_qformer_len,
    use_tags=config.use_tags,
    tagger=tagger,
    prompt=config.prompt,
    num_beams=config.num_beams,
    max_new_tokens=config.max_new_tokens,
    min_length=config.min_length,
    repetition_penalty=config.repetition_penalty,
    length_penalty=config.length_penalty,
  )
  scores = score(config.kind, records, predictions)
  write_results(output or checkpoint, config.name, records, predictions, scores)
  paper = {config.name: benchmarks.BENCHMARKS[config.name].paper}
  print(format_table({config.name: scores}, paper))
  return scores


def load_for_evaluation(checkpoint: str | Path) -> tuple:
  """(model config, params, T5 tokenizer, BERT tokenizer) of a converted checkpoint directory."""
  model_config, params = load_converted(checkpoint)
  files = tokenizer_files(checkpoint)
  if set(files) != {"t5", "bert"}:
    raise MissingFile(f"{checkpoint}/tokenizer must hold spiece.model and bert_vocab.txt")
  return model_config, params, T5Tokenizer(files["t5"]), BertTokenizer(files["bert"])


def run_mmbench(config, checkpoint: str | Path, output: str | Path | None = None) -> dict[str, float]:
  """MMBench from its TSV (`config.records`): circular scores, or the leaderboard file for a split
  without answers (then the scores are empty)."""
  if not config.records:
    raise UserError("set --config.records to the MMBench TSV (e.g. mmbench_dev_en.tsv)")
  questions = mmbench.circular_variants(mmbench.read_tsv(config.records))
  if config.limit:
    groups = sorted({q.group for q in questions})[: config.limit]
    questions = [q for q in questions if q.group in set(groups)]
  model_config, params, t5, bert = load_for_evaluation(checkpoint)
  chosen = mmbench.choose(
    model_config,
    params,
    t5,
    bert,
    questions,
    batch_size=config.batch_size,
    max_input_len=config.max_input_len,
    max_qformer_len=config.max_qformer_len,
    template=config.prompt,
  )
  directory = Path(output or checkpoint)
  if any(q.answer is None for q in questions):
    path = mmbench.write_submission(directory / f"{config.name}_submission.xlsx", questions, chosen)
    print(f"{config.name}: no answers in {config.records}; wrote the leaderboard file {path}")
    return {}
  scores = mmbench.scores(questions, chosen)
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / f"{config.name}_predictions.jsonl", "w", encoding="utf-8") as f:
    for q, c in zip(questions, chosen):
      f.write(json.dumps({"index": q.index, "prediction": mmbench.LETTERS[c], "answer": q.answer}) + "\n")
  (directory / f"{config.name}_results.json").write_text(json.dumps(scores, indent=2))
  print(format_table({config.name: scores}, {config.name: benchmarks.BENCHMARKS[config.name].paper}))
  return scores


def run_visdial(config, checkpoint: str | Path, output: str | Path | None = None) -> dict[str, float]:
  """VisDial v1.0 from its JSON (`config.records`) and image folder: scores, or the submission file
  for a split without ground truth (then the scores are empty)."""
  if not config.records or not config.image_root:
    raise UserError("set --config.records (visdial_1.0_val.json) and --config.image_root (its image folder)")
  split, rounds = visdial.read_dialogs(config.records)
  dense = visdial.read_dense_annotations(config.dense_annotations) if config.dense_annotations else None
  if config.limit:
    rounds = rounds[: config.limit]
  model_config, params, t5, bert = load_for_evaluation(checkpoint)
  option_scores = visdial.option_scores(
    model_config,
    params,
    t5,
    bert,
    rounds,
    config.image_root,
    split,
    batch_size=config.batch_size,
    max_input_len=config.max_input_len,
    max_qformer_len=config.max_qformer_len,
    template=config.prompt,
  )
  directory = Path(output or checkpoint)
  if any(r.gt_index is None for r in rounds):
    path = visdial.write_submission(directory / f"{config.name}_submission.json", rounds, option_scores)
    print(f"{config.name}: no gt_index in {config.records}; wrote the submission file {path}")
    return {}
  scores = visdial.scores(rounds, option_scores, dense)
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / f"{config.name}_predictions.jsonl", "w", encoding="utf-8") as f:
    gt_ranks = metrics.ground_truth_ranks(option_scores, [r.gt_index for r in rounds])
    for r, rank in zip(rounds, gt_ranks):
      f.write(json.dumps({"image_id": r.image_id, "round_id": r.round_id, "gt_rank": int(rank)}) + "\n")
  (directory / f"{config.name}_results.json").write_text(json.dumps(scores, indent=2))
  print(format_table({config.name: scores}, {config.name: benchmarks.BENCHMARKS[config.name].paper}))
  return scores
