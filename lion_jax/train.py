"""The trainer: one function per stage, readable top to bottom.

  mesh -> model and shardings -> frozen towers and trainables (pretrained, previous stages) ->
  optimizer -> resume from the newest checkpoint -> data -> compiled step -> loop (metrics,
  checkpoints, NaN guard) -> final checkpoint (+ export)

Frozen towers (ViT, T5 body) and trainables are two trees: the step differentiates and updates the
trainables only, so frozen weights get no optimizer state, no weight decay and no writes, and are
never saved in a stage checkpoint. The state is donated to the step. Batches become global arrays
from each host's shard. The dropout key of step s is fold_in(seed, s), so a resumed run repeats an
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
from flax import traverse_util

from lion_jax import checkpoints, optim, paths, sharding, stages
from lion_jax.convert.converted import load_converted, save_converted
from lion_jax.data import pipeline
from lion_jax.metrics import MetricWriter, Progress
from lion_jax.models import VISUAL_INPUTS, Lion, example_batch, is_frozen

log = logging.getLogger(__name__)

DEVICE_KEYS = pipeline.MODEL_KEYS + ("target_ids", "target_mask")


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class TrainState:
  step: jax.Array
  params: Any  # trainable parameters only
  opt_state: Any


# ------------------------------------------------------------------------------ tree helpers ---

def flatten(tree) -> dict[str, Any]:
  return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat: dict[str, Any]):
  return traverse_util.unflatten_dict(flat, sep="/")


def split_frozen(tree) -> tuple[dict, dict]:
  """(trainable, frozen) subtrees of a full parameter (or sharding) tree, by LION's freezing rule."""
  flat = flatten(tree)
  trainable = {k: v for k, v in flat.items() if not is_frozen(k)}
  frozen = {k: v for k, v in flat.items() if is_frozen(k)}
  return unflatten(trainable), unflatten(frozen)


def merge(trainable, frozen):
  return unflatten({**flatten(frozen), **flatten(trainable)})


# ------------------------------------------------------------------------------------- loss ---

def loss_and_metrics(logits: jax.Array, batch: dict) -> tuple[jax.Array, dict]:
  """Token-mean cross-entropy over the batch's target tokens (as LAVIS), plus per-task sums."""
  mask = batch["target_mask"].astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["target_ids"]) * mask
  loss = token_loss.sum() / jnp.maximum(mask.sum(), 1.0)
  per_example = token_loss.sum(-1)
  tokens = mask.sum(-1)
  metrics = {"loss_sum": token_loss.sum(), "tokens": mask.sum()}
  for task_id, name in enumerate(("region_level", "image_level")):
    sel = (batch["task"] == task_id).astype(jnp.float32)
    metrics[f"loss_sum_{name}"] = (per_example * sel).sum()
    metrics[f"tokens_{name}"] = (tokens * sel).sum()
  return loss, metrics


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
      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(lambda: micro_grads(
          state.params, frozen, jax.tree.map(lambda x: x[0], micro), rng)))
      (grads, metrics), _ = jax.lax.scan(body, zeros, (jnp.arange(grad_accum_steps), micro))
      grads = jax.tree.map(lambda g: g / grad_accum_steps, grads)
    # Micro-batch gradients are of per-micro-batch token means; the reported loss is the token mean.
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    loss = metrics["loss_sum"] / jnp.maximum(metrics["tokens"], 1.0)
    metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
               "param_norm": optax.tree.norm(params), "learning_rate": schedule(state.step)}
    return TrainState(state.step + 1, params, opt_state), metrics

  return step_fn


# ----------------------------------------------------------------------------- validation ---

def check_config(config: ml_collections.ConfigDict, stage_name: str, mesh, process_count: int) -> None:
  """Errors a user can fix, raised before anything is compiled."""
  stage = config.stages[stage_name]
  if stage.visual_input not in VISUAL_INPUTS:
    raise ValueError(f"stages.{stage_name}.visual_input={stage.visual_input!r}; expected one of {VISUAL_INPUTS}")
  batch_shards = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.global_batch_size % (batch_shards * config.grad_accum_steps):
    raise ValueError(f"global_batch_size={config.global_batch_size} must be divisible by data*fsdp="
                     f"{batch_shards} times grad_accum_steps={config.grad_accum_steps}")
  if config.global_batch_size % process_count:
    raise ValueError(f"global_batch_size={config.global_batch_size} must be divisible by the "
                     f"{process_count} processes")
  if not stage.mixture:
    raise ValueError(f"stages.{stage_name}.mixture is empty: give at least one data source and weight")


# ------------------------------------------------------------------------------ parameters ---

def init_params(config, model_config, mesh, rules, previous_trainables):
  """Sharded (trainable, frozen, trainable shardings, frozen shardings): a fresh init from
  `config.seed`, then the pretrained converted checkpoint (if any) for every parameter it holds, then
  the earlier stages' trainables (`stages.handoff`); frozen towers cast to `config.frozen_dtype`.

  Loaded values are put straight onto their shardings, never compiled into the init program."""
  model = Lion(model_config)
  batch = example_batch(model_config)
  init = lambda key: model.init(key, batch)["params"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    boxed = jax.eval_shape(init, jax.random.key(config.seed))
    shardings = sharding.logical_shardings(boxed, mesh, rules)
    params = jax.jit(lambda key: nn.unbox(init(key)), out_shardings=shardings)(jax.random.key(config.seed))
  for note in sharding.describe_fallbacks(boxed, mesh, rules):
    log.info("replicated instead of sharded (dimension not divisible): %s", note)
  params, shardings = flatten(params), flatten(shardings)
  overrides: dict[str, np.ndarray] = {}
  if config.pretrained:
    _, pretrained = load_converted(config.pretrained)
    overrides.update({k: v for k, v in flatten(jax.device_get(pretrained)).items() if k in params})
    missing_frozen = sorted(k for k in params if is_frozen(k) and k not in overrides)
    if missing_frozen:
      raise ValueError(f"pretrained {config.pretrained} lacks frozen parameters {missing_frozen[:5]}")
  overrides.update(stages.handoff(model_config.visual_input, previous_trainables))
  frozen_dtype = jnp.dtype(config.frozen_dtype)
  for k, v in overrides.items():
    if tuple(v.shape) != params[k].shape:
      raise ValueError(f"{k}: the loaded value has shape {tuple(v.shape)}, the model {params[k].shape}")
    params[k] = jax.device_put(np.asarray(v, params[k].dtype), shardings[k])
  trainable, frozen = split_frozen(unflatten(params))
  t_shard, f_shard = split_frozen(unflatten(shardings))
  with jax.set_mesh(mesh):
    cast = lambda tree: jax.tree.map(lambda x: x.astype(frozen_dtype), tree)
    frozen = jax.jit(cast, out_shardings=f_shard, donate_argnums=0)(frozen)
  return trainable, frozen, t_shard, f_shard


def global_batch(local: dict[str, np.ndarray], batch_sharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(batch_sharding, local[k]) for k in DEVICE_KEYS}


# ---------------------------------------------------------------------------------- a stage ---

def train_stage(config: ml_collections.ConfigDict, stage_name: str, workdir: epath.Path) -> dict[str, Any]:
  """Trains (or resumes) one stage in `workdir/<stage>`; returns a summary of the run."""
  stage = config.stages[stage_name]
  stage_dir = workdir / stage_name
  num_steps = config.num_steps if config.num_steps > 0 else stage.num_steps
  mesh = sharding.make_mesh(**config.mesh)
  check_config(config, stage_name, mesh, jax.process_count())
  rules = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding_rules)

  # Data first (a wrong path fails before anything is compiled): this host's share of the batch.
  local_batch = config.global_batch_size // jax.process_count()
  data_config = config.data.copy_and_resolve_references()
  data_config.mixture = stage.mixture
  data_iter = pipeline.make_iterator(data_config, local_batch, seed=config.seed + zlib.crc32(stage_name.encode()) % 1000,
                                     process_index=jax.process_index(), process_count=jax.process_count())

  # Parameters: fresh init, pretrained towers, earlier stages' trainables (explicit hand-off).
  model_config = config.model.copy_and_resolve_references()
  model_config.visual_input = stage.visual_input
  model = Lion(model_config)
  previous = {}
  for prev_name, prev_dir in stage.init_from.items():
    path = paths.as_path(prev_dir) if prev_dir else workdir / prev_name
    previous[prev_name] = checkpoints.load_final_trainables(path / "checkpoints", prev_name)
  trainable, frozen, t_shard, f_shard = init_params(config, model_config, mesh, rules, previous)

  # Optimizer over the trainables only.
  tx, schedule = optim.make_optimizer(config.optimizer, num_steps)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init)(trainable)  # shardings follow the parameters
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = TrainState(jax.device_put(jnp.zeros((), jnp.int32), replicated), trainable, opt_state)
  state_shard = jax.tree.map(lambda x: x.sharding, state)

  # Resume from the newest complete checkpoint of this stage, onto the current mesh.
  ckpt = checkpoints.StageCheckpoints(stage_dir / "checkpoints", keep=config.keep_checkpoints)
  first_step = 0
  latest = ckpt.latest_step()
  if latest is not None:
    abstract = lambda tree: jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)
    params, opt_state, meta = ckpt.restore(latest, abstract(state.params), abstract(state.opt_state), data_iter)
    state = TrainState(jax.device_put(jnp.asarray(meta["step"], jnp.int32), replicated), params, opt_state)
    first_step = int(meta["step"])
    log.info("%s: resumed from step %d in %s", stage_name, first_step, ckpt.directory)
    if meta.get("final") and first_step >= num_steps:
      log.info("%s: already finished (%d steps)", stage_name, first_step)
      ckpt.close()
      data_iter.close()
      return {"stage": stage_name, "steps": first_step, "resumed_finished": True}

  # Compile the step once, ahead of time: errors and memory show up before the loop.
  batch_sharding = sharding.batch_sharding(mesh, rules)
  step_fn = make_train_step(model, tx, schedule, config.grad_accum_steps, config.seed)
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    example = {k: jax.ShapeDtypeStruct((config.global_batch_size,) + v.shape[1:], v.dtype, sharding=batch_sharding)
               for k, v in example_local_batch(data_config, local_batch).items()}
    jitted = jax.jit(step_fn, in_shardings=(state_shard, f_shard, batch_sharding),
                     out_shardings=(state_shard, None), donate_argnums=(0,))
    compiled = jitted.lower(state, frozen, example).compile()
  flops = compiled_flops(compiled)

  # Loop.
  writer = MetricWriter(stage_dir)
  progress = Progress(stage_name, first_step, num_steps)
  pending, last_log_time, last_log_step = [], time.perf_counter(), first_step
  losses = []
  step = first_step
  try:
    while step < num_steps:
      state, metrics = compiled(state, frozen, global_batch(next(data_iter), batch_sharding))
      step += 1
      pending.append(metrics)
      is_last = step == num_steps
      if step % config.log_every_steps == 0 or is_last or step % config.checkpoint_every_steps == 0:
        fetched = jax.device_get(pending)
        pending = []
        for offset, m in enumerate(fetched):
          if not np.isfinite(m["loss"]):
            bad_step = step - len(fetched) + offset + 1
            raise FloatingPointError(
                f"{stage_name}: loss is {m['loss']} at step {bad_step}; stopping. The last good checkpoint "
                f"(step {ckpt.latest_step()}) in {ckpt.directory} is kept; lower optimizer.lr or check the data")
        losses.extend(float(m["loss"]) for m in fetched)
        if step % config.log_every_steps == 0 or is_last:
          now = time.perf_counter()
          scalars = _summarise(fetched, now - last_log_time, step - last_log_step, config, flops, data_iter)
          last_log_time, last_log_step = now, step
          writer.write(step, scalars)
          if jax.process_index() == 0:
            log.info(progress.line(step, scalars["loss"]))
      if step % config.checkpoint_every_steps == 0 or is_last:
        ckpt.save(step, state.params, state.opt_state, data_iter,
                  {"stage": stage_name, "step": step, "num_steps": num_steps, "final": is_last})
    ckpt.wait()
  finally:
    ckpt.close()
    writer.close()
    data_iter.close()

  if stage.get("export") and config.export_dir_name:
    export_dir = stage_dir / config.export_dir_name
    if not (export_dir / "params").exists():
      full = jax.device_get(merge(state.params, frozen))
      if jax.process_index() == 0:
        save_converted(export_dir, model_config, full, t5_vocab=config.data.t5_vocab or None,
                       bert_vocab=config.data.bert_vocab or None, sources={"trained": str(stage_dir)})
  return {"stage": stage_name, "steps": step, "first_step": first_step, "losses": losses, "flops_per_step": flops}


def example_local_batch(data_config, local_batch) -> dict[str, np.ndarray]:
  """Zero arrays with the pipeline's shapes and dtypes (for compiling before data arrives)."""
  c = data_config
  ids = lambda n: np.zeros((local_batch, n), np.int32)
  return dict(image=np.zeros((local_batch, c.image_size, c.image_size, 3), np.float32),
              qformer_ids=ids(c.max_qformer_len), qformer_mask=ids(c.max_qformer_len),
              input_ids=ids(c.max_input_len), input_mask=ids(c.max_input_len),
              decoder_input_ids=ids(c.max_target_len), task=np.zeros((local_batch,), np.int32),
              target_ids=ids(c.max_target_len), target_mask=ids(c.max_target_len))


def compiled_flops(compiled) -> float:
  try:
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis.get("flops", 0.0))
  except Exception:  # cost analysis is best effort: some backends do not provide it
    return 0.0


def _summarise(fetched, seconds, steps, config, flops, data_iter) -> dict[str, float]:
  """Averages of the fetched steps plus throughput, FLOP rate / MFU and data counters."""
  total = lambda k: float(sum(m[k] for m in fetched))
  scalars = {"loss": total("loss_sum") / max(total("tokens"), 1.0)}
  for name in ("region_level", "image_level"):
    if total(f"tokens_{name}") > 0:
      scalars[f"loss_{name}"] = total(f"loss_sum_{name}") / total(f"tokens_{name}")
  last = fetched[-1]
  scalars.update(learning_rate=float(last["learning_rate"]), grad_norm=float(last["grad_norm"]),
                 param_norm=float(last["param_norm"]))
  step_time = seconds / max(steps, 1)
  scalars["step_time_s"] = step_time
  scalars["examples_per_s"] = config.global_batch_size / step_time
  scalars["tokens_per_s"] = total("tokens") / len(fetched) / step_time
  if flops:
    scalars["flops_per_s_per_device"] = flops / step_time / jax.local_device_count()
    if config.peak_flops_per_device:
      scalars["mfu"] = scalars["flops_per_s_per_device"] / config.peak_flops_per_device
  for source, counts in data_iter.counters().items():
    for k, v in counts.items():
      scalars[f"data/{source}/{k}"] = v
  return scalars


# ------------------------------------------------------------------------------------- run ---

def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Runs `config.run_stages` in order, each in `workdir/<stage>` (local or `gs://`); re-running resumes."""
  workdir = paths.as_path(workdir)
  names = [s.strip() for s in config.run_stages.split(",") if s.strip()]
  unknown = [n for n in names if n not in config.stages]
  if unknown:
    raise ValueError(f"run_stages names {unknown}, which config.stages does not define ({sorted(config.stages)})")
  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
  return [train_stage(config, name, workdir) for name in names]
