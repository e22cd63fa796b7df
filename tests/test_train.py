"""The trainer: sharded steps, freezing, checkpoints (resume, reshard, kill -9), hand-off, errors, demo.

The two-process (multi-host) run is exercised through launch/local.sh in tests/test_launch.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import demo
from lion_jax import checkpoints, sharding, stages, train
from lion_jax.convert import load_converted
from lion_jax.data import synthetic
from lion_jax.demo import prepare_synthetic_data
from lion_jax.models import Lion

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("synthetic")
  synthetic.generate(root / "data", num_images=40, seed=0, image_size=64)
  return root / "data"


STEPS = 30  # every run below uses the same schedule length, so compiled programs are shared


def make_config(data_dir: Path, workdir: Path, *, steps=STEPS, stages_to_run="stage1", **overrides):
  """The demo config at test size, reading the shared synthetic dataset."""
  config = demo.get_config(f"steps={steps},images=40")
  config.run_stages = stages_to_run
  config.update(overrides)
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "data").exists():
    (workdir / "data").symlink_to(data_dir)
  prepare_synthetic_data(config, workdir)
  return config


@pytest.fixture(scope="module")
def three_stages(data_dir, tmp_path_factory):
  """One demo-sized run of stages 1 -> 2 -> 3 (checkpoints every 5 steps, all kept), shared by tests."""
  workdir = tmp_path_factory.mktemp("three_stages")
  config = make_config(data_dir, workdir, stages_to_run="stage1,stage2,stage3", checkpoint_every_steps=5,
                       keep_checkpoints=10)
  summaries = train.run(config, workdir)
  return config, workdir, {s["stage"]: s for s in summaries}


def flat(tree):
  return train.flatten(jax.device_get(tree))


def final_trainables(workdir: Path, stage="stage1"):
  return checkpoints.load_final_trainables(workdir / stage / "checkpoints", stage)


def test_one_step_on_a_2x2x2_mesh_equals_one_device(data_dir, tmp_path):
  config = make_config(data_dir, tmp_path)
  model_config = config.model.copy_and_resolve_references()
  model_config.visual_input = "qformer"
  from lion_jax.data import pipeline
  data = config.data.copy_and_resolve_references()
  data.mixture = {"synthetic_image": 1.0}
  batch = {k: v for k, v in next(pipeline.make_iterator(data, 16)).items() if k in train.DEVICE_KEYS}
  losses, params_after = [], []
  for mesh in (sharding.make_mesh(2, 2, 2), sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])):
    rules = sharding.DEFAULT_RULES
    trainable, frozen, t_shard, _ = train.init_params(config, model_config, mesh, rules, {})
    tx, schedule = train.optim.make_optimizer(config.optimizer, 10)
    with jax.set_mesh(mesh):
      state = train.TrainState(jnp.zeros((), jnp.int32), trainable, jax.jit(tx.init)(trainable))
      step = jax.jit(train.make_train_step(Lion(model_config), tx, schedule, 1, seed=0))
      state, metrics = step(state, frozen, train.global_batch(batch, sharding.batch_sharding(mesh)))
    losses.append(float(metrics["loss"]))
    params_after.append(flat(state.params))
    assert any(len(s.device_set) == 8 for s in jax.tree.leaves(t_shard)) == (mesh.size == 8)
  assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[1])
  for k in params_after[0]:
    np.testing.assert_allclose(params_after[0][k], params_after[1][k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_frozen_towers_never_change_and_have_no_optimizer_state(three_stages):
  config, workdir, _ = three_stages
  model_config = config.model.copy_and_resolve_references()
  mesh = sharding.make_mesh(**config.mesh)
  _, frozen_init, _, _ = train.init_params(config, model_config, mesh, sharding.DEFAULT_RULES, {})
  _, exported = load_converted(workdir / "stage3" / "export")
  exported = flat(exported)
  for k, v in flat(frozen_init).items():  # bitwise: no update, no weight decay ever reached them
    np.testing.assert_array_equal(exported[k], v, err_msg=f"frozen {k} changed")
  for stage in ("stage1", "stage2", "stage3"):
    step_dir = workdir / stage / "checkpoints" / str(STEPS)
    for item in ("trainable", "opt_state"):
      with ocp.StandardCheckpointer() as ckptr:
        tree = ckptr.metadata(step_dir / item).item_metadata.tree
      paths = ["/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
               for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
      assert paths, (stage, item)
      for p in paths:
        assert "vit/" not in p and not ("t5/" in p and "/moa/" not in p), (stage, item, p)


def test_stage_handoff_maps_adapters_branches_and_gates():
  stage1 = {"qformer/proj/kernel": np.full((2, 2), 1.0), "soft_prompt": np.full((4,), 1.0),
            "t5/encoder/layers_0/moa/adapter_0/down/kernel": np.full((4, 2), 1.0)}
  stage2 = {"aggregator/proj_in/kernel": np.full((2, 2), 2.0), "soft_prompt": np.full((4,), 2.0),
            "t5/encoder/layers_0/moa/adapter_0/down/kernel": np.full((4, 2), 2.0)}
  out = stages.handoff("all", {"stage1": stage1, "stage2": stage2})
  assert out["t5/encoder/layers_0/moa/adapter_1/down/kernel"][0, 0] == 1.0  # image-level from stage 1
  assert out["t5/encoder/layers_0/moa/adapter_0/down/kernel"][0, 0] == 2.0  # region-level from stage 2
  assert out["qformer/proj/kernel"][0, 0] == 1.0 and out["aggregator/proj_in/kernel"][0, 0] == 2.0
  assert out["soft_prompt"][0] == 2.0
  assert not any("gate" in k for k in out)  # gates keep their one-hot init
  assert stages.handoff("aggregator", {"stage1": stage1}) == {"soft_prompt": stage1["soft_prompt"]}


def test_stage3_starts_from_stage1_and_stage2(three_stages):
  config, workdir, _ = three_stages
  s1, s2 = final_trainables(workdir, "stage1"), final_trainables(workdir, "stage2")
  model_config = config.model.copy_and_resolve_references()
  model_config.visual_input = "all"
  trainable, _, _, _ = train.init_params(config, model_config, sharding.make_mesh(**config.mesh),
                                         sharding.DEFAULT_RULES, {"stage1": s1, "stage2": s2})
  t = flat(trainable)
  key = "t5/decoder/layers_1/moa/adapter_{}/up/kernel"
  np.testing.assert_array_equal(t[key.format(1)], s1[key.format(0)])
  np.testing.assert_array_equal(t[key.format(0)], s2[key.format(0)])
  assert np.abs(s1[key.format(0)]).max() > 0 and np.abs(s2[key.format(0)]).max() > 0  # trained, not zero init
  np.testing.assert_array_equal(t["qformer/encoder/layers_0/query_ffn/fc1/kernel"],
                                s1["qformer/encoder/layers_0/query_ffn/fc1/kernel"])
  np.testing.assert_array_equal(t["aggregator/out_norm/scale"], s2["aggregator/out_norm/scale"])
  gate = t["t5/encoder/layers_0/moa/gate_1"]
  np.testing.assert_array_equal(gate, np.stack([np.zeros(gate.shape[1]), np.ones(gate.shape[1])]))


def test_resume_on_a_different_mesh_continues_the_run(data_dir, three_stages, tmp_path):
  """Saved on 8 devices as (8, 1, 1) at step 10, resumed as (2, 2, 2): same losses and parameters."""
  _, workdir, summaries = three_stages
  shutil.copytree(workdir / "stage1" / "checkpoints", tmp_path / "stage1" / "checkpoints")
  for step_dir in (tmp_path / "stage1" / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 10:
      shutil.rmtree(step_dir)
  config = make_config(data_dir, tmp_path)
  config.mesh.update(data=2, fsdp=2, tensor=2)
  resumed = train.run(config, tmp_path)[0]
  assert resumed["first_step"] == 10
  np.testing.assert_allclose(resumed["losses"], summaries["stage1"]["losses"][10:], rtol=1e-4)
  a, b = final_trainables(workdir), final_trainables(tmp_path)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)


def _main_command(workdir: Path | str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "lion_jax.main", f"--config={REPO / 'configs' / 'demo.py'}:steps={STEPS},images=40",
          f"--workdir={workdir}", "--config.run_stages=stage1", *overrides]


def test_kill_9_and_resume_equals_an_uninterrupted_run(data_dir, three_stages, tmp_path):
  _, straight, summaries = three_stages
  expected = summaries["stage1"]["losses"]
  killed = tmp_path / "killed"
  killed.mkdir()
  (killed / "data").symlink_to(data_dir)
  command = _main_command(killed, "--config.checkpoint_every_steps=5", "--config.log_every_steps=1")
  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and \
      (checkpoints.read_meta(killed / "stage1" / "checkpoints")[0] or 0) < 10:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-save, ...
  proc.wait()
  killed_at = checkpoints.read_meta(killed / "stage1" / "checkpoints")[0]
  assert killed_at is not None and killed_at < STEPS, f"the run finished before the kill ({killed_at})"
  subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
  a, b = final_trainables(straight), final_trainables(killed)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  logged = {}
  for line in (killed / "stage1" / "metrics.jsonl").read_text().splitlines():
    entry = json.loads(line)
    logged[entry["step"]] = entry["loss"]  # steps redone after the kill are logged again
  for step in range(1, STEPS + 1):
    assert logged[step] == pytest.approx(expected[step - 1], rel=1e-6), step


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  config = make_config(data_dir, tmp_path, checkpoint_every_steps=1, log_every_steps=1)
  config.optimizer.update(lr=1e30, schedule="constant")
  with pytest.raises(FloatingPointError, match=r"loss is (nan|inf) at step \d+"):
    train.run(config, tmp_path)
  step, meta = checkpoints.read_meta(tmp_path / "stage1" / "checkpoints")
  assert step is not None and not meta["final"]
  losses = [json.loads(l)["loss"] for l in (tmp_path / "stage1" / "metrics.jsonl").read_text().splitlines()]
  assert all(np.isfinite(losses)) and len(losses) == step


def test_config_errors_come_before_compiling(data_dir, tmp_path):
  with pytest.raises(ValueError, match="global_batch_size=12 must be divisible by data\\*fsdp=8"):
    train.run(make_config(data_dir, tmp_path, global_batch_size=12), tmp_path)
  with pytest.raises(ValueError, match="needs 3 devices"):
    bad_mesh = make_config(data_dir, tmp_path)
    bad_mesh.mesh.update(data=3, fsdp=1, tensor=1)
    train.run(bad_mesh, tmp_path)
  with pytest.raises(FileNotFoundError, match="no stage1 checkpoint .* run stage1 first"):
    train.run(make_config(data_dir, tmp_path / "fresh", stages_to_run="stage2"), tmp_path / "fresh")
  result = subprocess.run(_main_command(tmp_path / "cli", "--config.optimizer.lrr=1"), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2 and "no field" in result.stderr and "lrr" in result.stderr
  result = subprocess.run(_main_command("gs://my-bucket/demo"), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "give a local --workdir (got gs://my-bucket/demo)" in result.stderr


def test_demo_three_stages_loss_goes_down_and_export_loads(three_stages):
  _, workdir, summaries = three_stages
  for name, s in summaries.items():
    losses = np.array(s["losses"])
    assert losses[-5:].mean() < 0.9 * losses[:5].mean(), (name, losses)
  exported_config, params = load_converted(workdir / "stage3" / "export")
  assert exported_config.visual_input == "all"
  from tests.test_model import random_batch
  batch = random_batch(exported_config)
  logits = jax.jit(lambda p, x: Lion(exported_config).apply({"params": p}, x))(params, batch)
  assert np.isfinite(np.asarray(logits)).all()
  assert (workdir / "stage3" / "export" / "tokenizer" / "spiece.model").exists()
  metrics = [json.loads(l) for l in (workdir / "stage3" / "metrics.jsonl").read_text().splitlines()]
  assert {"loss", "loss_image_level", "loss_region_level", "learning_rate", "grad_norm", "param_norm",
          "examples_per_s", "tokens_per_s", "data/synthetic_image/seen"} <= set(metrics[-1])
  assert list((workdir / "stage3" / "tb").glob("events.out.tfevents.*"))
