"""Train step, lion-jax vs HF transformers' InstructBLIP-T5, same CPU, same model size and weights.

  python benchmarks/train_step_vs_hf.py [--repeats 5]

Stage-1 shape: Q-Former branch trainable (+ lion-jax's zero-initialised adapters, 0.4% of the
trainables), ViT and T5 frozen; forward + backward + AdamW on the trainables; batch 8, Q-Former text
32, T5 text 32 (+32 query tokens), target 16; fp32; dropout on (train mode). Reports the median step
time of each (warmed up), the ratio, XLA's FLOP count of the JAX step and the machine's measured
fp32 matmul rate (a 2048^3 matmul in torch and in XLA).
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import convert_to_jax, hf_instructblip, median_seconds, record


def matmul_gflops(n: int = 2048) -> dict[str, float]:
  import jax
  import jax.numpy as jnp
  import torch

  a = torch.randn(n, n)
  t_torch, _ = median_seconds(lambda: a @ a, 5)
  x = jnp.ones((n, n))
  f = jax.jit(lambda m: m @ m)
  t_jax, _ = median_seconds(lambda: f(x).block_until_ready(), 5)
  return {"torch": 2 * n**3 / t_torch / 1e9, "xla": 2 * n**3 / t_jax / 1e9}


def benchmark_arrays(b: int = 8, lq: int = 32, lt: int = 32, lout: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
  """The step's inputs: images, Q-Former ids, T5 input ids and targets (random, fixed seed)."""
  rng = np.random.default_rng(seed)
  return dict(
    image=rng.normal(size=(b, 224, 224, 3)).astype(np.float32),
    q_ids=rng.integers(1000, 30000, (b, lq)).astype(np.int32),
    text=rng.integers(3, 32000, (b, lt)).astype(np.int32),
    target=rng.integers(3, 32000, (b, lout)).astype(np.int32),
  )


def jax_train_step(config, params, arrays: dict[str, np.ndarray]):
  """The trainer's own step function, compiled: returns (compiled, its FLOPs, state, frozen, batch)."""
  import jax
  import jax.numpy as jnp

  from lion_jax import optim, run_config, train
  from lion_jax.flops import matmul_flops
  from lion_jax.models import Lion, param_paths

  image, q_ids, text, target = arrays["image"], arrays["q_ids"], arrays["text"], arrays["target"]
  b = image.shape[0]
  trainable, frozen = param_paths.LION.split(params)
  opt_config = run_config.optimizer(schedule="constant", steps_per_epoch=1)
  tx, schedule = optim.make_optimizer(opt_config, 100)
  state = train.TrainState(jnp.zeros((), jnp.int32), trainable, tx.init(trainable))
  batch = dict(
    image=image,
    qformer_ids=q_ids,
    qformer_mask=np.ones_like(q_ids),
    input_ids=text,
    input_mask=np.ones_like(text),
    decoder_input_ids=np.concatenate([np.zeros((b, 1), np.int32), target[:, :-1]], 1),
    task=np.ones((b,), np.int32),
    target_ids=target,
    target_mask=np.ones_like(target),
  )
  step = jax.jit(train.make_train_step(Lion(config), tx, schedule, 1, seed=0), donate_argnums=(0,))
  traced = step.trace(state, frozen, batch)
  return traced.lower().compile(), matmul_flops(traced.jaxpr), state, frozen, batch


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()

  import jax
  import torch

  model = hf_instructblip()
  config, params = convert_to_jax(model)
  arrays = benchmark_arrays()
  image, q_ids, text, target = arrays["image"], arrays["q_ids"], arrays["text"], arrays["target"]
  b, lq, lt = image.shape[0], q_ids.shape[1], text.shape[1]

  # HF: freeze the ViT and the LM, AdamW on the Q-Former, queries and projection.
  for name, p in model.named_parameters():
    p.requires_grad = not (name.startswith("vision_model.") or name.startswith("language_model."))
  model.train()
  hf_opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.05)
  hf_inputs = dict(
    pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2)),
    qformer_input_ids=torch.from_numpy(q_ids).long(),
    qformer_attention_mask=torch.ones(b, lq, dtype=torch.long),
    input_ids=torch.from_numpy(np.concatenate([np.full((b, 32), 32100), text], 1)).long(),
    attention_mask=torch.ones(b, 32 + lt, dtype=torch.long),
    labels=torch.from_numpy(target).long(),
  )

  def hf_step():
    hf_opt.zero_grad(set_to_none=True)
    model(**hf_inputs).loss.backward()
    hf_opt.step()

  compiled, flops, state, frozen, batch = jax_train_step(config, params, arrays)
  holder = {"state": state}

  def jax_step():
    holder["state"], metrics = compiled(holder["state"], frozen, batch)
    jax.block_until_ready(metrics["loss"])

  hf_s, hf_all = median_seconds(hf_step, args.repeats)
  jax_s, jax_all = median_seconds(jax_step, args.repeats)
  rates = matmul_gflops()
  record(
    "train_step_vs_hf",
    {
      "batch": b,
      "hf_s": round(hf_s, 3),
      "jax_s": round(jax_s, 3),
      "speedup_hf_over_jax": round(hf_s / jax_s, 3),
      "jax_gflop_per_step": round(flops / 1e9, 1),
      "jax_gflops_per_s": round(flops / jax_s / 1e9, 1),
      "matmul_gflops_torch": round(rates["torch"], 1),
      "matmul_gflops_xla": round(rates["xla"], 1),
      "hf_runs": [round(t, 3) for t in hf_all],
      "jax_runs": [round(t, 3) for t in jax_all],
    },
  )


if __name__ == "__main__":
  main()
