"""Workdirs that are local or in a bucket: path handling and the metrics writer's staging mode."""

from __future__ import annotations

import json
import os

from lion_jax import paths
from lion_jax.metrics import MetricWriter


def test_bucket_uris_stay_uris_and_local_paths_become_absolute(tmp_path, monkeypatch):
  run = paths.as_path("gs://my-bucket/lion/run1")
  assert (
    paths.is_cloud(run) and os.fspath(run / "stage1" / "checkpoints") == "gs://my-bucket/lion/run1/stage1/checkpoints"
  )
  monkeypatch.chdir(tmp_path)
  local = paths.as_path("runs/a")
  assert not paths.is_cloud(local) and os.fspath(local) == os.fspath(tmp_path / "runs" / "a")


def test_staged_metrics_reach_the_directory_after_every_write_and_resume_appends(tmp_path):
  target = tmp_path / "stage1"
  writer = MetricWriter(target, enabled=True, stage_locally=True)
  writer.write(1, {"loss": 2.0})
  # Copied after the write, before close: a preempted job leaves its metrics in the bucket.
  assert [json.loads(l)["step"] for l in (target / "metrics.jsonl").read_text().splitlines()] == [1]
  writer.write(2, {"loss": 1.5, "grad_norm": float("nan")})
  writer.close()
  assert list((target / "tb").glob("events.out.tfevents.*"))
  resumed = MetricWriter(target, enabled=True, stage_locally=True)
  resumed.write(3, {"loss": 1.0})
  resumed.close()
  rows = [json.loads(l) for l in (target / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [1, 2, 3] and rows[2]["loss"] == 1.0
