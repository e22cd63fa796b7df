"""Decode throughput, lion-jax vs HF transformers `generate`, same CPU, same model and weights.

  python -m benchmarks.decode_vs_hf [--batch 8] [--beams 5] [--new-tokens 32] [--repeats 3] [--unrolled]

The benchmark-size InstructBLIP-T5 (benchmarks/common.py) with random weights; both generate the
same number of tokens (min_length = max_new_tokens keeps EOS out, so lengths are equal), warmed up,
median of --repeats. tokens/s = batch * new tokens / seconds. Also checks the ids are equal.
"""

from __future__ import annotations

import argparse

import numpy as np

from benchmarks.common import convert_to_jax, hf_instructblip, median_seconds, record


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--beams", type=int, default=5)
  parser.add_argument("--new-tokens", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--unrolled", action="store_true", help="model.scan_layers=False (default: scanned)")
  args = parser.parse_args()

  import jax
  import torch

  from lion_jax.inference import generate

  torch.set_num_threads(max(1, torch.get_num_threads()))
  model = hf_instructblip()
  config, params = convert_to_jax(model, scan_layers=not args.unrolled)
  rng = np.random.default_rng(0)
  b, n = args.batch, args.new_tokens
  image = rng.normal(size=(b, 224, 224, 3)).astype(np.float32)
  q_ids = rng.integers(1000, 30000, (b, 32)).astype(np.int32)
  text = rng.integers(3, 32000, (b, 32)).astype(np.int32)
  ones = np.ones_like(text)
  batch = dict(
    image=image,
    qformer_ids=q_ids,
    qformer_mask=np.ones_like(q_ids),
    input_ids=text,
    input_mask=ones,
    task=np.ones((b,), np.int32),
  )
  settings = dict(num_beams=args.beams, max_new_tokens=n, min_length=n + 1, repetition_penalty=1.5)
  hf_ids = np.concatenate([np.full((b, 32), 32100), text], 1)
  hf_inputs = dict(
    pixel_values=torch.from_numpy(image.transpose(0, 3, 1, 2)),
    qformer_input_ids=torch.from_numpy(q_ids).long(),
    qformer_attention_mask=torch.ones(b, 32, dtype=torch.long),
    input_ids=torch.from_numpy(hf_ids).long(),
    attention_mask=torch.ones(b, 64, dtype=torch.long),
  )

  def run_hf():
    with torch.no_grad():
      return model.generate(**hf_inputs, do_sample=False, **settings).numpy()

  def run_jax():
    return np.asarray(jax.block_until_ready(generate(config, params, batch, **settings)))

  same = np.array_equal(run_hf()[:, 1:], run_jax())
  hf_s, hf_all = median_seconds(run_hf, args.repeats)
  jax_s, jax_all = median_seconds(run_jax, args.repeats)
  record(
    "decode_vs_hf",
    {
      "batch": b,
      "beams": args.beams,
      "scan_layers": not args.unrolled,
      "new_tokens": n,
      "ids_equal": bool(same),
      "hf_s": round(hf_s, 3),
      "jax_s": round(jax_s, 3),
      "hf_tokens_per_s": round(b * n / hf_s, 1),
      "jax_tokens_per_s": round(b * n / jax_s, 1),
      "speedup": round(hf_s / jax_s, 2),
      "hf_runs": [round(t, 3) for t in hf_all],
      "jax_runs": [round(t, 3) for t in jax_all],
    },
  )


if __name__ == "__main__":
  main()
