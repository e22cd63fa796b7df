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
from lion_jax.evaluation import benchmarks, metrics
from lion_jax.inference.generate import generate

log = logging.getLogger(__name__)


def _prepare(record: Record, image_root: Path, image_size: int, text_settings: dict, tagger):
  image = images.decode_image(record.image_source(image_root))
  if tagger is not None and not record.tags:
    record = dataclasses.replace(record, tags=list(tagger(image)))
  text = templates.build_text(record, None, image.width, image.height, **text_settings)
  return images.to_model_input(image, image_size), text, image.size


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
    pad = batch_size - n  # the last batch is padded to the same shape, then trimmed
    pixels = np.stack([p[0] for p in prepared] + [prepared[0][0]] * pad)
    t5_inputs = [p[1].t5_input for p in prepared] + [prepared[0][1].t5_input] * pad
    questions = [p[1].instruction for p in prepared] + [prepared[0][1].instruction] * pad
    rows = [t5.encode(text) for text in t5_inputs]
    input_ids, input_mask = pad_batch(rows, bucketed_length(max(map(len, rows)), max_input_len), t5.pad_id)
    q_ids, q_mask = bert.encode_batch(questions, max_length=max_qformer_len, truncation_side="left")
    task = np.array([records[i].task_id for i in kept] + [records[kept[0]].task_id] * pad, np.int32)
    batch = dict(
      image=pixels, qformer_ids=q_ids, qformer_mask=q_mask, input_ids=input_ids, input_mask=input_mask, task=task
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
  tags the images of records without tags."""
  if not config.records or not config.image_root:
    raise UserError(f"set --config.records and --config.image_root for {config.name}")
  model_config, params = load_converted(checkpoint)
  files = tokenizer_files(checkpoint)
  if set(files) != {"t5", "bert"}:
    raise MissingFile(f"{checkpoint}/tokenizer must hold spiece.model and bert_vocab.txt")
  records, _ = load_records(config.records)
  if config.get("tasks"):
    records = [r for r in records if r.task in config.tasks]
  if config.limit:
    records = records[: config.limit]
  predictions = predict_records(
    model_config,
    params,
    T5Tokenizer(files["t5"]),
    BertTokenizer(files["bert"]),
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
