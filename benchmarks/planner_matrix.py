"""docs/scaling.md's matrix: every released stage x size compiled by the planner, and what fits where.

  python -m benchmarks.planner_matrix [--stages stage1,stage2,stage3] [--sizes xl,xxl] [--devices 8]
      [--per_device 1,8]

For each stage and size: the train step of `configs/<stage>.py:size=<size>` compiled by
`lion_jax.plan.plan` for `--devices` simulated CPU devices, fully sharded (fsdp = devices), at
each per-device batch of `--per_device` (one row each in benchmarks/results/planner_matrix.jsonl).
Then the largest global batch per topology, from the two compiles: per-device peak = the
arguments x devices / N (the sharded state of N devices) + the temporaries on the line through the
two batch sizes, within `plan.HEADROOM` of the chip's memory (`plan.largest_per_device_batch`).
Both tables are printed as Markdown.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from lion_jax import simulate_cpu_devices


def _devices_before_jax(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument("--devices", type=int, default=8)
  return parser.parse_known_args(argv)[0].devices


simulate_cpu_devices(_devices_before_jax(sys.argv[1:]))

from benchmarks.common import record  # noqa: E402
from lion_jax import plan  # noqa: E402

# (name, chips, GiB per chip) of the topologies the docs compare.
TOPOLOGIES = (
  ("TPU v4-8 (4 x 32 GiB)", 4, 32.0),
  ("TPU v5e-16 (16 x 16 GiB)", 16, 16.0),
  ("TPU v5p-32 (16 x 95 GiB)", 16, 95.0),
  ("8 x H100 80GB", 8, 80.0),
  ("1 x H100 80GB", 1, 80.0),
)


def largest_global_batch(rows: dict[int, dict], devices: int, chips: int, memory_gib: float) -> int:
  """The largest global batch on `chips` chips of `memory_gib`, from compiles on `devices` devices
  at two per-device batches (their arguments scaled to `chips` shards)."""
  peaks = {}
  for per_device, row in rows.items():
    m = row["memory_gib_per_device"]
    peaks[per_device] = m["arguments"] * devices / chips + m["temporaries"]
  return plan.largest_per_device_batch(peaks, memory_gib) * chips


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--devices", type=int, default=8, help="simulated devices, fully sharded (default 8)")
  parser.add_argument("--stages", default="stage1,stage2,stage3", help="config files under configs/")
  parser.add_argument("--sizes", default="xl,xxl", help="model sizes (default xl,xxl)")
  parser.add_argument("--per_device", default="1,8", help="two per-device batches to compile (default 1,8)")
  args = parser.parse_args()
  per_device = [int(b) for b in args.per_device.split(",")]
  if len(per_device) != 2:
    parser.error("--per_device takes two batch sizes, e.g. 1,8")
  mesh = {"data": 1, "fsdp": args.devices, "tensor": 1}
  table = {}
  for size in args.sizes.split(","):
    for stage in args.stages.split(","):
      config = importlib.import_module(f"configs.{stage}").get_config(f"size={size}")
      name = plan.stage_to_plan(config, "")
      for b in per_device:
        report = plan.plan(config, name, mesh, b * args.devices)
        table.setdefault((stage, size), {})[b] = record(
          "planner_matrix",
          {"config": f"configs/{stage}.py:size={size}", "per_device": b, **report},
        )
  at = " / ".join(map(str, per_device))
  print(
    f"\n| stage | size | trainable / frozen (M) | TFLOP per example | compile at {at} per device | args per device "
    f"| temps at {at} examples per device (GiB) |"
  )
  print("|---|---|---|---|---|---|---|")
  for (_, size), rows in table.items():
    lo, hi = (rows[b] for b in per_device)
    print(
      f"| {lo['stage']} | {size.upper()} | {lo['trainable_params'] / 1e6:,.1f} / {lo['frozen_params'] / 1e6:,.1f} "
      f"| {lo['flops_per_example'] / 1e12:.2f} | {lo['compile_s']:.0f} / {hi['compile_s']:.0f} s "
      f"| {lo['memory_gib_per_device']['arguments']:.2f} GiB "
      f"| {lo['memory_gib_per_device']['temporaries']:.1f} / {hi['memory_gib_per_device']['temporaries']:.1f} |"
    )
  print("\n| stage | size | " + " | ".join(t[0] for t in TOPOLOGIES) + " |")
  print("|---|---|" + "---|" * len(TOPOLOGIES))
  for (stage, size), rows in table.items():
    fits = [largest_global_batch(rows, args.devices, chips, gib) for _, chips, gib in TOPOLOGIES]
    print(f"| {stage} | {size.upper()} | " + " | ".join(str(f) if f else "none" for f in fits) + " |")


if __name__ == "__main__":
  main()
