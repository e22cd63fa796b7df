"""Evaluation during training, as big_vision's evaluators: named, configured, run on the training mesh.

`config.evals.<name>` (`run_config.evaluator`) names a record file, its image root, optional
`task_types` / `tasks` filters (as a data source), a metric `kind`, a `limit` and `every_steps`
(0: only at the end of a stage; every stage always evaluates at its end). Kinds:

  caption, vqa, exact_match, rec, pope   generated answers scored as `python -m lion_jax.evaluate` scores
                                         them (runner.predict_records + runner.score), written as
                                         `eval/<name>/<metric>` (x100, as papers print them)
  loss                                   teacher-forced validation loss per task level, as the training
                                         loss is computed: `eval/image_level/loss`, `eval/region_level/loss`

With `blind=True` (evaluation.blind) the same records are scored again with each example shown another
example's image: generation kinds add `eval/<name>/<metric>_blind`, 'loss' adds
`eval/<name>/<level>/image_gain` (blind loss minus true loss, nats per target token).

Every evaluator also writes `eval/<name>/seconds`. The trainer passes its own parameters (trainables
merged with the frozen towers, sharded as in training): nothing is exported or reloaded.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lion_jax.data import contract, pipeline
from lion_jax.data.tokenizers import BertTokenizer, T5Tokenizer
from lion_jax.errors import UserError
from lion_jax.evaluation import blind, runner
from lion_jax.loss import loss_and_metrics
from lion_jax.models import Lion
from lion_jax.models.param_paths import TASK_LEVELS

GENERATION_KINDS = ("caption", "vqa", "exact_match", "rec", "pope")
KINDS = GENERATION_KINDS + ("loss",)


class Evaluator:
  """One named evaluator for one stage: `due(step)` says when, `run(params)` gives its scalars."""

  def __init__(
    self,
    name: str,
    spec: ml_collections.ConfigDict,
    model_config: ml_collections.ConfigDict,
    data_config: ml_collections.ConfigDict,
    num_steps: int,
  ):
    if spec.kind not in KINDS:
      raise UserError(f"evals.{name}.kind={spec.kind!r}; expected one of {KINDS}")
    self.name, self.spec, self.model_config, self.data_config = name, spec, model_config, data_config
    self.num_steps = num_steps
    source = pipeline.load_source(name, spec, strict=data_config.strict, where=f"evals.{name}")
    self.source = pipeline.Source(source.name, source.records[: spec.limit or None], source.image_root)
    self.t5, self.bert = T5Tokenizer(data_config.t5_vocab), BertTokenizer(data_config.bert_vocab)
    # Blind runs show example i the image of example image_partners[i]; a set that cannot be deranged
    # is refused here, before any training step.
    self.image_partners = blind.partners(self.source.records) if spec.get("blind", False) else None

  def due(self, step: int) -> bool:
    every = self.spec.every_steps
    return step == self.num_steps or (every > 0 and step % every == 0)

  def run(self, params) -> dict[str, float]:
    start = time.perf_counter()
    if self.spec.kind == "loss":
      # The losses keep their historical names (eval/<level>/loss); the gains are the evaluator's own.
      scalars = {
        f"eval/{key}" if key.endswith("/loss") else f"eval/{self.name}/{key}": v
        for key, v in self.loss_scalars(params).items()
      }
    else:
      scalars = {f"eval/{self.name}/{k}": v for k, v in self.scores(params).items()}
    scalars[f"eval/{self.name}/seconds"] = time.perf_counter() - start
    return scalars

  def predict(self, params, image_partners=None) -> list[str | None]:
    """Generated answers for the records, prompted and decoded as `python -m lion_jax.evaluate` does
    (blind with `image_partners`: `runner.predict_records`)."""
    s, d = self.spec, self.data_config
    return runner.predict_records(
      self.model_config,
      params,
      self.t5,
      self.bert,
      self.source.records,
      self.source.image_root,
      batch_size=s.batch_size,
      max_input_len=d.max_input_len,
      max_qformer_len=d.max_qformer_len,
      use_tags=d.use_tags,
      progress=False,
      image_partners=image_partners,
      num_beams=s.num_beams,
      max_new_tokens=s.max_new_tokens or d.max_target_len,
      repetition_penalty=s.repetition_penalty,
      length_penalty=s.length_penalty,
    )

  def scored_passes(self, params) -> dict[str, tuple[list[str | None], dict[str, float]]]:
    """(predictions, scores) per pass: '' with the true images and, when `blind` is on, '_blind'."""
    passes = {"": None} if self.image_partners is None else {"": None, blind.SUFFIX: self.image_partners}
    out = {}
    for suffix, partners in passes.items():
      predictions = self.predict(params, partners)
      out[suffix] = predictions, runner.score(self.spec.kind, self.source.records, predictions)
    return out

  def scores(self, params) -> dict[str, float]:
    """The metric(s) of the generated answers, and their blind twins (`<metric>_blind`) when `blind` is on."""
    passes = self.scored_passes(params)
    return {f"{k}{suffix}": v for suffix, (_, scores) in passes.items() for k, v in scores.items()}

  def loss_scalars(self, params) -> dict[str, float]:
    """'<level>/loss' per task level and, when `blind` is on, '<level>/image_gain': the blind loss
    minus the true one, nats per target token."""
    true = self._loss(params)
    scalars = {f"{level}/loss": v for level, v in true.items()}
    if self.image_partners is not None:
      blind_loss = self._loss(params, self.image_partners)
      scalars.update({f"{level}/image_gain": blind_loss[level] - v for level, v in true.items()})
    return scalars

  def _loss(self, params, image_partners=None) -> dict[str, float]:
    """Token-mean cross-entropy per task level over the records, prepared as training prepares them
    (no augmentation, each task's first template); with `image_partners`, example i gets the pixels of
    example `image_partners[i]` (a blind run)."""
    preparer = pipeline.ExamplePreparer(self.source, 0, self.data_config, self.t5, self.bert)
    loss_sums = _loss_sums(json.dumps(self.model_config.to_dict()))
    totals = np.zeros((len(TASK_LEVELS), 2))  # (loss sum, tokens) per task level
    size = self.spec.batch_size
    for start in range(0, len(self.source.records), size):
      # rng None: no augmentation and each task's first template, as the generation evaluators prompt.
      indices = range(start, min(start + size, len(self.source.records)))
      examples = [preparer(i, None) for i in indices]
      if image_partners is not None:
        examples = [{**e, "image": preparer(int(image_partners[i]), None)["image"]} for e, i in zip(examples, indices)]
      examples += [examples[0]] * (size - len(examples))  # pad the last batch, then mask it out
      batch = {k: np.stack([e[k] for e in examples]) for k in contract.TRAIN_KEYS}
      real = np.arange(size) < min(size, len(self.source.records) - start)
      batch["target_mask"] = batch["target_mask"] * real[:, None]
      totals += np.asarray(jax.device_get(loss_sums(params, batch)))
    return {level: float(s / t) for level, (s, t) in zip(TASK_LEVELS, totals) if t > 0}


@functools.lru_cache(maxsize=8)
def _loss_sums(model_config_json: str):
  """jit: (params, batch) -> [task levels, (loss sum, target tokens)], the training loss's sums."""
  model = Lion(ml_collections.ConfigDict(json.loads(model_config_json)))

  def sums(params, batch):
    _, m = loss_and_metrics(model.apply({"params": params}, batch), batch)
    return jnp.stack([jnp.stack([m[f"loss_sum_{level}"], m[f"tokens_{level}"]]) for level in TASK_LEVELS])

  return jax.jit(sums)


def make_evaluators(config: ml_collections.ConfigDict, model_config, data_config, num_steps: int) -> list[Evaluator]:
  return [Evaluator(name, spec, model_config, data_config, num_steps) for name, spec in config.get("evals", {}).items()]


def run_all(evaluators: list[Evaluator], params: Any) -> dict[str, float]:
  """The scalars of all `evaluators` (one merged row for the metrics writer)."""
  scalars: dict[str, float] = {}
  for evaluator in evaluators:
    scalars.update(evaluator.run(params))
  return scalars


def format_scalars(scalars: dict[str, float]) -> str:
  """`synthetic_vqa/accuracy 61.2, image_level/loss 0.84, ...` (timings left out)."""
  return ", ".join(f"{k.removeprefix('eval/')} {v:.2f}" for k, v in scalars.items() if not k.endswith("/seconds"))
