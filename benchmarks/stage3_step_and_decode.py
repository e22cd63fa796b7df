"""Stage-3 train step and beam-5 decode on one accelerator, random weights (what benchmarks/gpu.sh runs).

  python -m benchmarks.stage3_step_and_decode [--size xl] [--batch 16] [--steps 10] [--remat none|full|matmuls]
      [--unrolled] [--attention auto|einsum]
      [--peak-tflops 989] [--decode-batch 8] [--new-tokens 32]

The released stage-3 model (`configs/stage3.py:size=...`: bf16 compute, bf16 frozen ViT and T5,
Q-Former + aggregator + two adapters per FFN trainable, AdamW) with a fresh random init, on one
device. Reports the median step time over --steps timed steps (after 2 warm-up steps), examples/s,
XLA's FLOPs per step, MFU = FLOPs / step time / peak (H100 and H200: 989 TFLOP/s dense bf16 unless
--peak-tflops says otherwise) and the device's peak memory; then beam-5 decode (min_length keeps
every sequence at --new-tokens) in seconds and tokens/s (no decode MFU: XLA's cost analysis counts
a while-loop body once, and decode is bound by memory, not FLOPs). One JSON line goes to
benchmarks/results/stage3_step_and_decode.jsonl.
`--attention einsum` keeps every attention on the einsum path, where `auto` (the default) lets a GPU
run cuDNN's fused attention where it takes the call (models/layers.py, `attend`): the frozen ViT in
the step (training's Q-Former and T5 attention has dropout, which the fused kernel lacks) and the
whole decode.
`--size tiny` runs the same code on a CPU in a minute (a check of the script, not a measurement).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import median_seconds, record
from lion_jax.data import contract

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}


def random_batch(data_config, batch: int, vocab: int, bert_vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Pipeline-shaped batch with full masks and random ids (every position does real work)."""
  rng = np.random.default_rng(seed)
  out = contract.zeros(contract.data_spec(data_config), batch)
  out["image"] = rng.normal(size=out["image"].shape).astype(np.float32)
  for key, high in (
    ("qformer_ids", bert_vocab),
    ("input_ids", vocab),
    ("decoder_input_ids", vocab),
    ("target_ids", vocab),
  ):
    out[key] = rng.integers(3, high, out[key].shape).astype(np.int32)
  out["task"] = rng.integers(0, 2, out["task"].shape).astype(np.int32)
  return out


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size", default="xl", choices=["tiny", "xl", "xxl"])
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument(
    "--remat", default="none", choices=["none", "full", "matmuls"], help="model.remat: recompute each layer"
  )
  parser.add_argument("--unrolled", action="store_true", help="model.scan_layers=False (default: scanned)")
  parser.add_argument("--attention", default="auto", choices=["auto", "einsum"], help="attention kernel (above)")
  parser.add_argument("--peak-tflops", type=float, default=0.0, help="device peak (default: by device kind)")
  parser.add_argument("--decode-batch", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=32)
  args = parser.parse_args()

  import flax.linen as nn
  import jax
  import jax.numpy as jnp

  from configs import stage3
  from lion_jax import sharding, stages, train
  from lion_jax.flops import matmul_flops
  from lion_jax.inference import generate
  from lion_jax.models import Lion, layers, param_paths

  config = stage3.get_config(f"size={args.size}")
  if args.size == "tiny":  # input lengths that fit the tiny towers' tables, as configs/demo.py
    config.data.update(image_size=28, max_input_len=64, max_target_len=24, max_qformer_len=32)
  config.model.update(remat=args.remat, scan_layers=not args.unrolled)
  model_config = stages.model_config(config, "stage3")
  device = jax.devices()[0]
  mesh = sharding.make_mesh(data=1, fsdp=1, tensor=1, devices=[device])
  rules = sharding.config_rules(config)

  start = time.perf_counter()
  abstract, abstract_frozen, tx, schedule = train.abstract_state(config, "stage3", mesh, rules, 1000)
  trainable, frozen = train.init_params(config, "stage3", mesh, rules, [], (abstract.params, abstract_frozen))
  init_s = time.perf_counter() - start
  with jax.set_mesh(mesh):
    state = train.TrainState(jnp.zeros((), jnp.int32), trainable, jax.jit(tx.init)(trainable))
  batch = random_batch(config.data, args.batch, model_config.t5.vocab_size, model_config.qformer.vocab_size)
  step = jax.jit(train.make_train_step(Lion(model_config), tx, schedule, 1, config.seed), donate_argnums=(0,))
  start = time.perf_counter()
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), layers.attention_kernel(args.attention):
    traced = step.trace(state, frozen, batch)
    compiled = traced.lower().compile()
  compile_s = time.perf_counter() - start
  flops = matmul_flops(traced.jaxpr)  # one device: the global step's
  holder = {"state": state}

  def one_step():
    holder["state"], metrics = compiled(holder["state"], frozen, batch)
    jax.block_until_ready(metrics["loss"])

  step_s, step_all = median_seconds(one_step, args.steps, warmup=2)
  peak = args.peak_tflops or next((v for k, v in PEAK_BF16_TFLOPS.items() if k in device.device_kind), 0.0)
  stats = device.memory_stats() or {}
  train_peak_gib = stats.get("peak_bytes_in_use", 0) / 2**30

  params = param_paths.merge(holder["state"].params, frozen)
  decode_batch = random_batch(
    config.data, args.decode_batch, model_config.t5.vocab_size, model_config.qformer.vocab_size, seed=1
  )
  settings = dict(num_beams=5, max_new_tokens=args.new_tokens, min_length=args.new_tokens + 1)
  run_decode = lambda: jax.block_until_ready(generate(model_config, params, decode_batch, **settings))
  with layers.attention_kernel(args.attention):  # the first (warm-up) call traces
    decode_s, decode_all = median_seconds(run_decode, 3)

  record(
    "stage3_step_and_decode",
    {
      "device": device.device_kind,
      "size": args.size,
      "batch": args.batch,
      "remat": args.remat,
      "attention": args.attention,
      "scan_layers": not args.unrolled,
      "init_s": round(init_s, 1),
      "compile_s": round(compile_s, 1),
      "step_s": round(step_s, 4),
      "examples_per_s": round(args.batch / step_s, 2),
      "tflop_per_step": round(flops / 1e12, 2),
      "mfu": round(flops / step_s / (peak * 1e12), 3) if peak else None,
      "peak_tflops": peak or None,
      "train_peak_memory_gib": round(train_peak_gib, 2) if stats else None,
      "step_runs": [round(t, 4) for t in step_all],
      "decode": {
        "batch": args.decode_batch,
        "beams": 5,
        "new_tokens": args.new_tokens,
        "s": round(decode_s, 3),
        "tokens_per_s": round(args.decode_batch * args.new_tokens / decode_s, 1),
      },
      "decode_runs": [round(t, 3) for t in decode_all],
    },
  )


if __name__ == "__main__":
  main()
