"""Stage checkpoints (Orbax): only what a stage trains, plus everything needed to resume exactly.

  DIR/<stage>/checkpoints/<step>/trainable   the trainable parameters (never the frozen towers)
                                 opt_state   AdamW state of the trainables
                                 data        the Grain iterator position and per-source counters
                                 meta        JSON: stage, step, num_steps, final
Saves are asynchronous and atomic: a run killed mid-save leaves the previous checkpoint as the
newest complete one. Restoring takes abstract arrays carrying the *current* shardings, so a run can
resume on a different mesh or number of devices. DIR may be a bucket (`gs://...`, see `lion_jax.paths`).
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from lion_jax import paths


class StageCheckpoints:
  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = True):
    self.directory = paths.as_path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, trainable: Any, opt_state: Any, data_iterator: grain.DatasetIterator,
           meta: dict[str, Any]) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(trainable), opt_state=ocp.args.StandardSave(opt_state),
        data=grain.checkpoint.CheckpointSave(data_iterator), meta=ocp.args.JsonSave(meta)), force=True)

  def restore(self, step: int, abstract_trainable: Any, abstract_opt_state: Any,
              data_iterator: grain.DatasetIterator) -> tuple[Any, Any, dict[str, Any]]:
    """Restores onto the shardings carried by the abstract trees; the iterator is restored in place."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        data=grain.checkpoint.CheckpointRestore(data_iterator), meta=ocp.args.JsonRestore()))
    return restored["trainable"], restored["opt_state"], restored["meta"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def read_meta(directory: str | os.PathLike, step: int | None = None) -> tuple[int | None, dict | None]:
  """(step, meta) of the newest (or given) checkpoint in `directory`, (None, None) if there is none."""
  directory = paths.as_path(directory)
  if not directory.exists():
    return None, None
  with ocp.CheckpointManager(directory) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      return None, None
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return step, meta


def load_final_trainables(directory: str | os.PathLike, stage: str) -> dict[str, np.ndarray]:
  """The trainables of a finished stage as a flat {'a/b': array} dict (host memory).

  Raises FileNotFoundError / ValueError naming the directory when the stage has no checkpoint or
  did not reach its last step, so a later stage never starts from half-trained weights by accident.
  """
  directory = paths.as_path(directory)
  step, meta = read_meta(directory)
  if step is None:
    raise FileNotFoundError(f"no {stage} checkpoint in {directory}: run {stage} first, or point "
                            f"init_from.{stage} at its workdir")
  if not meta.get("final"):
    raise ValueError(f"{stage} in {directory} stopped at step {step} of {meta.get('num_steps')}: "
                     f"finish it (re-run the same command) before starting the next stage")
  with ocp.CheckpointManager(directory) as manager:
    trainable = manager.restore(step, args=ocp.args.Composite(trainable=ocp.args.StandardRestore()))["trainable"]
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(trainable), sep="/").items()}
