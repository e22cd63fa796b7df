"""Plan a run before paying for it: compile the train step ahead of time for N simulated devices.

  python -m lion_jax.plan --config=configs/stage3.py:size=xxl --devices=64 --mesh=data:8,fsdp:8,tensor:1 [--batch=64]
      [--memory_gib=95]
  python -m lion_jax.plan --config=configs/stage3.py:size=xl --devices=8 --mesh=data:2,fsdp:4 --batch=16 --evaluate
      [--beams=5 --max_new_tokens=256]

Nothing is allocated: parameters, optimizer state and the batch are abstract arrays with their
shardings, the step is lowered and compiled by XLA for a mesh of N fake CPU devices, and the report
gives per-device memory (arguments, outputs, temporaries: XLA's memory analysis), FLOPs per step and
per example (matmuls and convolutions of the step's jaxpr, `lion_jax/flops.py`; the frozen ViT is
forward-only, the frozen T5 has no weight gradients), and the collectives in the compiled program
(read from its HLO text: a scanned layer's collectives are counted once, not per layer). With
--memory_gib it compiles once more (at 1 example per device) and reports the largest global batch
whose linearly fitted peak fits. Compiling
for CPU approximates a TPU/GPU compile: layouts, fusion and scheduling differ, so treat memory as an
estimate (docs/scaling.md shows how far off it can be) and confirm on the target. --evaluate plans
the benchmark step instead: beam-search generation (what `python -m lion_jax.evaluate` runs) of a
global batch of prompts at the data config's `max_input_len`, on the parameters as the stage's
export holds them, sharded by the same rules.
"""

from __future__ import annotations

import math
import re
import sys

from lion_jax import simulate_cpu_devices


def device_count_arg(argv: list[str]) -> str | None:
  """The value of `--devices=N` or `--devices N` (read before absl parses flags)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      return arg.split("=", 1)[1]
    if arg == "--devices" and i + 1 < len(argv):
      return argv[i + 1]
  return None


# The device count must be fixed before jax is imported.
_DEVICES = device_count_arg(sys.argv)
if _DEVICES:
  simulate_cpu_devices(int(_DEVICES))

import time  # noqa: E402

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lion_jax import cli, errors, sharding, stages, train  # noqa: E402
from lion_jax.data import contract  # noqa: E402
from lion_jax.flops import matmul_flops  # noqa: E402
from lion_jax.inference.generate import generation_program  # noqa: E402
from lion_jax.models import Lion, param_paths  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Run config, e.g. configs/stage3.py:size=xxl.")
flags.DEFINE_integer("devices", 8, "Number of simulated devices (--devices=N or --devices N; read before jax starts).")
_MESH = flags.DEFINE_string("mesh", "data:-1", "Mesh, e.g. data:2,fsdp:4,tensor:1 (-1 = the rest).")
_BATCH = flags.DEFINE_integer("batch", 0, "Global batch; 0 takes the config's global_batch_size.")
_STAGE = flags.DEFINE_string("stage", "", "Stage to plan; empty takes the last one the config runs.")
_MEMORY = flags.DEFINE_float(
  "memory_gib",
  0.0,
  "Device memory in GiB: also estimate the largest global batch "
  "that fits (one more compile, a line through two batch sizes); 0 skips it.",
)
_EVALUATE = flags.DEFINE_bool("evaluate", False, "Plan the evaluation (generation) step instead of the train step.")
_BEAMS = flags.DEFINE_integer("beams", 5, "With --evaluate: beam width.")
_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 256, "With --evaluate: generated tokens.")
flags.mark_flags_as_required(["config"])
PROBE_PER_DEVICE = 8  # the fit's second point when --batch is already 1 example per device
HEADROOM = 0.9  # the fit must leave 10% of device memory free

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "s32": 4, "u32": 4, "pred": 1, "s8": 1, "u8": 1, "f64": 8, "s64": 8}


def parse_mesh(text: str) -> dict[str, int]:
  mesh = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in filter(None, text.split(",")):
    name, _, size = part.partition(":")
    if name not in mesh:
      raise errors.UserError(f"--mesh: unknown axis {name!r}; axes are data, fsdp, tensor")
    try:
      mesh[name] = int(size)
    except ValueError:
      raise errors.UserError(f"--mesh: axis {name!r} needs an integer size, got {size!r}") from None
  return mesh


def collective_bytes(hlo_text: str) -> dict[str, dict[str, float]]:
  """Count and result size (bytes, per device) of each collective op in the compiled HLO."""
  out = {}
  for line in hlo_text.splitlines():
    for op in COLLECTIVES:
      if f" {op}(" in line or f" {op}-start(" in line:
        lhs = line.split("=", 1)[1] if "=" in line else line
        shapes = re.findall(r"(f32|bf16|f16|s32|u32|pred|s8|u8|f64|s64)\[([\d,]*)\]", lhs.split(op)[0])
        size = sum(_DTYPE_BYTES[t] * math.prod(int(n) for n in d.split(",") if n) for t, d in shapes)
        entry = out.setdefault(op, {"count": 0, "bytes": 0.0})
        entry["count"] += 1
        entry["bytes"] += size
  return out


def plan(config, stage_name: str, mesh_sizes: dict[str, int], global_batch: int) -> dict:
  stage = config.stages[stage_name]
  mesh = sharding.make_mesh(**mesh_sizes)
  rules = sharding.config_rules(config)
  state, frozen, tx, schedule = train.abstract_state(config, stage_name, mesh, rules, num_steps=1000)
  trainable = state.params
  model = Lion(stages.model_config(config, stage_name))
  batch_sharding = sharding.batch_sharding(mesh, rules)
  batch = {
    k: jax.ShapeDtypeStruct((global_batch,) + shape, dtype, sharding=batch_sharding)
    for k, (shape, dtype) in contract.data_spec(stages.data_config(config, stage_name)).items()
  }
  step = train.make_train_step(model, tx, schedule, config.grad_accum_steps, config.seed)
  start = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    traced = jax.jit(step, donate_argnums=(0,)).trace(state, frozen, batch)
    compiled = traced.lower().compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  flops = matmul_flops(traced.jaxpr)  # the global step's
  count = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  return {
    "stage": stage_name,
    "visual_input": stage.visual_input,
    "devices": mesh.size,
    "mesh": dict(mesh.shape),
    "global_batch": global_batch,
    "trainable_params": count(trainable),
    "frozen_params": count(frozen),
    "compile_s": compile_s,
    "memory_gib_per_device": {
      "arguments": memory.argument_size_in_bytes / 2**30,
      "outputs": memory.output_size_in_bytes / 2**30,
      "temporaries": memory.temp_size_in_bytes / 2**30,
      "peak_estimate": (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30,
    },
    "flops_per_step_per_device": flops / mesh.size,
    "flops_per_example": flops / global_batch,
    "collectives": collective_bytes(compiled.as_text()),
  }


def plan_evaluation(
  config, stage_name: str, mesh_sizes: dict[str, int], global_batch: int, num_beams: int, max_new_tokens: int
) -> dict:
  """Per-device memory of the generation step on the stage's exported parameters (trainables in
  float32, frozen towers in `frozen_dtype`), compiled ahead of time; nothing is allocated."""
  mesh = sharding.make_mesh(**mesh_sizes)
  rules = sharding.config_rules(config)
  state, frozen, _, _ = train.abstract_state(config, stage_name, mesh, rules, num_steps=1)
  params = param_paths.merge(state.params, frozen)
  batch_sharding = sharding.batch_sharding(mesh, rules)
  inputs = {
    k: jax.ShapeDtypeStruct((global_batch,) + shape, dtype, sharding=batch_sharding)
    for k, (shape, dtype) in contract.data_spec(stages.data_config(config, stage_name)).items()
    if k in contract.MODEL_KEYS and k != "decoder_input_ids"
  }
  program = generation_program(
    stages.model_config(config, stage_name), num_beams=num_beams, max_new_tokens=max_new_tokens
  )
  start = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    compiled = program.lower(params, inputs).compile()
  memory = compiled.memory_analysis()
  return {
    "stage": stage_name,
    "devices": mesh.size,
    "mesh": dict(mesh.shape),
    "global_batch": global_batch,
    "num_beams": num_beams,
    "max_new_tokens": max_new_tokens,
    "compile_s": time.perf_counter() - start,
    "memory_gib_per_device": {
      "arguments": memory.argument_size_in_bytes / 2**30,
      "temporaries": memory.temp_size_in_bytes / 2**30,
      "peak_estimate": (memory.argument_size_in_bytes + memory.temp_size_in_bytes) / 2**30,
    },
  }


def largest_per_device_batch(peaks: dict[int, float], memory_gib: float) -> int:
  """Largest per-device batch whose peak, on the line through two {per-device batch: peak GiB}
  estimates, stays within HEADROOM * memory (0: not even one example fits).

  The intercept is what does not grow with the batch (sharded state, gathered weights), the slope
  the activations of one example.
  """
  (b1, m1), (b2, m2) = sorted(peaks.items())
  slope = max((m2 - m1) / (b2 - b1), 1e-9)
  at_one, budget = m1 - (b1 - 1) * slope, HEADROOM * memory_gib
  return 0 if at_one > budget else 1 + int((budget - at_one) // slope)


def print_fit(config, stage: str, memory_gib: float, report: dict) -> None:
  """The fit from the report's own compile plus one more, at 1 example per device (or at
  PROBE_PER_DEVICE when the report is already at 1), on the report's mesh."""
  mesh_sizes = dict(report["mesh"])
  shards = mesh_sizes["data"] * mesh_sizes["fsdp"]
  reported = report["global_batch"] // shards
  probe = 1 if reported != 1 else PROBE_PER_DEVICE
  peaks = {
    reported: report["memory_gib_per_device"]["peak_estimate"],
    probe: plan(config, stage, mesh_sizes, shards * probe)["memory_gib_per_device"]["peak_estimate"],
  }
  per_device = largest_per_device_batch(peaks, memory_gib)
  measured = ", ".join(f"~{peak:.2f} GiB at {b} per device" for b, peak in sorted(peaks.items()))
  print(
    f"  fit for {memory_gib:g} GiB per device ({HEADROOM:.0%} usable) from peaks {measured}: "
    f"largest global batch that fits: {per_device * shards} ({per_device} per device)"
  )


def main(argv) -> int:
  del argv
  if _EVALUATE.value:
    return errors.exit_code(
      lambda: print_evaluation_plan(
        _CONFIG.value, _STAGE.value, _MESH.value, _BATCH.value, _BEAMS.value, _NEW_TOKENS.value
      )
    )
  return errors.exit_code(lambda: print_plan(_CONFIG.value, _STAGE.value, _MESH.value, _BATCH.value, _MEMORY.value))


def stage_to_plan(config, stage: str) -> str:
  """`stage`, or the last stage the config runs when it is empty."""
  stage = stage or [s.strip() for s in config.run_stages.split(",")][-1]
  if stage not in config.stages:
    raise errors.UserError(f"--stage={stage!r}: the config's stages are {sorted(config.stages)}")
  return stage


def print_evaluation_plan(config, stage: str, mesh: str, batch: int, beams: int, new_tokens: int) -> None:
  report = plan_evaluation(config, stage_to_plan(config, stage), parse_mesh(mesh), batch or 16, beams, new_tokens)
  m = report["memory_gib_per_device"]
  print(
    f"evaluation of {report['stage']} on {report['devices']} devices, mesh {report['mesh']}, global batch "
    f"{report['global_batch']}, beam {beams}, {new_tokens} new tokens: compiled in {report['compile_s']:.0f} s"
  )
  print(
    f"  memory per device (GiB): arguments {m['arguments']:.2f}, temporaries {m['temporaries']:.2f}, "
    f"peak ~{m['peak_estimate']:.2f}"
  )


def print_plan(config, stage: str, mesh: str, batch: int, memory_gib: float) -> None:
  """Compiles the stage's step as the flags say and prints the report (and the fit, with `memory_gib`)."""
  stage = stage_to_plan(config, stage)
  report = plan(config, stage, parse_mesh(mesh), batch or config.global_batch_size)
  m = report["memory_gib_per_device"]
  print(
    f"{report['stage']} ({report['visual_input']}) on {report['devices']} devices, mesh {report['mesh']}, "
    f"global batch {report['global_batch']}: compiled in {report['compile_s']:.0f} s"
  )
  print(
    f"  parameters: {report['trainable_params'] / 1e6:,.1f}M trainable, {report['frozen_params'] / 1e6:,.1f}M frozen"
  )
  print(
    f"  memory per device (GiB): arguments {m['arguments']:.2f}, outputs {m['outputs']:.2f}, "
    f"temporaries {m['temporaries']:.2f}, peak ~{m['peak_estimate']:.2f}"
  )
  print(
    f"  FLOPs: {report['flops_per_step_per_device'] / 1e12:.2f} TFLOP per step per device, "
    f"{report['flops_per_example'] / 1e12:.3f} TFLOP per example"
  )
  for op, c in sorted(report["collectives"].items()):
    print(f"  {op}: {c['count']} ops, {c['bytes'] / 2**20:,.1f} MiB per device per step")
  if memory_gib:
    print_fit(config, stage, memory_gib, report)


if __name__ == "__main__":
  app.run(lambda argv: sys.exit(main(argv)), flags_parser=cli.parse_flags)
