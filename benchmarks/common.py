"""The benchmark model size shared by the JAX-vs-PyTorch benchmarks, and timing helpers.

Size (fixed so numbers stay comparable): ViT 6 x 384 (6 heads, MLP 1536) at 224 px / patch 14,
Q-Former 6 x 384 (cross-attention every 2nd layer), 32 queries, T5 6+6 x 512 (8 heads x 64,
d_ff 1024, gated-gelu, vocab 32128).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def hf_instructblip(seed: int = 0):
  """A random HF InstructBLIP-T5 of the benchmark size (exact GELU in T5, as LION)."""
  import torch
  import transformers

  vision = transformers.InstructBlipVisionConfig(
    hidden_size=384, intermediate_size=1536, num_hidden_layers=6, num_attention_heads=6, image_size=224, patch_size=14
  )
  qformer = transformers.InstructBlipQFormerConfig(
    vocab_size=30523,
    hidden_size=384,
    num_hidden_layers=6,
    num_attention_heads=6,
    intermediate_size=1536,
    encoder_hidden_size=384,
    max_position_embeddings=512,
  )
  text = transformers.T5Config(
    vocab_size=32128,
    d_model=512,
    d_kv=64,
    d_ff=1024,
    num_layers=6,
    num_decoder_layers=6,
    num_heads=8,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
    decoder_start_token_id=0,
    pad_token_id=0,
    eos_token_id=1,
  )
  text.dense_act_fn = "gelu"
  config = transformers.InstructBlipConfig(
    vision_config=vision.to_dict(),
    qformer_config=qformer.to_dict(),
    text_config=text.to_dict(),
    num_query_tokens=32,
    image_token_id=32100,
  )
  config.text_config.dense_act_fn = "gelu"
  torch.manual_seed(seed)
  model = transformers.InstructBlipForConditionalGeneration(config).eval()
  lm = model.language_model
  lm.lm_head.weight = torch.nn.Parameter(torch.randn(lm.lm_head.weight.shape) * 0.05)
  return model


def convert_to_jax(model, scan_layers: bool = True):
  """The same weights as a lion-jax (config, params), through the HF converter (in the layer
  layout `scan_layers` asks for)."""
  from safetensors.numpy import save_file

  from lion_jax.convert.hf import load_hf_instructblip

  with tempfile.TemporaryDirectory() as tmp:
    save_file({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, f"{tmp}/model.safetensors")
    model.config.save_pretrained(tmp)
    return load_hf_instructblip(tmp, scan_layers=scan_layers)


def median_seconds(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times), times


def cpu_model() -> str:
  """The CPU's model name (as `lscpu` prints it): kernels rank differently per CPU, so rows say which."""
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "unknown")
  except OSError:
    return platform.processor() or "unknown"


def record(name: str, result: dict) -> dict:
  """Appends one JSON line to benchmarks/results/<name>.jsonl with the machine, the date and the
  XLA flags in effect (lion_jax adds its CPU defaults to XLA_FLAGS when it is imported)."""
  result = {
    "benchmark": name,
    **result,
    "machine": f"{platform.machine()} {os.cpu_count()} cores",
    "cpu": cpu_model(),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
    "date": time.strftime("%Y-%m-%d"),
  }
  RESULTS.mkdir(parents=True, exist_ok=True)
  with open(RESULTS / f"{name}.jsonl", "a") as f:
    f.write(json.dumps(result) + "\n")
  print(json.dumps(result))
  return result
