"""The planner compiles the real train step for simulated devices and reports memory, FLOPs and collectives."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_planner_reports_memory_flops_and_collectives_for_a_sharded_step(tmp_path):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the planner sets the device count
  result = subprocess.run(
      [sys.executable, "-m", "lion_jax.plan", f"--config={REPO / 'configs' / 'demo.py'}", "--devices=4",
       "--mesh=data:2,fsdp:2", "--batch=8", "--stage=stage3",
       # the demo's vocabularies come from its generated data; the planner only needs sizes
       "--config.model.t5.vocab_size=256", "--config.model.qformer.vocab_size=128"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  assert "stage3 (all) on 4 devices" in out and "'data': 2, 'fsdp': 2" in out
  assert "memory per device (GiB): arguments" in out and "TFLOP per example" in out
  assert "all-reduce" in out or "all-gather" in out  # data/FSDP parallel steps communicate
