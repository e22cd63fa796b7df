"""Checkpoint save and restore, trainables-only (what lion-jax writes) vs everything, at a real size.

  python -m benchmarks.checkpoint_io [--size xl] [--stage stage3] [--dir /tmp/lion-ckpt-bench]
      [--devices N [--orbax_default_handler]]

A stage checkpoint (`lion_jax.checkpoints.StageCheckpoints`: trainables + AdamW state + meta,
which holds the data position) is written and restored at the released model size, with random values (so no
compression helps either side); "everything" additionally writes the frozen towers in their stored
dtype (bf16), which is what a checkpoint of the whole model would add. Reports seconds (save
including the wait for the async write; restore onto the host's devices) and bytes on disk.
`--devices N` holds the stage checkpoint replicated on N devices (a data-parallel mesh, e.g. 8 fake
CPU devices via XLA_FLAGS), where Orbax's replica-parallel saving applies; `--orbax_default_handler`
saves with Orbax's own array handler instead of lion-jax's (lion_jax/paths.py), to compare.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from benchmarks.common import record


def disk_bytes(path: Path) -> int:
  return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def random_like(abstract, dtype, rng) -> np.ndarray:
  return rng.standard_normal(abstract.shape, dtype=np.float32).astype(dtype)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="xl", choices=["tiny", "xl", "xxl"])
  parser.add_argument("--stage", default="stage3")
  parser.add_argument("--dir", default="/tmp/lion-ckpt-bench")
  parser.add_argument("--devices", type=int, default=1, help="replicate the stage checkpoint on N devices")
  parser.add_argument(
    "--orbax_default_handler", action="store_true", help="Orbax's default array handler (replica-parallel always)"
  )
  args = parser.parse_args()

  import importlib

  import jax
  import jax.numpy as jnp
  import orbax.checkpoint as ocp

  from lion_jax import sharding, train
  from lion_jax.checkpoints import StageCheckpoints

  if args.orbax_default_handler:
    ocp.type_handlers.register_type_handler(jax.Array, ocp.type_handlers.ArrayHandler(), override=True)
  config = importlib.import_module(f"configs.{args.stage}").get_config(f"size={args.size}")
  mesh = sharding.make_mesh(data=args.devices, devices=jax.devices()[: args.devices])
  abstract, frozen, _, _ = train.abstract_state(config, args.stage, mesh, sharding.config_rules(config), 1000)
  rng = np.random.default_rng(0)
  trainable = jax.tree.map(lambda a: jax.device_put(random_like(a, np.float32, rng), a.sharding), abstract.params)
  # Moments as after some steps (not compressible zeros); the step counters stay scalars.
  opt_state = jax.tree.map(
    lambda x: jax.device_put(
      np.abs(random_like(x, np.float32, rng)) if x.ndim else np.zeros(x.shape, x.dtype), x.sharding
    ),
    abstract.opt_state,
  )
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))

  root = Path(args.dir)
  shutil.rmtree(root, ignore_errors=True)
  ckpt = StageCheckpoints(root / "stage", async_save=True)
  start = time.perf_counter()
  ckpt.save(1, trainable, opt_state, {"step": 1})
  ckpt.wait()
  stage_save_s = time.perf_counter() - start
  abstract_of = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
  start = time.perf_counter()
  restored, _, _ = ckpt.restore_newest_intact(abstract_of(trainable), abstract_of(opt_state))
  jax.block_until_ready(restored)
  stage_restore_s = time.perf_counter() - start
  ckpt.close()
  stage_bytes = disk_bytes(root / "stage")
  trainable_params = count(trainable)
  del trainable, opt_state, restored  # host memory for the towers below

  # The frozen towers one at a time (ViT, then T5), so host memory holds one tower and its save copy.
  frozen_save_s = frozen_restore_s = 0.0
  with ocp.StandardCheckpointer() as ckptr:
    for name, tower in frozen.items():
      values = jax.tree.map(lambda a: jnp.asarray(random_like(a, jnp.bfloat16, rng)), tower)
      start = time.perf_counter()
      ckptr.save((root / "frozen" / name).absolute(), values)
      ckptr.wait_until_finished()
      frozen_save_s += time.perf_counter() - start
      abstract_tower = abstract_of(values)
      del values
      start = time.perf_counter()
      jax.block_until_ready(ckptr.restore((root / "frozen" / name).absolute(), abstract_tower))
      frozen_restore_s += time.perf_counter() - start
  frozen_bytes = disk_bytes(root / "frozen")
  shutil.rmtree(root, ignore_errors=True)

  gib = lambda b: round(b / 2**30, 2)
  record(
    "checkpoint_io",
    {
      "size": args.size,
      "stage": args.stage,
      "devices": args.devices,
      "orbax_default_handler": args.orbax_default_handler,
      "trainable_params": trainable_params,
      "frozen_params": count(frozen),
      "stage_checkpoint": {
        "gib": gib(stage_bytes),
        "save_s": round(stage_save_s, 1),
        "restore_s": round(stage_restore_s, 1),
      },
      "everything": {
        "gib": gib(stage_bytes + frozen_bytes),
        "save_s": round(stage_save_s + frozen_save_s, 1),
        "restore_s": round(stage_restore_s + frozen_restore_s, 1),
      },
      "disk": str(root),
    },
  )


if __name__ == "__main__":
  main()
