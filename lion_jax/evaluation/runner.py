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
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from lion_jax import sharding
from lion_jax.data import images, templates
from lion_jax.data.records import BadRecord, Record, load_records
from lion_jax.data.tags import Tagger, fill_missing_tags, missing_tags_warning
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import UserError
from lion_jax.evaluation import benchmarks, blind, metrics, mmbench, visdial
from lion_jax.inference.batch import generate_ids, load_for_evaluation, model_inputs
from lion_jax.inference.tagger import RamTagger

log = logging.getLogger(__name__)


def _prepare(record: Record, image, shown, image_size: int, text_settings: dict):
  """(pixels of `shown`, text, size): the text and size are the record's own `image`'s; `shown` is
  another image in a blind run (evaluation.blind), else the same."""
  text = templates.build_text(record, None, image.width, image.height, **text_settings)
  return images.to_model_input(shown, image_size), text, image.size


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
  mesh: Mesh | None = None,
  rules=sharding.DEFAULT_RULES,
  start: int = 0,
  on_batch: Callable[[int, list[str | None]], None] | None = None,
  progress: bool = True,
  image_partners: Sequence[int] | None = None,
  dropped_ids: dict[int, int] | None = None,
  **generate_settings,
) -> list[str | None]:
  """Generated text per record (None for a record whose image cannot be read; counted and logged).

  T5 prompts are padded to `max_input_len` (the training limit, one compiled shape), a batch holding a
  longer one to its bucketed length: whole, never truncated. A model with a soft prompt always gets
  the tag prompt; `tagger` (image -> tags) fills it for records without tags. `prompt` replaces the
  tasks' first templates (templates.build_text).

  With `mesh` (the params sharded on it: `load_for_evaluation(checkpoint, mesh)`), each batch is
  split over the mesh's batch axes: every process prepares the whole batch (the same on all), its
  devices predict their rows, and every process gets all the outputs (a `batch_size` the batch axes
  do not divide is padded up to a multiple with repeated rows, which are dropped). `start` skips the records
  before it (a resumed evaluation; their outputs stay None); `on_batch(first, outputs)` is called
  after each batch, e.g. to write the predictions as they come. `image_partners` (a blind run:
  `blind.partners(records)`) shows record i the pixels of record `image_partners[i]`; its text and
  tags stay its own (a tagger tags its own image). Generation never emits the model's padding rows
  (ids the tokenizer lacks); any such id is dropped from the text, counted in `dropped_ids` (record
  index -> count, where non-zero) and logged."""
  image_root = Path(image_root)
  soft_prompt = bool(config.use_soft_prompt)
  without_tags = sum(not r.tags for r in records)
  if soft_prompt and use_tags and tagger is None and without_tags:
    log.warning(missing_tags_warning(without_tags, len(records)))
  split = 1 if mesh is None else sharding.batch_axes_size(mesh, rules)
  rows = -(-batch_size // split) * split  # records per batch, padded to split evenly over the mesh
  text_settings = dict(soft_prompt=soft_prompt, use_tags=use_tags, prompt=prompt)
  max_qformer_len = min(max_qformer_len, config.qformer.max_positions)  # the model's position table
  outputs: list[str | None] = [None] * len(records)
  bar = None
  if progress and jax.process_index() == 0:
    from tqdm import tqdm

    bar = tqdm(total=len(records), initial=start, desc="evaluating", unit="example")
  for first in range(start, len(records), batch_size):
    chunk = list(range(first, min(first + batch_size, len(records))))
    decoded, shown, kept = [], [], []
    for i in chunk:
      try:
        own = images.decode_image(records[i].image_source(image_root))
        partner = records[i if image_partners is None else image_partners[i]]
        shown.append(own if partner is records[i] else images.decode_image(partner.image_source(image_root)))
        decoded.append(own)
        kept.append(i)
      except BadRecord as e:
        log.warning("skipping record %d (%s): %s", i, records[i].image, e)
    tags = fill_missing_tags([records[i].tags or None for i in kept], decoded, tagger)
    tagged = [dataclasses.replace(records[i], tags=t) for i, t in zip(kept, tags)]
    prepared = [
      _prepare(r, image, pixels, config.vit.image_size, text_settings)
      for r, image, pixels in zip(tagged, decoded, shown)
    ]
    if kept:
      batch = model_inputs(
        t5,
        bert,
        [p[0] for p in prepared],
        [p[1].t5_input for p in prepared],
        [p[1].instruction for p in prepared],
        [records[i].task_id for i in kept],
        batch_size=rows,
        max_input_len=max_input_len,
        max_qformer_len=max_qformer_len,
      )
      settings = {**generate_settings, "vocab_size": t5.vocab_size}
      for row, i in zip(generate_ids(config, params, batch, mesh, rules, settings)[: len(kept)], kept):
        outputs[i], dropped = t5.decode_counting(row.tolist())
        if dropped:
          log.warning("record %d: %d generated ids outside the T5 vocabulary dropped", i, dropped)
          if dropped_ids is not None:
            dropped_ids[i] = dropped
    if on_batch is not None:
      on_batch(first, outputs[first : first + len(chunk)])
    if bar is not None:
      bar.update(len(chunk))
  if bar is not None:
    bar.close()
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
  return write_report(directory, name, [_prediction_line(r, p) for r, p in zip(records, predictions)], scores)


def write_report(directory: str | Path, name: str, lines: Sequence[dict], scores: dict[str, float]) -> Path:
  """`<name>_predictions.jsonl` (one line per asked item) and `<name>_results.json`; the latter's path."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / f"{name}_predictions.jsonl", "w", encoding="utf-8") as f:
    f.writelines(json.dumps(line) + "\n" for line in lines)
  return write_scores(directory, name, scores)


def write_scores(directory: str | Path, name: str, scores: dict[str, float]) -> Path:
  path = Path(directory) / f"{name}_results.json"
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
  (or the RAM tagger directory `config.tagger`, loaded onto the same mesh) tags the images of records
  without tags, a batch at a time. MMBench and VisDial read their original files
  (`evaluation.mmbench`, `evaluation.visdial`). Returns the scores on process 0 ({} on the others).

  Runs on `config.mesh` (all devices of all processes by default): the parameters are restored onto
  their shardings, the batches split over the batch axes. The predictions are written as they come
  (`<name>_predictions.partial.jsonl`, by process 0); the same command after an interruption resumes
  after the last written batch, and the file becomes `<name>_predictions.jsonl` at the end."""
  if config.get("blind") and config.kind in ("mmbench", "visdial"):
    raise UserError(
      f"--config.blind: {config.name} ranks given options per question; blind runs score generated answers"
    )
  if config.kind == "mmbench":
    return run_mmbench(config, checkpoint, output)
  if config.kind == "visdial":
    return run_visdial(config, checkpoint, output)
  if not config.records or not config.image_root:
    raise UserError(f"set --config.records and --config.image_root for {config.name}")
  mesh = sharding.make_mesh(**config.mesh)
  model_config, params, t5, bert = load_for_evaluation(checkpoint, mesh)
  if tagger is None and config.get("tagger"):
    tagger = RamTagger.load(config.tagger, mesh, batch_size=config.batch_size)
  records, _ = load_records(config.records)
  if config.get("tasks"):
    records = [r for r in records if r.task in config.tasks]
  if config.limit:
    records = records[: config.limit]
  directory = Path(output or checkpoint)
  partners = blind.partners(records) if config.get("blind") else None  # a set it cannot derange fails first
  loaded = (model_config, params, t5, bert, mesh, tagger)
  scores = _predict_and_score(config, checkpoint, directory, config.name, records, loaded, None)
  if partners is not None:
    name = config.name + blind.SUFFIX
    blind_scores = _predict_and_score(config, checkpoint, directory, name, records, loaded, partners)
    if jax.process_index() == 0:  # the true run's results file holds both, as the in-training evaluators report
      scores = {**scores, **blind.suffixed(blind_scores)}
      write_scores(directory, config.name, scores)
      print(format_table({config.name: scores}))
  return scores


def _predict_and_score(config, checkpoint, directory: Path, name: str, records, loaded, partners) -> dict[str, float]:
  """One resumable prediction pass over `records` (blind with `partners`), reported under `name`."""
  model_config, params, t5, bert, mesh, tagger = loaded
  partial = PartialPredictions(directory, name, fingerprint(config, checkpoint), records)
  done = partial.resume()
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
    mesh=mesh,
    start=len(done),
    on_batch=partial.append,
    image_partners=partners,
    dropped_ids=partial.dropped_ids,
    num_beams=config.num_beams,
    max_new_tokens=config.max_new_tokens,
    min_length=config.min_length,
    repetition_penalty=config.repetition_penalty,
    length_penalty=config.length_penalty,
  )
  if jax.process_index() != 0:
    return {}  # only process 0 holds the predictions of a resumed run's first batches
  predictions[: len(done)] = done
  scores = score(config.kind, records, predictions)
  if partial.dropped_ids:  # generated ids the tokenizer lacks, dropped from the predictions
    scores["dropped_token_ids"] = sum(partial.dropped_ids.values())
  paper = benchmarks.BENCHMARKS[config.name].paper if partners is None else {}
  write_results(directory, name, records, predictions, scores)
  print(format_table({name: scores}, {name: paper}))
  partial.finish()  # after the full predictions are written
  return scores


def fingerprint(config, checkpoint) -> dict:
  """What an interrupted evaluation must share with the run that resumes it."""
  settings = {k: v for k, v in config.to_dict().items() if k not in ("mesh", "distributed", "batch_size")}
  return {"checkpoint": str(Path(checkpoint).resolve()), "config": settings}


class PartialPredictions:
  """`<name>_predictions.partial.jsonl` (one line per record, in record order, whole batches) and its
  `.json` sidecar (the fingerprint): written by process 0 as the evaluation goes, read to resume."""

  def __init__(self, directory: Path, name: str, fingerprint: dict, records: Sequence[Record]):
    self.path = directory / f"{name}_predictions.partial.jsonl"
    self.meta = directory / f"{name}_predictions.partial.json"
    self.fingerprint, self.records = fingerprint, records
    self.writer = jax.process_index() == 0
    self.dropped_ids: dict[int, int] = {}  # record index -> ids its text lost (predict_records), kept per line

  def resume(self) -> list[str | None]:
    """The predictions already written (empty for a fresh start), the same on every process."""
    done: list[str | None] = []
    if self.writer and self.path.exists():
      saved = json.loads(self.meta.read_text()) if self.meta.exists() else None
      if saved != json.loads(json.dumps(self.fingerprint)):
        raise UserError(
          f"{self.path} is an interrupted evaluation of another checkpoint or config ({self.meta}); "
          "delete both files to start over, or resume with the same settings"
        )
      for i, line in enumerate(self.path.read_text(encoding="utf-8").splitlines()):
        entry = json.loads(line)
        if i >= len(self.records) or (entry["id"], entry["image"]) != (self.records[i].id, self.records[i].image):
          raise UserError(f"{self.path}:{i + 1} is not record {i} of the records file: delete it to start over")
        done.append(entry["prediction"])
        if entry.get("dropped_ids"):
          self.dropped_ids[i] = entry["dropped_ids"]
      log.info("resuming %s after %d of %d records", self.path, len(done), len(self.records))
    if jax.process_count() > 1:  # process 0 read the file; the others learn how far it got
      count = int(multihost_utils.broadcast_one_to_all(np.int32(len(done))))
      done = done if self.writer else [None] * count
    return done

  def append(self, first: int, outputs: list[str | None]) -> None:
    if not self.writer:
      return
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if first == 0 or not self.path.exists():
      self.meta.write_text(json.dumps(self.fingerprint))
      self.path.write_text("")
    with open(self.path, "a", encoding="utf-8") as f:
      for i, prediction in enumerate(outputs, first):
        line = _prediction_line(self.records[i], prediction)
        f.write(json.dumps({**line, "dropped_ids": self.dropped_ids[i]} if i in self.dropped_ids else line) + "\n")

  def finish(self) -> None:
    self.path.unlink(missing_ok=True)
    self.meta.unlink(missing_ok=True)


def _prediction_line(record: Record, prediction: str | None) -> dict:
  return {"id": record.id, "image": record.image, "prediction": prediction, "answers": record.answers}


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
  lines = [{"index": q.index, "prediction": mmbench.letter(c), "answer": q.answer} for q, c in zip(questions, chosen)]
  return _report(directory, config.name, lines, mmbench.scores(questions, chosen))


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
  option_scores = visdial.round_scores(
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
  gt_ranks = metrics.ground_truth_ranks(option_scores, [r.gt_index for r in rounds])
  lines = [{"image_id": r.image_id, "round_id": r.round_id, "gt_rank": int(k)} for r, k in zip(rounds, gt_ranks)]
  return _report(directory, config.name, lines, visdial.scores(rounds, option_scores, dense))


def _report(directory: Path, name: str, lines: list[dict], scores: dict[str, float]) -> dict[str, float]:
  """The report files (`write_report`) and the printed table."""
  write_report(directory, name, lines, scores)
  print(format_table({name: scores}, {name: benchmarks.BENCHMARKS[name].paper}))
  return scores
