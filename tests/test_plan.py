"""The planner compiles the real train step for simulated devices and reports memory, FLOPs and collectives."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_planner_reports_memory_flops_and_collectives_for_a_sharded_step(tmp_path):
  # The planner sets the device count; the suite's other XLA flags (optimisation level 0) stay.
  xla_flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "", os.environ.get("XLA_FLAGS", ""))
  env = {**os.environ, "XLA_FLAGS": xla_flags}
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "lion_jax.plan",
      f"--config={REPO / 'configs' / 'demo.py'}:size=tiny",
      "--devices=4",
      "--mesh=data:2,fsdp:2",
      "--batch=8",
      "--stage=stage1",
      "--memory_gib=16",
      # the demo's vocabularies come from its generated data; the planner only needs sizes
      "--config.model.t5.vocab_size=256",
      "--config.model.qformer.vocab_size=128",
    ],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "stage1 (qformer) on 4 devices" in out and "'data': 2, 'fsdp': 2" in out
  assert "memory per device (GiB): arguments" in out and "TFLOP per example" in out
  assert "all-reduce" in out or "all-gather" in out  # data/FSDP parallel steps communicate
  # The tiny model fits 16 GiB many times over; the fit's batch is a multiple of data*fsdp = 4.
  fit = next(line for line in out.splitlines() if "largest global batch that fits" in line)
  global_batch = int(fit.split("fits: ")[1].split(" ")[0])
  assert global_batch >= 4 * 8 and global_batch % 4 == 0


def test_largest_batch_fit_is_linear_between_the_probes_and_keeps_headroom():
  from lion_jax.plan import largest_per_device_batch

  # 10 GiB at 1 example, 24 GiB at 8: 2 GiB per example; 90% of 80 GiB = 72 -> 1 + 31 examples.
  assert largest_per_device_batch({1: 10.0, 8: 24.0}, 80.0) == 32
  assert largest_per_device_batch({8: 24.0, 2: 12.0}, 80.0) == 32  # any two points, any order
  assert largest_per_device_batch({1: 75.0, 8: 80.0}, 80.0) == 0  # the fixed part alone is over 90%
  assert largest_per_device_batch({1: 10.0, 8: 10.0}, 80.0) > 10**6  # no growth with the batch


def test_device_count_is_read_in_both_flag_spellings():
  from lion_jax.plan import device_count_arg

  assert device_count_arg(["plan", "--devices=4", "--batch=8"]) == "4"
  assert device_count_arg(["plan", "--devices", "16", "--batch=8"]) == "16"
  assert device_count_arg(["plan", "--batch=8"]) is None


def test_the_evaluation_plan_shards_the_parameters_with_fsdp():
  """--evaluate sizes the generation step: on an FSDP mesh each device holds a share of the
  parameters, so the arguments per device shrink against a data-parallel mesh of the same size."""
  from configs import demo
  from lion_jax import plan

  config = demo.get_config("size=tiny")
  config.model.t5.vocab_size, config.model.qformer.vocab_size = 256, 128
  replicated = plan.plan_evaluation(config, "stage3", {"data": 8, "fsdp": 1, "tensor": 1}, 8, 2, 4)
  sharded = plan.plan_evaluation(config, "stage3", {"data": 2, "fsdp": 4, "tensor": 1}, 8, 2, 4)
  arguments = lambda report: report["memory_gib_per_device"]["arguments"]
  assert sharded["mesh"] == {"data": 2, "fsdp": 4, "tensor": 1} and sharded["num_beams"] == 2
  assert arguments(sharded) < 0.5 * arguments(replicated)
