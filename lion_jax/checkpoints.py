"""Stage checkpoints (Orbax): only what a stage trains, plus everything needed to resume exactly.

  DIR/<stage>/checkpoints/<step>/trainable   the trainable parameters (never the frozen towers)
                                 opt_state   AdamW state of the trainables
                                 meta        JSON: stage, step, num_steps, final, and the data
                                             counters summed over processes
The data position is the step itself (the pipeline starts at global batch `step`), so a run resumes
exactly on any number of processes. Saves are asynchronous and atomic: a run killed mid-save leaves
the previous checkpoint as the newest complete one. A checkpoint damaged afterwards (files truncated
or missing, as after a full disk or a half-copied bucket) is moved to DIR/<stage>/damaged_checkpoints/
and the newest intact one is used. Restoring takes abstract arrays carrying the *current* shardings,
so a run can resume on a different mesh or number of devices. DIR may be a bucket (`gs://...`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.experimental import multihost_utils

from lion_jax import paths
from lion_jax.errors import MissingFile, UserError

log = logging.getLogger(__name__)


class StageCheckpoints:
  def __init__(self, directory: str | os.PathLike, *, keep: int = 2, async_save: bool = True):
    self.directory = paths.as_path(directory)
    self.damaged_directory = self.directory.parent / "damaged_checkpoints"
    self._options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, trainable: Any, opt_state: Any, meta: dict[str, Any]) -> None:
    self.manager.save(
      step,
      args=ocp.args.Composite(
        trainable=ocp.args.StandardSave(trainable),
        opt_state=ocp.args.StandardSave(opt_state),
        meta=ocp.args.JsonSave(meta),
      ),
      force=True,
    )

  def restore_newest_intact(
    self, abstract_trainable: Any, abstract_opt_state: Any
  ) -> tuple[Any, Any, dict[str, Any]] | None:
    """(trainable, opt_state, meta) of the newest checkpoint that restores, onto the shardings of
    the abstract trees; None when there is none. Damaged ones are moved aside, never deleted. A
    checkpoint whose shapes differ from the model's is a config change, not damage: UserError."""
    moved = []
    while (step := self.manager.latest_step()) is not None:
      try:
        return self._restore(step, abstract_trainable, abstract_opt_state)
      except UserError:
        raise
      except Exception as e:  # noqa: BLE001 -- what a damaged checkpoint raises is not one type
        moved.append(self._move_aside(step, e))
        if self.manager.latest_step() is None:
          raise UserError(
            f"no checkpoint of {self.directory} restores; the damaged ones were moved to {moved}. "
            f"Re-running starts this stage over; copy an intact checkpoint back to resume"
          ) from e
    return None

  def _restore(self, step: int, abstract_trainable: Any, abstract_opt_state: Any):
    self._check_shapes(step, abstract_trainable)
    restored = self.manager.restore(
      step,
      args=ocp.args.Composite(
        trainable=ocp.args.StandardRestore(abstract_trainable),
        opt_state=ocp.args.StandardRestore(abstract_opt_state),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return restored["trainable"], restored["opt_state"], restored["meta"]

  def _check_shapes(self, step: int, abstract_trainable: Any) -> None:
    """UserError naming the parameters whose stored shapes the current model does not have."""
    try:
      stored = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "trainable").tree
    except Exception:  # noqa: BLE001 -- unreadable metadata is damage: the restore will say so
      return
    want = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_trainable, sep="/").items()}
    have = {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(stored, sep="/").items()}
    differ = sorted(k for k in want.keys() & have.keys() if want[k] != have[k])
    if set(want) != set(have) or differ:
      raise UserError(
        f"{self.directory}/{step} was written by a different model than this config builds (missing "
        f"{sorted(set(want) - set(have))[:3]}, unexpected {sorted(set(have) - set(want))[:3]}, other "
        f"shapes {differ[:3]}): resume with the config that wrote it (its model.scan_layers too), or use a "
        "new --workdir"
      )

  def _move_aside(self, step: int, failure: Exception) -> str:
    target = self.damaged_directory / f"{step}-{time.strftime('%Y%m%dT%H%M%S')}"
    if jax.process_index() == 0:
      log.warning(
        "checkpoint %s/%d is damaged; moving it to %s and trying the previous one",
        self.directory,
        step,
        target,
        exc_info=failure,
      )
      self.damaged_directory.mkdir(parents=True, exist_ok=True)
      (self.directory / str(step)).rename(target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f"moved damaged checkpoint {step}")
    self.manager.close()
    self.manager = ocp.CheckpointManager(self.directory, options=self._options)
    return str(target)

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
    raise MissingFile(
      f"no {stage} checkpoint in {directory}: run {stage} first, or point init_from.{stage} at its workdir"
    )
  if not meta.get("final"):
    raise UserError(
      f"{stage} in {directory} stopped at step {step} of {meta.get('num_steps')}: "
      f"finish it (re-run the same command) before starting the next stage"
    )
  item = directory / str(step) / "trainable"
  with ocp.StandardCheckpointer() as ckptr:
    trainable = restore_onto(ckptr, item, ckptr.metadata(item).item_metadata.tree)
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(jax.device_get(trainable), sep="/").items()}


def restore_onto(ckptr: ocp.StandardCheckpointer, path: Any, stored_tree: Any, shardings: Any | None = None) -> Any:
  """The arrays saved at `path` (`stored_tree`: their metadata) restored onto `shardings` (a tree like
  them), or whole onto this process's first device when None, whatever mesh and number of hosts
  wrote them: without a target, Orbax uses the saved shardings and refuses another topology (a run
  moved from 2 to 4 hosts)."""
  if shardings is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, stored_tree)
  target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), stored_tree, shardings)
  return ckptr.restore(path, target)
