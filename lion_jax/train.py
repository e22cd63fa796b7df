"""The trainer: one function per stage, readable top to bottom.

  mesh -> model, data sources, evaluators and the abstract state -> resume from the newest intact
  checkpoint, else frozen towers and trainables (pretrained, previous stages) -> data from the
  resumed step -> compiled step -> loop (metrics, evaluations, checkpoints, NaN guard, SIGTERM) ->
  final checkpoint (+ export)

Frozen towers (ViT, T5 body) and trainables are two trees: the step differentiates and updates the
trainables only, so frozen weights get no optimizer state, no weight decay and no writes, and are
never saved in a stage checkpoint. The state is donated to the step. Each process prepares its rows
of the global batch (the same examples on any number of processes) and they become one global
array. The dropout key of step s is fold_in(seed, s), so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from lion_jax import checkpoints, optim, paths, run_config, sharding, stages
from lion_jax.convert.converted import load_converted, save_converted
from lion_jax.data import contract, pipeline
from lion_jax.errors import UserError
from lion_jax.evaluation.evaluators import format_scalars, make_evaluators, run_all
from lion_jax.flops import matmul_flops
from lion_jax.loss import loss_and_metrics
from lion_jax.metrics import MetricWriter, Progress
from lion_jax.models import VISUAL_INPUTS, Lion, example_batch, layer_stack, param_paths
from lion_jax.models.param_paths import TASK_LEVELS, flatten, merge, unflatten
from lion_jax.preemption import PreemptionWatch

log = logging.getLogger(__name__)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trainable parameters only
  opt_state: Any


def make_train_step(model: Lion, tx: optax.GradientTransformation, schedule, grad_accum_steps: int, seed: int):
  """(state, frozen, batch) -> (state, metrics); gradients over `grad_accum_steps` micro-batches."""

  def micro_grads(params, frozen, batch, rng):
    def loss_fn(p):
      logits = model.apply({"params": merge(p, frozen)}, batch, train=True, rngs={"dropout": rng})
      return loss_and_metrics(logits, batch)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    return grads, metrics

  def step_fn(state: TrainState, frozen, batch):
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    if grad_accum_steps == 1:
      grads, metrics = micro_grads(state.params, frozen, batch, rng)
    else:
      micro = jax.tree.map(lambda x: x.reshape(grad_accum_steps, -1, *x.shape[1:]), batch)

      def body(carry, xs):
        i, mb = xs
        g, m = micro_grads(state.params, frozen, mb, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (g, m)), None

      zeros = jax.tree.map(
        jnp.zeros_like,
        jax.eval_shape(lambda: micro_grads(state.params, frozen, jax.tree.map(lambda x: x[0], micro), rng)),
      )
      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    # Micro-batch gradients are of per-micro-batch token means; the reported loss is the token mean.
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss = metrics["loss_sum"] / jnp.maximum(metrics["tokens"], 1.0)
    metrics = {
      **metrics,
      "loss": loss,
      "grad_norm": optax.tree.norm(grads),
      "param_norm": optax.tree.norm(params),
      "learning_rate": schedule(state.step),
    }
    return TrainState(state.step + 1, params, opt_state), metrics

  return step_fn


# ----------------------------------------------------------------------------- validation ---


def check_config(config: ml_collections.ConfigDict, stage_name: str, mesh, process_count: int) -> None:
  """Errors a user can fix, raised before anything is compiled."""
  stage = config.stages[stage_name]
  if stage.visual_input not in VISUAL_INPUTS:
    raise UserError(f"stages.{stage_name}.visual_input={stage.visual_input!r}; expected one of {VISUAL_INPUTS}")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.global_batch_size % (batch_shards * config.grad_accum_steps):
    raise UserError(
      f"global_batch_size={config.global_batch_size} must be divisible by data*fsdp="
      f"{batch_shards} times grad_accum_steps={config.grad_accum_steps}"
    )
  if config.global_batch_size % process_count:
    raise UserError(f"global_batch_size={config.global_batch_size} must be divisible by the {process_count} processes")
  if not stage.mixture:
    raise UserError(f"stages.{stage_name}.mixture is empty: give at least one data source and weight")
  own_pretrained = stage.get("pretrained", "")
  if config.get("require_pretrained") and not (own_pretrained or config.pretrained):
    raise UserError(
      f"{stage_name} would start a {config.model.t5.num_layers}-layer T5 and its ViT from random "
      f"weights: set --config.pretrained=CONVERTED_DIR (python -m lion_jax.convert), or "
      f"--config.pretrained=random to train from scratch on purpose"
    )


def warn_cpu_collective_order(config: ml_collections.ConfigDict, mesh) -> None:
  """Warns before a simulated multi-host CPU run that XLA's CPU runtime may abort: with scanned
  layers it can issue a loop body's independent collectives (the per-layer gathers of parameters
  sharded over fsdp or tensor) in a different order on two devices of one process, and Gloo then
  fails with "Received data size doesn't match expected size. Is there a distributed collective
  mismatch". Seen with jaxlib 0.10.2 on 4 processes x 2 devices, demo stage 1 from the pretraining
  export: 7 of 7 runs on mesh data=4, fsdp=2 aborted in the first steps; data=8 (2 runs), one device
  per process (1) and unrolled layers (1) finished. The pretraining stage (no frozen towers) has not
  aborted on that mesh in any run so far; launch/README.md.
  TPU and GPU runtimes issue a program's collectives in order on their streams; only the CPU
  backend is warned about."""
  if jax.process_count() == 1 or jax.default_backend() != "cpu" or not config.model.scan_layers:
    return
  # Parameters sharded along these axes are gathered layer by layer inside the scans; a data-only
  # mesh reduces its gradients after them.
  axes = [a for a in sharding.axes_within_a_process(mesh) if a in ("fsdp", "tensor")]
  if axes:
    log.warning(
      "mesh axes %s put several devices of one process on a sharded axis: XLA's CPU runtime may abort "
      "this multi-process run with a Gloo 'collective mismatch'. On CPU use a data-only mesh "
      "(--config.mesh.data=-1 --config.mesh.fsdp=1 --config.mesh.tensor=1), one device per process "
      "(LION_DEVICES_PER_PROCESS=1) or --config.model.scan_layers=False",
      axes,
    )


# ------------------------------------------------------------------------------ parameters ---


def abstract_state(config, stage_name: str, mesh, rules, num_steps: int):
  """A stage's train state and frozen tree as abstract arrays carrying their shardings, plus its
  optimizer: (state, frozen, tx, schedule). Nothing is allocated. The trainer fills it with values,
  the planner and the benchmarks compile the step against it."""
  model_config = stages.model_config(config, stage_name)
  rule = stages.freeze_rule(config, stage_name)
  model = Lion(model_config)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(lambda: model.init(jax.random.key(0), example_batch(model_config))["params"])
    shardings = flatten(sharding.logical_shardings(boxed, mesh, rules))
    for note in sharding.describe_fallbacks(boxed, mesh, rules):
      log.info("replicated instead of sharded (dimension not divisible): %s", note)
  frozen_dtype = jnp.dtype(config.frozen_dtype)
  flat = {
    k: jax.ShapeDtypeStruct(v.shape, frozen_dtype if rule.is_frozen(k) else v.dtype, sharding=shardings[k])
    for k, v in flatten(nn.unbox(boxed)).items()
  }
  trainable, frozen = rule.split(unflatten(flat))
  tx, schedule = optim.make_optimizer(stages.optimizer_config(config, stage_name), num_steps)
  # Optimizer moments take their parameter's sharding, counters are replicated (stated, not inferred:
  # an inferred sharding can come from a jit cache entry of another mesh).
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  opt_state = optax.tree_utils.tree_map_params(
    tx,
    lambda x, p: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=p.sharding),
    jax.eval_shape(tx.init, trainable),
    trainable,
    transform_non_params=lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
  )
  state = TrainState(jax.ShapeDtypeStruct((), jnp.int32, sharding=replicated), trainable, opt_state)
  return state, frozen, tx, schedule


def init_params(config, stage_name, mesh, rules, previous, abstract, resumed=None):
  """Sharded (trainable, frozen) values of a stage's `abstract_state` (`abstract` = its (trainable,
  frozen) abstract trees): a fresh init from `config.seed`, then the stage's pretrained converted
  checkpoint (if any) for every parameter it holds, then the earlier stages' trainables
  (`stages.handoff`), then `resumed` (the trainables a resumed stage restored from its checkpoint,
  already on their shardings), split by the stage's freezing rule; frozen parameters cast to
  `config.frozen_dtype`. `previous`: [(stage layout, adapter mode, flat trainables)].

  Loaded values are put straight onto their shardings, never compiled into the init program, and
  the init program computes only the parameters nothing loads (the rest of it is dead code to XLA):
  a stage that starts from a converted checkpoint does not create its frozen towers twice, and a
  resumed stage does not create the trainables it restored (a resumed pretraining stage compiles
  no init program at all)."""
  model_config = stages.model_config(config, stage_name)
  rule = stages.freeze_rule(config, stage_name)
  model = Lion(model_config)
  init = lambda key: model.init(key, example_batch(model_config))["params"]
  abstract = flatten(merge(*abstract))
  shardings = {k: v.sharding for k, v in abstract.items()}
  rule.check(list(abstract))
  overrides: dict[str, np.ndarray] = {}
  pretrained = stages.pretrained_dir(config, stage_name)
  if pretrained:
    _, loaded = load_converted(pretrained)
    loaded = layer_stack.to_layout(flatten(jax.device_get(loaded)), model_config)
    overrides.update({k: v for k, v in loaded.items() if k in abstract})
    _report_unused(f"{stage_name}: pretrained {pretrained}", set(loaded) - set(abstract))
    missing_frozen = sorted(k for k in abstract if rule.is_frozen(k) and k not in overrides)
    if missing_frozen:
      raise UserError(
        f"pretrained {pretrained} lacks {len(missing_frozen)} parameters that "
        f"stages.{stage_name}.frozen keeps fixed, e.g. {missing_frozen[:5]}"
      )
  # Earlier stages may have run in the other layer layout (models/layer_stack.py).
  previous = [(layout, adapters, layer_stack.to_layout(flat, model_config)) for layout, adapters, flat in previous]
  handed = stages.handoff(model_config.visual_input, model_config.adapters, previous)
  overrides.update({k: v for k, v in handed.items() if k in abstract})
  _report_unused(f"{stage_name}: earlier stages' trainables", set(handed) - set(abstract))
  for k, v in overrides.items():
    if tuple(v.shape) != abstract[k].shape:
      raise UserError(f"{k}: the loaded value has shape {tuple(v.shape)}, the model {abstract[k].shape}")
  restored = flatten(resumed) if resumed is not None else {}
  fresh = {k for k in abstract if k not in overrides and k not in restored}
  params = {}
  if fresh:
    with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
      init_fresh = lambda key: {k: v for k, v in flatten(nn.unbox(init(key))).items() if k in fresh}
      params = jax.jit(init_fresh, out_shardings={k: shardings[k] for k in fresh})(jax.random.key(config.seed))
  for k, v in overrides.items():
    if k not in restored:
      params[k] = sharding.put_host_array(np.asarray(v, abstract[k].dtype), shardings[k])
  params.update(restored)
  trainable, frozen = rule.split(unflatten(params))
  with jax.set_mesh(mesh):
    cast = lambda tree, like: jax.tree.map(lambda x, a: x.astype(a.dtype), tree, like)
    frozen_abstract = rule.split(unflatten(abstract))[1]
    frozen = jax.jit(cast, out_shardings=jax.tree.map(lambda a: a.sharding, frozen_abstract), donate_argnums=0)(
      frozen, frozen_abstract
    )
  return trainable, frozen


def _report_unused(what: str, paths: set[str]) -> None:
  """Loaded parameters this stage's model has no place for (e.g. stage 1's Q-Former in stage 2)."""
  if paths:
    modules = sorted({param_paths.module_of(p) for p in paths})
    log.info(
      "%s: %d parameters not used by this stage's model (%s), e.g. %s",
      what,
      len(paths),
      ", ".join(modules),
      sorted(paths)[:3],
    )


def trained_layout(config, stage_name: str, directory) -> tuple[str, str]:
  """(visual_input, adapters) of a finished earlier stage, as its checkpoint records them (so a stage
  config needs to define only its own stage), else as this config defines that stage."""
  _, meta = checkpoints.read_meta(directory)
  if "visual_input" in meta:
    return meta["visual_input"], meta["adapters"]
  if stage_name in config.stages:
    return config.stages[stage_name].visual_input, config.stages[stage_name].get("adapters", "moa")
  raise UserError(
    f"{directory} does not record the layout of {stage_name} and config.stages does not define "
    f"it: add stages.{stage_name} to the config"
  )


def process_rows(batch_sharding, global_batch_size: int) -> tuple[int, int]:
  """(first row, number of rows) of the global batch that this process's devices hold."""
  index_map = batch_sharding.addressable_devices_indices_map((global_batch_size,))
  rows = sorted({r for index in index_map.values() for r in range(*index[0].indices(global_batch_size))})
  if rows != list(range(rows[0], rows[-1] + 1)):
    raise UserError(
      f"process {jax.process_index()} holds rows {rows} of the batch, not one block: order the "
      f"mesh's devices by process (sharding.make_mesh does)"
    )
  return rows[0], len(rows)


def global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(batch_sharding, local[k]) for k in contract.TRAIN_KEYS}


# ---------------------------------------------------------------------------------- a stage ---


def train_stage(config: ml_collections.ConfigDict, stage_name: str, workdir: epath.Path) -> dict[str, Any]:
  """Trains (or resumes) one stage in `workdir/<stage>`; returns a summary of the run."""
  stage = config.stages[stage_name]
  stage_dir = workdir / stage_name
  num_steps = config.num_steps if config.num_steps > 0 else stage.num_steps
  mesh = sharding.make_mesh(**config.mesh)
  check_config(config, stage_name, mesh, jax.process_count())
  warn_cpu_collective_order(config, mesh)
  rules = sharding.config_rules(config)

  # The model, its evaluators, and the train state as abstract arrays with their shardings; the
  # optimizer over the trainables only.
  model_config = stages.model_config(config, stage_name)
  model = Lion(model_config)
  data_config = stages.data_config(config, stage_name)
  mixture = pipeline.load_mixture(data_config, where=f"stages.{stage_name}.mixture")  # bad data fails here
  # Evaluators (config.evals) run on the training parameters and mesh; their data fails here if wrong.
  evaluators = make_evaluators(config, model_config, data_config, num_steps)
  abstract, abstract_frozen, tx, schedule = abstract_state(config, stage_name, mesh, rules, num_steps)
  state_shard = jax.tree.map(lambda x: x.sharding, abstract)
  f_shard = jax.tree.map(lambda x: x.sharding, abstract_frozen)
  replicated = state_shard.step

  # Resume from the newest intact checkpoint of this stage, onto the current mesh; else start from
  # the pretrained towers and the earlier stages' final trainables.
  ckpt = checkpoints.StageCheckpoints(stage_dir / "checkpoints", keep=config.keep_checkpoints)
  restored = ckpt.restore_newest_intact(abstract.params, abstract.opt_state)
  finished = restored is not None and restored[2].get("final") and restored[2]["step"] >= num_steps
  if finished:
    log.info("%s: already finished (%d steps) in %s", stage_name, restored[2]["step"], ckpt.directory)
    ckpt.close()
    summary = {"stage": stage_name, "steps": int(restored[2]["step"]), "resumed_finished": True}
    if not export_due(config, stage_name, stage_dir):
      return summary  # nothing to initialise or compile: a pod re-launched in stage 3 passes the others
  previous = []
  for prev_name, prev_dir in stage.init_from.items():
    directory = (paths.as_path(prev_dir) if prev_dir else workdir / prev_name) / "checkpoints"
    trained = checkpoints.load_final_trainables(directory, prev_name)
    previous.append((*trained_layout(config, prev_name, directory), trained))
  trainable, frozen = init_params(
    config,
    stage_name,
    mesh,
    rules,
    previous,
    (abstract.params, abstract_frozen),
    resumed=None if restored is None else restored[0],
  )
  if finished:  # stopped between its final checkpoint and the end of its export
    export_stage(config, stage_dir, model_config, merge(trainable, frozen))
    return summary
  first_step, counters = 0, {}
  if restored is None:
    with jax.set_mesh(mesh):
      opt_state = jax.jit(tx.init, out_shardings=state_shard.opt_state)(trainable)
  else:
    trainable, opt_state, meta = restored
    first_step, counters = int(meta["step"]), meta.get("data_counters", {})
    log.info("%s: resumed from step %d in %s", stage_name, first_step, ckpt.directory)
  state = TrainState(sharding.put_host_array(np.asarray(first_step, np.int32), replicated), trainable, opt_state)

  # Data: this process's rows of every global batch, from global batch `first_step` on (the same
  # examples whatever the number of processes). Counters restart on process 0 with the totals.
  batch_sharding = sharding.batch_sharding(mesh, rules)
  rows = process_rows(batch_sharding, config.global_batch_size)
  data_iter = pipeline.make_iterator(
    data_config,
    config.global_batch_size,
    mixture=mixture,
    rows=rows,
    first_batch=first_step,
    seed=config.seed + zlib.crc32(stage_name.encode()) % 1000,
  )
  if jax.process_index() == 0:
    data_iter.restore_counters(counters)

  # Compile the step once, ahead of time: errors and memory show up before the loop.
  step_fn = make_train_step(model, tx, schedule, config.grad_accum_steps, config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    example = {
      k: jax.ShapeDtypeStruct((config.global_batch_size,) + v.shape[1:], v.dtype, sharding=batch_sharding)
      for k, v in contract.zeros(contract.data_spec(data_config), 1).items()
    }
    jitted = jax.jit(
      step_fn,
      in_shardings=(state_shard, f_shard, batch_sharding),
      out_shardings=(state_shard, None),
      donate_argnums=(0,),
    )
    traced = jitted.trace(state, frozen, example)
    compiled = traced.lower().compile()
  flops = matmul_flops(traced.jaxpr)

  # Loop. SIGTERM saves a checkpoint at a step every process agrees on, and the stage returns.
  writer = MetricWriter(stage_dir)
  progress = Progress(stage_name, first_step, num_steps)
  pending, last_log_time, last_log_step = [], time.perf_counter(), first_step
  losses = []
  step, preempted = first_step, False
  try:
    with PreemptionWatch() as preemption:
      while step < num_steps and not preempted:
        state, metrics = compiled(state, frozen, global_batch(next(data_iter), batch_sharding))
        step += 1
        pending.append(metrics)
        is_last = step == num_steps
        preempted = preemption.reached(step)
        if step % config.log_every_steps == 0 or is_last or step % config.checkpoint_every_steps == 0 or preempted:
          fetched = jax.device_get(pending)
          pending = []
          for offset, m in enumerate(fetched):
            if not np.isfinite(m["loss"]):
              bad_step = step - len(fetched) + offset + 1
              raise FloatingPointError(
                f"{stage_name}: loss is {m['loss']} at step {bad_step}; stopping. The last good checkpoint "
                f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept; lower optimizer.lr or check the data"
              )
          losses.extend(float(m["loss"]) for m in fetched)
          if step % config.log_every_steps == 0 or is_last:
            now = time.perf_counter()
            scalars = _summarise(fetched, now - last_log_time, step - last_log_step, config, flops, data_iter)
            last_log_time, last_log_step = now, step
            writer.write(step, scalars)
            if jax.process_index() == 0:
              log.info(progress.line(step, scalars["loss"]))
        due = [e for e in evaluators if e.due(step)] if not preempted else []
        if due:
          with jax.set_mesh(mesh):
            evaluated = run_all(due, merge(state.params, frozen))
          writer.write(step, evaluated)
          if jax.process_index() == 0:
            log.info("%s step %d: %s", stage_name, step, format_scalars(evaluated))
        if step % config.checkpoint_every_steps == 0 or is_last or preempted:
          ckpt.save(
            step,
            state.params,
            state.opt_state,
            {
              "stage": stage_name,
              "step": step,
              "num_steps": num_steps,
              "final": is_last,
              "visual_input": model_config.visual_input,
              "adapters": model_config.adapters,
              "data_counters": data_iter.global_counters(),
            },
          )
      ckpt.wait()
  finally:
    ckpt.close()
    writer.close()
    data_iter.close()
  summary = {"stage": stage_name, "steps": step, "first_step": first_step, "losses": losses, "flops_per_step": flops}
  if preempted and step < num_steps:
    log.warning(
      "%s: preempted; saved step %d in %s. Re-run the same command to resume from it", stage_name, step, ckpt.directory
    )
    return dict(summary, preempted=True)

  if export_due(config, stage_name, stage_dir):
    export_stage(config, stage_dir, model_config, merge(state.params, frozen))
  return summary


def export_due(config, stage_name: str, stage_dir: epath.Path) -> bool:
  """Whether the stage exports (stages.<name>.export) and its export is not complete yet: Orbax
  commits `params` by renaming a finished temporary directory, so an existing `params` is whole."""
  wanted = config.stages[stage_name].get("export") and config.export_dir_name
  return bool(wanted) and not (stage_dir / config.export_dir_name / "params").exists()


def export_stage(config, stage_dir: epath.Path, model_config, params) -> None:
  """The stage's parameters as a converted checkpoint in `stage_dir/<export_dir_name>`, with its
  tokenizers: what the next stage, `lion_jax.evaluate` and serving load. Every process saves its shards."""
  save_converted(
    stage_dir / config.export_dir_name,
    model_config,
    params,
    t5_vocab=config.data.t5_vocab or None,
    bert_vocab=config.data.bert_vocab or None,
    sources={"trained": str(stage_dir)},
  )


def _summarise(fetched, seconds, steps, config, flops, data_iter) -> dict[str, float]:
  """Averages of the fetched steps plus throughput, FLOP rate / MFU and data counters."""
  total = lambda k: float(sum(m[k] for m in fetched))
  scalars = {"loss": total("loss_sum") / max(total("tokens"), 1.0)}
  for name in TASK_LEVELS:
    if total(f"tokens_{name}") > 0:
      scalars[f"loss_{name}"] = total(f"loss_sum_{name}") / total(f"tokens_{name}")
  last = fetched[-1]
  scalars.update(
    learning_rate=float(last["learning_rate"]), grad_norm=float(last["grad_norm"]), param_norm=float(last["param_norm"])
  )
  step_time = seconds / max(steps, 1)
  scalars["step_time_s"] = step_time
  scalars["examples_per_s"] = config.global_batch_size / step_time
  scalars["tokens_per_s"] = total("tokens") / len(fetched) / step_time
  if flops:
    scalars["flops_per_s_per_device"] = flops / step_time / jax.device_count()  # `flops`: the global step's
    if config.peak_flops_per_device:
      scalars["mfu"] = scalars["flops_per_s_per_device"] / config.peak_flops_per_device
  for source, counts in data_iter.global_counters().items():
    for k, v in counts.items():
      scalars[f"data/{source}/{k}"] = v
  return scalars


# ------------------------------------------------------------------------------------- run ---


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Runs `config.run_stages` in order, each in `workdir/<stage>` (local or `gs://`); re-running resumes."""
  workdir = paths.as_path(workdir)
  run_config.adopt_pretrained_model(config)
  names = [s.strip() for s in config.run_stages.split(",") if s.strip()]
  unknown = [n for n in names if n not in config.stages]
  if unknown:
    raise UserError(f"run_stages names {unknown}, which config.stages does not define ({sorted(config.stages)})")
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  summaries = []
  for name in names:
    summaries.append(train_stage(config, name, workdir))
    if summaries[-1].get("preempted"):
      break
  return summaries
