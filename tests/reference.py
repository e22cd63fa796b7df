"""Helpers for tests that compare against PyTorch / HF transformers reference implementations."""

from __future__ import annotations

import numpy as np


def max_relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (a scale-aware error that near-zero entries can't blow up)."""
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-30))


def randomize_(torch_module, seed: int = 0, std: float = 0.1) -> None:
  """Perturbs every parameter of a torch module in place, so that no zero-initialised bias or unit
  norm scale can hide a wrong mapping (LayerNorm scales stay near 1)."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in torch_module.named_parameters():
      p.add_(torch.randn(p.shape, generator=g) * std)


def state_dict_numpy(torch_module, prefix: str = "") -> dict[str, np.ndarray]:
  return {prefix + k: v.detach().cpu().numpy().copy() for k, v in torch_module.state_dict().items()}


def save_safetensors_sharded(state: dict[str, np.ndarray], directory, num_shards: int = 2) -> None:
  """Writes `model-0000i-of-0000n.safetensors` shards and the HF index, as `save_pretrained` does."""
  import json
  from pathlib import Path

  from safetensors.numpy import save_file

  directory = Path(directory)
  keys = sorted(state)
  weight_map = {}
  for i in range(num_shards):
    name = f"model-{i + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {k: np.ascontiguousarray(state[k]) for k in keys[i::num_shards]}
    save_file(part, str(directory / name))
    weight_map.update({k: name for k in part})
  (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
