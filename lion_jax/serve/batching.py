"""Concurrent requests gathered into batched generations on the Predictor's device or mesh.

A request waits at most `max_wait_ms` for others with the same generation settings (`Settings`:
task, beams, token limit, penalty, temperature, top-p); up to `max_batch` of them run as one batch,
one batch at a time, while new requests queue. Requests with different settings are never mixed:
one compiled program generates a batch. Batches are padded to a power of two rows (a multiple of the
mesh's batch split), so a few compiled shapes serve every load and a request's answer is the one it
gets alone (`tests/test_serve.py` and `benchmarks/serve_load.py` check this).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from lion_jax import sharding
from lion_jax.data import boxes as box_text
from lion_jax.data import images
from lion_jax.data.tags import fill_missing_tags
from lion_jax.inference.batch import generate_ids
from lion_jax.inference.predictor import Predictor
from lion_jax.serve.sampling import sample_ids

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Settings:
  """What one compiled generation program is specialised on (the batching key)."""

  task: str
  max_new_tokens: int
  num_beams: int
  repetition_penalty: float
  temperature: float  # 0: greedy (num_beams 1) or beam search
  top_p: float


@dataclasses.dataclass(frozen=True)
class Job:
  image: Image.Image  # RGB
  prompt: str  # the question, with earlier turns (protocol.conversation_prompt)
  tags: list[str] | None  # None: the tagger's, or none
  seed: int  # sampling only


@dataclasses.dataclass(frozen=True)
class Answer:
  text: str
  ids: list[int]  # generated ids up to and including EOS
  finished: bool  # ended with EOS, not at the token limit
  prompt_tokens: int
  tags: list[str]


def batch_rows(n: int, split: int) -> int:
  """Rows a batch of n requests is padded to: the next power of two, a multiple of the mesh split."""
  rows = 1 << max(n - 1, 0).bit_length()
  return -(-rows // split) * split


def generate_answers(predictor: Predictor, settings: Settings, jobs: Sequence[Job]) -> list[Answer]:
  """One batched generation for jobs that share `settings`."""
  decoded = [job.image for job in jobs]
  tags = fill_missing_tags([job.tags for job in jobs], decoded, predictor.tagger)
  pixels = [images.to_model_input(image, predictor.config.vit.image_size) for image in decoded]
  split = 1 if predictor.mesh is None else sharding.batch_axes_size(predictor.mesh, predictor.rules)
  pad = batch_rows(len(jobs), split) - len(jobs)
  prompts = [job.prompt for job in jobs]
  batch = predictor.inputs(pixels + pixels[:1] * pad, prompts + prompts[:1] * pad, tags + tags[:1] * pad, settings.task)
  t5, common = predictor.t5, {**predictor.settings, "max_new_tokens": settings.max_new_tokens}
  if settings.temperature > 0:
    seeds = [job.seed for job in jobs] + [0] * pad
    ids = sample_ids(
      predictor.config,
      predictor.params,
      batch,
      seeds,
      predictor.mesh,
      predictor.rules,
      max_new_tokens=settings.max_new_tokens,
      min_length=common["min_length"],
      repetition_penalty=settings.repetition_penalty,
      temperature=settings.temperature,
      top_p=settings.top_p,
      vocab_size=t5.vocab_size,
      eos_id=t5.eos_id,
      pad_id=t5.pad_id,
    )
  else:
    common.update(num_beams=settings.num_beams, repetition_penalty=settings.repetition_penalty)
    ids = generate_ids(predictor.config, predictor.params, batch, predictor.mesh, predictor.rules, common)
  answers = []
  for row, mask, row_tags in zip(ids, batch["input_mask"], tags):
    row = row.tolist()
    finished = t5.eos_id in row
    row = row[: row.index(t5.eos_id) + 1] if finished else row
    answers.append(Answer(t5.decode(row), row, finished, int(np.sum(mask)), row_tags))
  return answers


def pixel_boxes(text: str, image: Image.Image) -> list[list[float]]:
  """The boxes in `text` in pixels of `image` (as Predictor's)."""
  width, height = image.size
  return [[x1 * width, y1 * height, x2 * width, y2 * height] for x1, y1, x2, y2 in box_text.parse_boxes(text)]


class Batcher:
  """Gathers submitted jobs by settings and runs `generate(settings, jobs)` in a worker thread, one
  batch at a time; a failing batch fails its own requests only."""

  def __init__(
    self, generate: Callable[[Settings, list[Job]], list[Answer]], max_batch: int, max_wait_ms: float
  ) -> None:
    self.generate, self.max_batch, self.max_wait = generate, max_batch, max_wait_ms / 1000
    self.pending: dict[Settings, list[tuple[Job, asyncio.Future, float]]] = {}
    self.arrived = asyncio.Event()
    self.batches = self.requests = 0  # generations run and the requests they answered (/health)

  async def submit(self, settings: Settings, job: Job) -> Answer:
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    self.pending.setdefault(settings, []).append((job, future, loop.time()))
    self.arrived.set()
    return await future

  async def run(self) -> None:
    """The worker loop (one task for the app's lifetime)."""
    loop = asyncio.get_running_loop()
    while True:
      if not self.pending:
        self.arrived.clear()
        await self.arrived.wait()
        continue
      settings = min(self.pending, key=lambda s: self.pending[s][0][2])  # the longest-waiting group
      group = self.pending[settings]
      deadline = group[0][2] + self.max_wait
      while len(group) < self.max_batch and loop.time() < deadline:
        self.arrived.clear()
        try:
          await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())
        except TimeoutError:
          break
      taken, group[:] = group[: self.max_batch], group[self.max_batch :]
      if not group:
        del self.pending[settings]
      taken = [(job, future) for job, future, _ in taken if not future.done()]  # a client that left
      if not taken:
        continue
      self.batches, self.requests = self.batches + 1, self.requests + len(taken)
      try:
        answers = await asyncio.to_thread(self.generate, settings, [job for job, _ in taken])
      except Exception as e:  # reported to the batch's clients as a 500; the loop goes on
        log.exception("generation failed for a batch of %d", len(taken))
        answers = [e] * len(taken)
      for (_, future), answer in zip(taken, answers):
        if future.done():
          continue
        if isinstance(answer, Exception):
          future.set_exception(answer)
        else:
          future.set_result(answer)
