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
from lion_jax.data import contract
from lion_jax.demo import prepare_synthetic_data
from lion_jax.models import Lion, param_paths

REPO = Path(__file__).resolve().parents[1]


STEPS = 30  # every run below uses the same schedule length, so compiled programs are shared


DEMO_ARGS = "images=40,eval=0,size=tiny"  # the demo config with the test preset's towers


def make_config(data_dir: Path, workdir: Path, *, steps=STEPS, stages_to_run="stage1", eval_limit=0, **overrides):
  """The demo config at test size (every stage `steps` long), reading the shared synthetic dataset
  (the `data_dir` fixture; it and `three_stages` are session fixtures in conftest.py)."""
  config = demo.get_config(DEMO_ARGS.replace("eval=0", f"eval={eval_limit}"))
  config.num_steps = steps
  config.run_stages = stages_to_run
  config.update(overrides)
  workdir.mkdir(parents=True, exist_ok=True)
  if not (workdir / "data").exists():
    (workdir / "data").symlink_to(data_dir)
  prepare_synthetic_data(config, workdir)
  return config


def flat(tree):
  return param_paths.flatten(jax.device_get(tree))


def saved_paths(step_dir: Path, item: str) -> list[str]:
  """The '/'-joined paths of the arrays a checkpoint item holds (read from its metadata)."""
  with ocp.StandardCheckpointer() as ckptr:
    tree = ckptr.metadata(step_dir / item).item_metadata.tree
  return [
    "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
  ]


def init_stage(config, stage, mesh, previous=(), rules=sharding.DEFAULT_RULES):
  """A stage's initial (trainable, frozen) values, its abstract state and its optimizer."""
  abstract, abstract_frozen, tx, schedule = train.abstract_state(config, stage, mesh, rules, 10)
  trainable, frozen = train.init_params(config, stage, mesh, rules, list(previous), (abstract.params, abstract_frozen))
  return trainable, frozen, abstract, tx, schedule


def final_trainables(workdir: Path, stage="stage1"):
  return checkpoints.load_final_trainables(workdir / stage / "checkpoints", stage)


def test_one_step_on_a_2x2x2_mesh_equals_one_device(data_dir, tmp_path):
  config = make_config(data_dir, tmp_path)
  model_config = stages.model_config(config, "stage1")
  from lion_jax.data import pipeline

  batch = {
    k: v
    for k, v in next(pipeline.make_iterator(stages.data_config(config, "stage1"), 16)).items()
    if k in contract.TRAIN_KEYS
  }
  losses, params_after = [], []
  for mesh in (sharding.make_mesh(2, 2, 2), sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])):
    trainable, frozen, abstract, tx, schedule = init_stage(config, "stage1", mesh)
    t_shard = jax.tree.map(lambda a: a.sharding, abstract.params)
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
  _, frozen_init, *_ = init_stage(config, "stage3", sharding.make_mesh(**config.mesh))
  _, exported = load_converted(workdir / "stage3" / "export")
  exported = flat(exported)
  for k, v in flat(frozen_init).items():  # bitwise: no update, no weight decay ever reached them
    np.testing.assert_array_equal(exported[k], v, err_msg=f"frozen {k} changed")
  for stage in ("stage1", "stage2", "stage3"):
    step_dir = workdir / stage / "checkpoints" / str(STEPS)
    for item in ("trainable", "opt_state"):
      paths = saved_paths(step_dir, item)
      assert paths, (stage, item)
      for p in paths:
        assert "vit/" not in p and not ("t5/" in p and "/moa/" not in p), (stage, item, p)
        assert not param_paths.LION.is_frozen(p), (stage, item, p)


def test_stage_handoff_maps_adapters_branches_and_gates():
  stage1 = {
    "qformer/proj/kernel": np.full((2, 2), 1.0),
    "soft_prompt": np.full((4,), 1.0),
    "t5/encoder/layers_0/moa/adapter_0/down/kernel": np.full((4, 2), 1.0),
  }
  stage2 = {
    "aggregator/proj_in/kernel": np.full((2, 2), 2.0),
    "soft_prompt": np.full((4,), 2.0),
    "t5/encoder/layers_0/moa/adapter_0/down/kernel": np.full((4, 2), 2.0),
  }
  out = stages.handoff("all", "moa", [("qformer", "moa", stage1), ("aggregator", "moa", stage2)])
  assert out["t5/encoder/layers_0/moa/adapter_1/down/kernel"][0, 0] == 1.0  # image-level from stage 1
  assert out["t5/encoder/layers_0/moa/adapter_0/down/kernel"][0, 0] == 2.0  # region-level from stage 2
  assert out["qformer/proj/kernel"][0, 0] == 1.0 and out["aggregator/proj_in/kernel"][0, 0] == 2.0
  assert out["soft_prompt"][0] == 2.0
  assert not any("gate" in k for k in out)  # gates keep their one-hot init
  # Stage 2's single adapter is the region-level one: stage 1's image-level adapter has no place
  # there; its Q-Former is carried (and dropped by the trainer, as stage 2's model has none).
  assert stages.handoff("aggregator", "moa", [("qformer", "moa", stage1)]) == {
    k: v for k, v in stage1.items() if "/moa/" not in k
  }
  # A shared adapter (the single-adapter ablation) serves both levels: it is carried as it is.
  shared = stages.handoff("all", "single", [("qformer", "single", stage1), ("aggregator", "single", stage2)])
  assert shared["t5/encoder/layers_0/moa/adapter_0/down/kernel"][0, 0] == 2.0  # the later stage wins
  assert "t5/encoder/layers_0/moa/adapter_1/down/kernel" not in shared
  back = stages.handoff("qformer", "moa", [("all", "moa", out)])
  assert back["t5/encoder/layers_0/moa/adapter_0/down/kernel"][0, 0] == 1.0  # the image-level adapter
  assert "t5/encoder/layers_0/moa/adapter_1/down/kernel" not in back


def test_stage3_starts_from_stage1_and_stage2(three_stages):
  config, workdir, _ = three_stages
  s1, s2 = final_trainables(workdir, "stage1"), final_trainables(workdir, "stage2")
  trainable, *_ = init_stage(
    config, "stage3", sharding.make_mesh(**config.mesh), [("qformer", "moa", s1), ("aggregator", "moa", s2)]
  )
  t = flat(trainable)
  key = "t5/decoder/layers/moa/adapter_{}/up/kernel"  # scanned: every decoder layer's, stacked
  np.testing.assert_array_equal(t[key.format(1)], s1[key.format(0)])
  np.testing.assert_array_equal(t[key.format(0)], s2[key.format(0)])
  assert np.abs(s1[key.format(0)]).max() > 0 and np.abs(s2[key.format(0)]).max() > 0  # trained, not zero init
  np.testing.assert_array_equal(
    t["qformer/encoder/layers/layers_0/query_ffn/fc1/kernel"],
    s1["qformer/encoder/layers/layers_0/query_ffn/fc1/kernel"],
  )
  np.testing.assert_array_equal(t["aggregator/out_norm/scale"], s2["aggregator/out_norm/scale"])
  gate = t["t5/encoder/layers/moa/gate_1"][0]  # the first layer's
  np.testing.assert_array_equal(gate, np.stack([np.zeros(gate.shape[1]), np.ones(gate.shape[1])]))


class _Started(Exception):
  """Stops a stage right after its initial values are made."""


def test_stage3_starts_from_stage2s_region_level_and_stage1s_image_level_parts(three_stages, tmp_path, monkeypatch):
  """Stage 3 of the demo config started as `train.run` starts it (its `init_from` read from the
  config, the earlier stages' final checkpoints from disk): every aggregator and region-level adapter
  value is stage 2's final one, every Q-Former and image-level adapter value stage 1's."""
  config, workdir, _ = three_stages
  for name in ("data", "stage1", "stage2"):
    (tmp_path / name).symlink_to(workdir / name)
  started, real_init_params = {}, train.init_params

  def init_then_stop(*args, **kwargs):
    started["trainable"], _ = real_init_params(*args, **kwargs)
    raise _Started

  monkeypatch.setattr(train, "init_params", init_then_stop)
  stage3 = config.copy_and_resolve_references()
  stage3.run_stages = "stage3"
  with pytest.raises(_Started):
    train.run(stage3, tmp_path)
  initial = flat(started["trainable"])
  s1, s2 = final_trainables(workdir, "stage1"), final_trainables(workdir, "stage2")
  expected = {
    **{k: v for k, v in s1.items() if k.startswith("qformer/")},
    **{k: v for k, v in s2.items() if k.startswith("aggregator/")},
  }
  for stage_final, level in ((s1, param_paths.IMAGE_LEVEL), (s2, param_paths.REGION_LEVEL)):
    expected.update(
      {param_paths.rename_adapter(k, level): v for k, v in stage_final.items() if param_paths.adapter_index(k) == 0}
    )  # a single-adapter stage trains adapter_0
  handed = [k for k in initial if k.startswith(("qformer/", "aggregator/")) or param_paths.adapter_index(k) is not None]
  assert sorted(handed) == sorted(expected)
  for k, v in expected.items():
    np.testing.assert_array_equal(initial[k], v, err_msg=k)


def test_resume_on_a_different_mesh_continues_the_run(data_dir, three_stages, tmp_path):
  """Saved on 8 devices as (8, 1, 1) at step 10, resumed as (2, 2, 2): same losses and parameters."""
  _, workdir, summaries = three_stages
  shutil.copytree(workdir / "stage1" / "checkpoints", tmp_path / "stage1" / "checkpoints")
  for step_dir in (tmp_path / "stage1" / "checkpoints").iterdir():
    if step_dir.name.isdigit() and int(step_dir.name) > 10:
      shutil.rmtree(step_dir)
  config = make_config(data_dir, tmp_path, pretrained=str(workdir / "pretrain" / "export"))
  config.mesh.update(data=2, fsdp=2, tensor=2)
  resumed = train.run(config, tmp_path)[0]
  assert resumed["first_step"] == 10
  np.testing.assert_allclose(resumed["losses"], summaries["stage1"]["losses"][10:], rtol=1e-4)
  a, b = final_trainables(workdir), final_trainables(tmp_path)
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-3, atol=1e-5, err_msg=k)


def test_a_finished_stage_is_passed_and_a_cut_off_export_is_written(data_dir, three_stages, tmp_path, monkeypatch):
  """Re-launched after its final checkpoint: stage 3 without its export (the job stopped before it
  was written) writes it, equal to the uninterrupted run's; with its export it is passed without
  initialising anything (a pod re-launched in stage 3 does not rebuild stages 1 and 2)."""
  _, workdir, _ = three_stages
  for stage in ("stage1", "stage2", "stage3"):
    shutil.copytree(workdir / stage / "checkpoints", tmp_path / stage / "checkpoints")
  config = make_config(data_dir, tmp_path, stages_to_run="stage3", pretrained=str(workdir / "pretrain" / "export"))
  (summary,) = train.run(config, tmp_path)
  assert summary == {"stage": "stage3", "steps": STEPS, "resumed_finished": True}
  _, want = load_converted(workdir / "stage3" / "export")
  _, got = load_converted(tmp_path / "stage3" / "export")
  want, got = flat(want), flat(got)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)

  def refuse(*args, **kwargs):
    raise AssertionError("a finished stage with its export initialised its parameters")

  monkeypatch.setattr(train, "init_params", refuse)
  assert train.run(config, tmp_path) == [summary]


def test_a_resumed_stage_does_not_create_what_it_restored(data_dir, tmp_path):
  """Pretraining trains every parameter: resumed, its init takes the restored arrays as they are
  (on their shardings, not copied) and creates nothing."""
  config = make_config(data_dir, tmp_path)
  mesh = sharding.make_mesh(2, 2, 2)
  abstract, abstract_frozen, *_ = train.abstract_state(config, "pretrain", mesh, sharding.DEFAULT_RULES, 10)
  restored = jax.tree.map(lambda a: jax.device_put(np.full(a.shape, 0.5, a.dtype), a.sharding), abstract.params)
  trainable, frozen = train.init_params(
    config, "pretrain", mesh, sharding.DEFAULT_RULES, [], (abstract.params, abstract_frozen), resumed=restored
  )
  assert jax.tree.leaves(frozen) == []
  got, want = param_paths.flatten(trainable), param_paths.flatten(restored)
  assert got.keys() == want.keys() and all(got[k] is want[k] for k in want)


def _main_command(workdir: Path | str, *overrides: str) -> list[str]:
  return [
    sys.executable,
    "-m",
    "lion_jax.main",
    f"--config={REPO / 'configs' / 'demo.py'}:{DEMO_ARGS}",
    f"--workdir={workdir}",
    "--config.run_stages=stage1",
    f"--config.num_steps={STEPS}",
    *overrides,
  ]


def _wait_for_step(workdir: Path, proc: subprocess.Popen, step: int, what: str) -> None:
  """Until the stage's metrics log `step` (log_every_steps=1) or the process exits."""
  metrics = workdir / "stage1" / "metrics.jsonl"
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    if metrics.exists() and any(json.loads(l).get("step", 0) >= step for l in metrics.read_text().splitlines()):
      return
    time.sleep(0.05)
  raise AssertionError(f"{what}: the run exited ({proc.poll()}) or timed out before step {step}")


def test_sigterm_kill_9_and_a_damaged_checkpoint_all_resume_to_the_uninterrupted_run(data_dir, three_stages, tmp_path):
  """A pod's life on one run: SIGTERM (preemption) saves at the next step and exits 0; the resumed
  run is killed with -9 anywhere; its newest checkpoint is then truncated (a full disk) and moved
  aside on resume; the run still ends with the uninterrupted run's losses and weights."""
  _, straight, summaries = three_stages
  expected = summaries["stage1"]["losses"]
  workdir = tmp_path / "interrupted"
  workdir.mkdir()
  (workdir / "data").symlink_to(data_dir)
  command = _main_command(
    workdir,
    "--config.checkpoint_every_steps=5",
    "--config.log_every_steps=1",
    "--config.keep_checkpoints=10",
    f"--config.pretrained={straight / 'pretrain' / 'export'}",
  )
  ckpt_dir = workdir / "stage1" / "checkpoints"

  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  _wait_for_step(workdir, proc, 2, "before SIGTERM")
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 0, stderr[-3000:]
  preempted_at, meta = checkpoints.read_meta(ckpt_dir)
  assert 2 <= preempted_at < STEPS and not meta["final"], (preempted_at, meta)
  assert f"preempted; saved step {preempted_at}" in stderr

  proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None and (checkpoints.read_meta(ckpt_dir)[0] or 0) < 15:
    time.sleep(0.05)
  os.kill(proc.pid, signal.SIGKILL)  # wherever it is: mid-step, mid-save, ...
  proc.wait()
  killed_at = checkpoints.read_meta(ckpt_dir)[0]
  assert killed_at is not None and 15 <= killed_at < STEPS, f"the run finished before the kill ({killed_at})"

  for file in (ckpt_dir / str(killed_at)).rglob("*"):
    if file.is_file():
      file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])  # half written, as on a full disk
  result = subprocess.run(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"checkpoint {ckpt_dir}/{killed_at} is damaged" in result.stderr
  assert [p.name.split("-")[0] for p in (workdir / "stage1" / "damaged_checkpoints").iterdir()] == [str(killed_at)]
  a, b = final_trainables(straight), final_trainables(workdir)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  logged = {}
  for line in (workdir / "stage1" / "metrics.jsonl").read_text().splitlines():
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
  result = subprocess.run(
    _main_command(tmp_path / "cli", "--config.optimizer.lrr=1"), cwd=REPO, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 2 and "no field" in result.stderr and "lrr" in result.stderr
  result = subprocess.run(_main_command("gs://my-bucket/demo"), cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "give a local --workdir (got gs://my-bucket/demo)" in result.stderr


def test_demo_three_stages_loss_goes_down_and_export_loads(three_stages):
  _, workdir, summaries = three_stages
  for name, s in summaries.items():
    losses = np.array(s["losses"])
    if name == "pretrain":  # fresh towers: the loss must fall
      assert losses[-5:].mean() < 0.9 * losses[:5].mean(), (name, losses)
    elif name == "stage2":  # a fresh region-level adapter on the pretrained aggregator: the loss falls
      assert losses[-5:].mean() < losses[:5].mean(), (name, losses)
    else:  # stages 1 and 3 start from trained branches: the loss must not climb (noisy at batch 16)
      assert losses[-10:].mean() < 1.2 * losses[:10].mean(), (name, losses)
  exported_config, params = load_converted(workdir / "stage3" / "export")
  assert exported_config.visual_input == "all"
  from tests.test_model import random_batch

  batch = random_batch(exported_config)
  logits = jax.jit(lambda p, x: Lion(exported_config).apply({"params": p}, x))(params, batch)
  assert np.isfinite(np.asarray(logits)).all()
  assert (workdir / "stage3" / "export" / "tokenizer" / "spiece.model").exists()
  metrics = [json.loads(l) for l in (workdir / "stage3" / "metrics.jsonl").read_text().splitlines()]
  training_rows = [m for m in metrics if "loss" in m]  # evaluation rows are separate
  assert {
    "loss",
    "loss_image_level",
    "loss_region_level",
    "learning_rate",
    "grad_norm",
    "param_norm",
    "examples_per_s",
    "tokens_per_s",
    "data/synthetic_image/seen",
  } <= set(training_rows[-1])
  assert list((workdir / "stage3" / "tb").glob("events.out.tfevents.*"))


def test_every_stage_logs_its_evaluations(three_stages):
  _, workdir, _ = three_stages
  for stage in ("pretrain", "stage1", "stage2", "stage3"):
    rows = [json.loads(l) for l in (workdir / stage / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in rows if any(k.startswith("eval/") for k in r)]
    assert [r["step"] for r in evaluated] == [STEPS], stage  # every_steps=0: once, at the end
    keys = set(evaluated[0])
    assert {
      "eval/synthetic_caption/CIDEr",
      "eval/synthetic_vqa/accuracy",
      "eval/synthetic_rec/accuracy",
      "eval/image_level/loss",
      "eval/region_level/loss",
      "eval/synthetic_vqa/seconds",
      "eval/synthetic_vqa/accuracy_blind",
      "eval/validation/image_level/image_gain",
      "eval/validation/region_level/image_gain",
    } <= keys, stage
    assert 0 <= evaluated[0]["eval/synthetic_vqa/accuracy"] <= 100
    assert np.isfinite(evaluated[0]["eval/region_level/loss"]) and evaluated[0]["eval/region_level/loss"] > 0


def test_evaluators_score_as_the_evaluate_cli(three_stages, tmp_path):
  """The training evaluators and `python -m lion_jax.evaluate` on the same records and parameters."""
  from lion_jax import run_config
  from lion_jax.evaluation import benchmarks, evaluators, runner

  config, workdir, _ = three_stages
  export = workdir / "stage3" / "export"
  model_config, params = load_converted(export)
  val = dict(records=str(workdir / "data" / "val.jsonl"), image_root=str(workdir / "data"))
  for task, kind in (("caption", "caption"), ("vqa", "exact_match"), ("rec", "rec")):
    spec = run_config.evaluator(kind, tasks=[task], limit=12, **val)
    ours = evaluators.Evaluator(f"synthetic_{task}", spec, model_config, stages.data_config(config, "stage3"), 1)
    scalars = ours.run(params)
    cli = benchmarks.synthetic_eval_config(task)
    cli.update(limit=12, **val)
    scores = runner.run_benchmark(cli, export, tmp_path)
    for metric, value in scores.items():
      assert scalars[f"eval/synthetic_{task}/{metric}"] == pytest.approx(value, abs=1e-9), (task, metric)
    assert (tmp_path / f"synthetic_{task}_results.json").exists()


def test_validation_loss_is_the_training_loss_per_task_level(three_stages):
  """The loss evaluator against the training loss function on the same prepared examples."""
  from lion_jax import run_config
  from lion_jax.data import pipeline
  from lion_jax.evaluation import evaluators
  from lion_jax.loss import loss_and_metrics

  config, workdir, _ = three_stages
  model_config, params = load_converted(workdir / "stage3" / "export")
  data_config = stages.data_config(config, "stage3")
  spec = run_config.evaluator(
    "loss", records=str(workdir / "data" / "val.jsonl"), image_root=str(workdir / "data"), limit=21, batch_size=8
  )  # 21: a padded last batch
  ev = evaluators.Evaluator("validation", spec, model_config, data_config, 1)
  scalars = ev.run(params)
  preparer = pipeline.ExamplePreparer(ev.source, 0, data_config, ev.t5, ev.bert)
  examples = [preparer(i, None) for i in range(21)]
  batch = {k: np.stack([e[k] for e in examples]) for k in contract.TRAIN_KEYS}
  logits = Lion(model_config).apply({"params": params}, batch)
  _, m = loss_and_metrics(logits, batch)
  levels = {("image_level" if e["task"] == 1 else "region_level") for e in examples}
  assert levels == {"image_level", "region_level"}
  for level in levels:
    expected = float(m[f"loss_sum_{level}"] / m[f"tokens_{level}"])
    assert scalars[f"eval/{level}/loss"] == pytest.approx(expected, rel=1e-5), level


def test_demo_report_table_curves_and_results(three_stages, capsys):
  from lion_jax.demo import evaluate_export

  config, workdir, _ = three_stages
  rows = evaluate_export(config, workdir)
  out = capsys.readouterr().out
  results = json.loads((workdir / "results.json").read_text())
  assert set(results) == {"synthetic_caption", "synthetic_vqa", "synthetic_rec", "validation"} and results == rows
  assert {"CIDEr", "CIDEr_blind"} <= set(results["synthetic_caption"])
  assert set(results["synthetic_rec"]) == {"accuracy", "accuracy_blind"}
  assert {"image_level/image_gain", "region_level/image_gain", "region_level/loss"} <= set(results["validation"])
  for name in ("synthetic_vqa", "synthetic_vqa_blind"):
    assert (workdir / "eval" / f"{name}_predictions.jsonl").exists()
  table = out[out.index("stage ") :].splitlines()
  assert table[0].split() == ["stage", "CIDEr", "blind", "VQA", "blind", "REC", "blind", "img_gain", "reg_gain"]
  assert [line.split()[0] for line in table[1:5]] == ["pretrain", "stage1", "stage2", "stage3"]
  stage3_row = [json.loads(l) for l in (workdir / "stage3" / "metrics.jsonl").read_text().splitlines()][-1]
  for column, key in ((3, "accuracy"), (4, "accuracy_blind")):
    assert float(table[4].split()[column]) == pytest.approx(stage3_row[f"eval/synthetic_vqa/{key}"], abs=0.01)
  assert float(table[4].split()[8]) == pytest.approx(stage3_row["eval/validation/region_level/image_gain"], abs=0.01)
  from PIL import Image

  with Image.open(workdir / "curves.png") as image:
    assert image.format == "PNG" and image.size[0] > 500


def test_finetune_config_starts_from_a_converted_lion_checkpoint(data_dir, three_stages, tmp_path):
  from configs import finetune

  _, workdir, _ = three_stages
  export = workdir / "stage3" / "export"
  config = finetune.get_config()
  train_records = str(data_dir / "train.jsonl")
  for level in ("image_level", "region_level"):
    config.data.sources[level].update(records=train_records, image_root=str(data_dir))
  config.update(pretrained=str(export), num_steps=3, global_batch_size=8, log_every_steps=1)
  config.data.update(max_input_len=96, max_target_len=24, max_qformer_len=48)
  config.model.dtype = "float32"
  config.frozen_dtype = "float32"
  summary = train.run(config, tmp_path)[0]
  assert config.model.t5.d_model == load_converted(export)[0].t5.d_model  # dims from the checkpoint
  assert config.data.t5_vocab == str(export / "tokenizer" / "spiece.model")
  assert summary["steps"] == 3 and np.isfinite(summary["losses"]).all()
  rows = [json.loads(l) for l in (tmp_path / "finetune" / "metrics.jsonl").read_text().splitlines()]
  assert rows[-1]["data/image_level/seen"] > 0 and rows[-1]["data/region_level/seen"] > 0
  # Started from the export: 3 AdamW steps at lr 1e-5 move each trainable by at most ~3e-5.
  tuned = checkpoints.load_final_trainables(tmp_path / "finetune" / "checkpoints", "finetune")
  _, exported = load_converted(export)
  exported = flat(exported)
  for k, v in tuned.items():
    np.testing.assert_allclose(v, exported[k], atol=1e-4, err_msg=k)
  with pytest.raises(ValueError, match="model_from_pretrained needs --config.pretrained"):
    train.run(finetune.get_config(), tmp_path / "none")


def test_pretrain_trains_everything_and_the_stages_load_its_export(three_stages):
  config, workdir, _ = three_stages
  export = workdir / "pretrain" / "export"
  exported_config, exported = load_converted(export)
  exported = flat(exported)
  trained = final_trainables(workdir, "pretrain")
  assert set(trained) == set(exported)  # nothing frozen: everything is trained, saved and exported
  assert any(k.startswith("vit/") for k in trained) and any(k.startswith("t5/encoder/layers/ffn/") for k in trained)
  assert not any("/moa/" in k or k == "soft_prompt" for k in exported)
  assert any(k.startswith("aggregator/") for k in exported)  # the `all` layout: the T5 reads patch tokens
  assert exported_config.adapters == "none" and exported_config.use_soft_prompt is False
  assert config.pretrained == str(export)  # set by the demo's data step, read by stages 1-3

  # Stage 1 starts from the export as from a converted InstructBLIP: every frozen tower parameter is
  # the export's (a fresh init of the same seed differs), and the Q-Former trains on from its value.
  trainable, frozen, *_ = init_stage(config, "stage1", sharding.make_mesh(**config.mesh))
  frozen = flat(frozen)
  assert frozen and all(np.array_equal(v, exported[k]) for k, v in frozen.items())
  trainable = flat(trainable)
  qformer = [k for k in trainable if k.startswith("qformer/")]
  assert qformer and all(np.array_equal(trainable[k], exported[k]) for k in qformer)
  fresh = config.copy_and_resolve_references()
  fresh.pretrained = "random"
  _, frozen_random, *_ = init_stage(fresh, "stage1", sharding.make_mesh(**config.mesh))
  key = "vit/blocks/fc1/kernel"
  assert not np.array_equal(flat(frozen_random)[key], exported[key])
  s1 = final_trainables(workdir, "stage1")
  assert not np.array_equal(s1[qformer[0]], exported[qformer[0]])  # and trained on from there
  # Stage 2's aggregator starts from the pretrained one, which the frozen T5 learnt to read.
  trainable, *_ = init_stage(config, "stage2", sharding.make_mesh(**config.mesh))
  aggregator = {k: v for k, v in flat(trainable).items() if k.startswith("aggregator/")}
  assert aggregator and all(np.array_equal(v, exported[k]) for k, v in aggregator.items())
