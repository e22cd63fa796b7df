"""The Grain input pipeline: per-source record streams, mixed per stage, batched to fixed shapes.

For each source: record indices -> this host's shard -> seeded shuffle (a new order every epoch) ->
repeat -> `prepare` (decode, augment, template, tokenise; a flipped image gets its text mirrored,
"left" <-> "right"). Sources are mixed with the stage's
weights, either example by example (mixed batches, per-example MoA routing) or batch by batch
(task-homogeneous batches, the official routing). Everything up to the batch is a random-access
`MapDataset`, so the iterator state is a position and restoring it replays exactly the same batches;
worker processes (`num_workers`) decode in parallel without changing the order.

A record that fails when prepared (missing or corrupt image, box outside the image, ...) is replaced
by the next record of the same source, and the skip is counted per reason in the batch's `skipped`
field. A text cut to its length limit (T5 input, target, Q-Former text) is flagged in the `truncated`
field and warned about once per source and limit. `CountingIterator` sums both into per-source
counters that travel with the iterator state. `strict=True` raises on the first bad record instead.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
from pathlib import Path
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from lion_jax.data import images, templates, tfds_source
from lion_jax.data.records import TASK_TYPES, BadRecord, Record, load_records
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import UserError

# Reasons a record can be skipped while it is prepared (index = position in `skipped`).
SKIP_REASONS = ("missing_image", "unreadable_image", "box_outside_image", "bad_box", "empty_target")
# Texts cut to a configured length (index = position in `truncated`) -> the config key of the limit.
TRUNCATION_LIMITS = {"input": "max_input_len", "target": "max_target_len", "qformer": "max_qformer_len"}
MAX_CONSECUTIVE_FAILURES = 100

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Source:
  """A named list of records whose images live under `image_root`."""

  name: str
  records: list[Record]
  image_root: Path


def source_is_set(spec: ml_collections.ConfigDict) -> bool:
  """Whether a source spec points at data: a record file, or a TFDS dataset for `format: tfds`."""
  return bool(spec.tfds.name) if spec.get("format") == "tfds" else bool(spec.get("records"))


def load_source(name: str, spec: ml_collections.ConfigDict, strict: bool = False, where: str = "") -> Source:
  """Reads a source spec: `records` (file) and `image_root`, optional `format` ('auto', 'jsonl',
  'lion_json', or 'tfds' with `tfds.{name, data_dir, split, fields, task_type, task}`: a TFDS
  dataset prepared as array_record, read without TensorFlow), and optional `task_types` / `tasks`
  filters (e.g. the region-level part of a mixed file). `where` is the spec's config path for
  messages (default `data.sources.<name>`)."""
  where = where or f"data.sources.{name}"
  if spec.get("format") == "tfds":
    records, what = _tfds_records(name, spec.tfds, f"{where}.tfds"), f"TFDS {spec.tfds.name}"
  else:
    for key in ("records", "image_root"):
      if not spec.get(key):
        raise UserError(f"{where}.{key} is not set")
    records, report = load_records(spec.records, fmt=spec.get("format", "auto"), source=name, strict=strict)
    if report.invalid:
      log.warning("source %s: %d valid records, skipped %s", name, report.valid, dict(report.invalid))
    what = spec.records
  task_types, tasks = spec.get("task_types"), spec.get("tasks")
  records = [r for r in records if (not task_types or r.task_type in task_types) and (not tasks or r.task in tasks)]
  if not records:
    raise UserError(f"{where}: no record of {what} matches task_types={task_types} tasks={tasks}")
  return Source(name, records, Path(spec.get("image_root") or "."))


def _tfds_records(name: str, spec: ml_collections.ConfigDict, where: str) -> list[Record]:
  for key in ("name", "data_dir", "fields", "task_type", "task"):
    if not spec.get(key):
      raise UserError(f"{where}.{key} is not set")
  if spec.task_type not in TASK_TYPES:
    raise UserError(f"{where}.task_type={spec.task_type!r}; expected one of {TASK_TYPES}")
  return tfds_source.load_tfds_records(
    tfds_source.builder_directory(spec.name, spec.data_dir),
    spec.split,
    source=name,
    fields=tfds_source.parse_fields(spec.fields, f"{where}.fields"),
    task_type=spec.task_type,
    task=spec.task,
  )


def encode_text(
  text: templates.ExampleText, config: ml_collections.ConfigDict, t5: T5Tokenizer, bert: BertTokenizer
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
  """The token arrays of one example, and {name: untruncated length} of the texts (names of
  TRUNCATION_LIMITS) that were longer than their limit and so cut."""
  input_ids, input_mask, input_len = t5.encode_batch(
    [text.t5_input], max_length=config.max_input_len, truncation_side="left", return_lengths=True
  )
  target_ids, target_mask, target_len = t5.encode_batch(
    [text.target], max_length=config.max_target_len, truncation_side="right", return_lengths=True
  )
  q_ids, q_mask, q_len = bert.encode_batch(
    [text.instruction], max_length=config.max_qformer_len, truncation_side="left", return_lengths=True
  )
  decoder_input_ids = np.concatenate([np.zeros((1, 1), np.int32), target_ids[:, :-1]], axis=1)
  arrays = dict(
    qformer_ids=q_ids[0],
    qformer_mask=q_mask[0],
    input_ids=input_ids[0],
    input_mask=input_mask[0],
    decoder_input_ids=decoder_input_ids[0],
    target_ids=target_ids[0],
    target_mask=target_mask[0],
  )
  lengths = dict(input=int(input_len[0]), target=int(target_len[0]), qformer=int(q_len[0]))
  return arrays, {name: n for name, n in lengths.items() if n > config[TRUNCATION_LIMITS[name]]}


class ExamplePreparer:
  """Record index -> model-ready example (numpy arrays of fixed shapes). Picklable for workers."""

  def __init__(
    self, source: Source, source_index: int, config: ml_collections.ConfigDict, t5: T5Tokenizer, bert: BertTokenizer
  ):
    self.source, self.source_index, self.config = source, source_index, config
    self.t5, self.bert = t5, bert
    self._warned: set[int] = set()
    self._warned_truncation: set[str] = set()

  def _prepare_one(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c, record = self.config, self.source.records[i]
    augment = c.augment and record.task_type == "image_level"
    image = images.load_example_image(record.image_source(self.source.image_root), c.image_size, rng, augment)
    if image.flipped:  # the text must describe the pixels: "left of" becomes "right of"
      record = templates.mirror_record(record)
    text = templates.build_checked_text(
      record, rng, *image.original_size, soft_prompt=c.soft_prompt, use_tags=c.use_tags
    )
    arrays, cut = encode_text(text, c, self.t5, self.bert)
    self._warn_truncated(i, cut)
    truncated = np.array([name in cut for name in TRUNCATION_LIMITS], np.int32)
    return dict(
      image=image.pixels,
      **arrays,
      task=np.int32(record.task_id),
      source=np.int32(self.source_index),
      truncated=truncated,
    )

  def _warn_truncated(self, i: int, cut: dict[str, int]) -> None:
    """Once per source and limit, so a too-small limit is noticed; later cuts are only counted."""
    for name, needed in cut.items():
      if name not in self._warned_truncation:
        self._warned_truncation.add(name)
        limit = TRUNCATION_LIMITS[name]
        log.warning(
          "source %s, record %d (id %r): the %s text has %d tokens, over %s=%d, and is "
          "truncated; further cuts in this source are counted as truncated_%s",
          self.source.name,
          i,
          self.source.records[i].id,
          name,
          needed,
          limit,
          self.config[limit],
          name,
        )

  def __call__(self, index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    records = self.source.records
    skipped = np.zeros(len(SKIP_REASONS), np.int32)
    for attempt in range(MAX_CONSECUTIVE_FAILURES):
      i = (int(index) + attempt) % len(records)
      try:
        example = self._prepare_one(i, rng)
      except BadRecord as e:
        where = f"source {self.source.name}, record {i} (id {records[i].id!r}, image {records[i].image!r})"
        if self.config.strict:
          raise BadRecord(e.reason, f"{where}: {e.detail}") from None
        if i not in self._warned:
          self._warned.add(i)
          log.warning("skipping %s: %s", where, e)
        skipped[SKIP_REASONS.index(e.reason)] += 1
        continue
      example["skipped"] = skipped
      return example
    raise UserError(
      f"source {self.source.name}: {MAX_CONSECUTIVE_FAILURES} consecutive records could not "
      f"be prepared ({dict(zip(SKIP_REASONS, skipped.tolist()))}); check the image root "
      f"{self.source.image_root} and the record file"
    )


# Length of the endless per-source and mixed streams (grain needs a finite one).
STREAM_LENGTH = 2**62


class GlobalExamples:
  """Global example index -> (source, record index): the same on every process, so a global batch
  holds the same examples whatever the number of processes. Example g is row g % G of global batch
  g // G (G = the global batch size). Mixed batches draw every example from the weighted mix of the
  sources; homogeneous batches draw a source per batch and fill the batch from it."""

  def __init__(self, num_records: list[int], weights: list[float], global_batch: int, homogeneous: bool, seed: int):
    streams = [
      grain.MapDataset.range(n)
      .shuffle(seed=seed + 1000 * i)
      .repeat(STREAM_LENGTH // n)
      .map(functools.partial(_tag_source, i))
      for i, n in enumerate(num_records)
    ]
    self.global_batch, self.homogeneous = global_batch, homogeneous
    if homogeneous:
      self.plan = grain.MapDataset.mix([s.batch(global_batch) for s in streams], weights)
    else:
      self.plan = grain.MapDataset.mix(streams, weights)

  def __getitem__(self, g: int) -> tuple[int, int]:
    if self.homogeneous:
      sources, records = self.plan[g // self.global_batch]
      return int(sources[g % self.global_batch]), int(records[g % self.global_batch])
    source, record = self.plan[g]
    return int(source), int(record)


def _tag_source(source: int, record: int) -> tuple[int, int]:
  return source, record


class PrepareRows:
  """Local example i of this process -> the prepared example at its global index: rows
  [first_row, first_row + num_rows) of every global batch. The random draws (augmentation, template)
  are seeded by the global index, so they do not depend on the process count either."""

  def __init__(
    self, examples: GlobalExamples, preparers: list[ExamplePreparer], first_row: int, num_rows: int, seed: int
  ):
    self.examples, self.preparers = examples, preparers
    self.first_row, self.num_rows, self.seed = first_row, num_rows, seed

  def __call__(self, i: int) -> dict[str, np.ndarray]:
    g = (i // self.num_rows) * self.examples.global_batch + self.first_row + i % self.num_rows
    source, record = self.examples[g]
    return self.preparers[source](record, np.random.default_rng([self.seed, g]))


def build_dataset(
  config: ml_collections.ConfigDict,
  sources: list[Source],
  weights: list[float],
  global_batch: int,
  *,
  seed: int,
  rows: tuple[int, int] | None = None,
  first_batch: int = 0,
) -> grain.IterDataset:
  """This process's part of the mixed, batched global stream: `rows` = (first row, number of rows)
  of each global batch (default all of it), starting at global batch `first_batch` (resuming)."""
  first_row, num_rows = rows or (0, global_batch)
  t5 = T5Tokenizer(config.t5_vocab)
  bert = BertTokenizer(config.bert_vocab)
  preparers = [ExamplePreparer(s, i, config, t5, bert) for i, s in enumerate(sources)]
  examples = GlobalExamples([len(s.records) for s in sources], weights, global_batch, config.homogeneous_batches, seed)
  dataset = (
    grain.MapDataset.range(STREAM_LENGTH)
    .map(PrepareRows(examples, preparers, first_row, num_rows, seed))
    .batch(num_rows, drop_remainder=True)
  )[first_batch:]
  iter_dataset = dataset.to_iter_dataset(
    grain.ReadOptions(num_threads=0 if config.num_workers else 2, prefetch_buffer_size=config.prefetch_batches)
  )
  if config.num_workers:
    iter_dataset = iter_dataset.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=config.num_workers, per_worker_buffer_size=config.prefetch_batches)
    )
  return iter_dataset


class CountingIterator(grain.DatasetIterator):
  """Yields batches and keeps per-source counters (examples seen, skipped per reason, truncated per
  text) of this process's rows. A checkpoint stores the counters summed over processes and the
  position as the step (`make_iterator(first_batch=...)`), so both survive a change of process count."""

  def __init__(self, parent: grain.DatasetIterator, source_names: list[str]):
    super().__init__(parent)
    self.source_names = list(source_names)
    self._counters = {name: collections.Counter() for name in self.source_names}

  def __next__(self) -> dict[str, np.ndarray]:
    batch = next(self._parent)
    for src, skipped, truncated in zip(batch["source"].tolist(), batch["skipped"], batch["truncated"]):
      counter = self._counters[self.source_names[src]]
      counter["seen"] += 1
      for reason, n in zip(SKIP_REASONS, skipped.tolist()):
        if n:
          counter[f"skipped_{reason}"] += n
      for name, n in zip(TRUNCATION_LIMITS, truncated.tolist()):
        if n:
          counter[f"truncated_{name}"] += n
    return batch

  def counters(self) -> dict[str, dict[str, int]]:
    return {name: dict(c) for name, c in self._counters.items()}

  def global_counters(self) -> dict[str, dict[str, int]]:
    """The counters summed over all processes (a collective: every process calls it)."""
    if jax.process_count() == 1:
      return self.counters()
    keys = ["seen"] + [f"skipped_{r}" for r in SKIP_REASONS] + [f"truncated_{t}" for t in TRUNCATION_LIMITS]
    local = np.array([[self._counters[s][k] for k in keys] for s in self.source_names], np.int32)
    total = np.asarray(multihost_utils.process_allgather(local)).sum(axis=0)
    return {s: {k: int(n) for k, n in zip(keys, row) if n} for s, row in zip(self.source_names, total)}

  def restore_counters(self, counters: dict[str, dict[str, int]]) -> None:
    self._counters = {name: collections.Counter(counters.get(name, {})) for name in self.source_names}

  def get_state(self) -> dict[str, Any]:
    return self._parent.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state)


@dataclasses.dataclass
class Mixture:
  """The loaded sources of a mixture and their weights (sorted by name)."""

  sources: list[Source]
  weights: list[float]


def load_mixture(config: ml_collections.ConfigDict, where: str = "data.mixture") -> Mixture:
  """Loads and checks the sources named in `config.mixture` (name -> weight; weight 0 leaves a
  source out). `where` names the mixture in messages."""
  mixture = {name: float(weight) for name, weight in config.mixture.items() if float(weight) != 0.0}
  if not mixture:
    raise UserError(f"{where} is empty: name at least one source with a weight")
  unknown = sorted(set(mixture) - set(config.sources))
  if unknown:
    raise UserError(f"{where} names unknown sources {unknown}; known: {sorted(config.sources)}")
  names = sorted(mixture)
  unset = [n for n in names if not source_is_set(config.sources[n])]
  if unset:
    raise UserError(
      f"{where} names sources without records: {', '.join(unset)}. Set "
      f"data.sources.<name>.records and .image_root (JSONL from python -m lion_jax.data.adapters), "
      f"or leave a source out with --config.{where}.<name>=0"
    )
  return Mixture(
    [load_source(name, config.sources[name], config.strict) for name in names], [mixture[n] for n in names]
  )


def make_iterator(
  config: ml_collections.ConfigDict,
  batch_size: int,
  *,
  mixture: Mixture | None = None,
  seed: int | None = None,
  rows: tuple[int, int] | None = None,
  first_batch: int = 0,
) -> CountingIterator:
  """The iterator over this process's `rows` of each global batch of `batch_size` examples of
  `mixture` (default: `load_mixture(config)`), from global batch `first_batch` on."""
  mixture = mixture or load_mixture(config)
  dataset = build_dataset(
    config,
    mixture.sources,
    mixture.weights,
    batch_size,
    seed=config.seed if seed is None else seed,
    rows=rows,
    first_batch=first_batch,
  )
  return CountingIterator(iter(dataset), [s.name for s in mixture.sources])


def default_config() -> ml_collections.ConfigDict:
  """Data settings with LION's lengths (T5 input/target 128, Q-Former 128) and image size 224."""
  return ml_collections.ConfigDict(
    dict(
      sources={},
      mixture={},
      t5_vocab="",
      bert_vocab="",
      image_size=224,
      max_input_len=128,
      max_target_len=128,
      max_qformer_len=128,
      homogeneous_batches=True,
      augment=True,
      use_tags=True,
      soft_prompt=False,  # the stage's model has one (set by stages.data_config): tag prompt in every input
      num_workers=0,
      prefetch_batches=4,
      strict=False,
      seed=0,
    )
  )
