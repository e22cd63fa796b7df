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
    for p in torch_module.parameters():
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


def add_lion_adapters_(t5_model, bottleneck: int = 64) -> None:
  """LION's two-adapter MoA in torch, written from lion_reference.md section 2 (the official
  `set_adapter_t5`): every HF `T5LayerFF` gets an `adapter` module under the official key names and
  returns `sublayer(h) + sum_k router_ratio{k+1}[r] * scale_k * up_k(relu(down_k(h)))`, where `h` is the
  sublayer's input (the residual stream before its RMSNorm) and `r` the module's `router_idx`."""
  import types

  import torch
  from transformers.models.t5.modeling_t5 import T5LayerFF

  class Adapter(torch.nn.Module):
    def __init__(self, d_model):
      super().__init__()
      self.down_proj, self.up_proj = torch.nn.Linear(d_model, bottleneck), torch.nn.Linear(bottleneck, d_model)
      self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, x):
      return self.up_proj(torch.relu(self.down_proj(x))) * self.scale

  class AdapterRouter(torch.nn.Module):
    def __init__(self, d_model):
      super().__init__()
      self.adapters = torch.nn.ModuleList([Adapter(d_model), Adapter(d_model)])
      self.router_ratio1 = torch.nn.Parameter(torch.tensor([[1.0], [0.0]]).repeat(1, d_model))
      self.router_ratio2 = torch.nn.Parameter(torch.tensor([[0.0], [1.0]]).repeat(1, d_model))
      self.router_idx = None

    def forward(self, x):
      assert self.router_idx in (0, 1)
      r = self.router_idx
      return self.adapters[0](x) * self.router_ratio1[r] + self.adapters[1](x) * self.router_ratio2[r]

  def forward_with_adapter(self, hidden_states):
    return T5LayerFF.forward(self, hidden_states) + self.adapter(hidden_states)

  for module in list(t5_model.modules()):
    if isinstance(module, T5LayerFF):
      module.adapter = AdapterRouter(module.layer_norm.weight.shape[0])
      module.forward = types.MethodType(forward_with_adapter, module)


def set_router_index_(torch_module, index: int) -> None:
  """The official `set_router_idx`: one task-type index for every adapter router (0 region, 1 image)."""
  for module in torch_module.modules():
    if hasattr(module, "router_idx"):
      module.router_idx = index


def hf_swin_as_ram_keys(hf_state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """HF SwinModel tensors (transformers 5 names) under the official RAM names (`visual_encoder.` of
  ram_swin_large_14m.pth): the test's own statement of that layout, q, k and v fused into `qkv`."""
  renames = [
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    ("embeddings.norm.", "patch_embed.norm."),
    ("encoder.layers.", "layers."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("attention.relative_position_bias.", "attn."),
    ("attention.o_proj.", "attn.proj."),
    ("layernorm.", "norm."),
  ]
  out = {}
  for key, value in hf_state.items():
    if any(f"attention.{w}_proj." in key for w in "qkv"):
      if "attention.q_proj." in key:
        stem, kind = key.split("attention.q_proj.")
        fused = np.concatenate([hf_state[f"{stem}attention.{w}_proj.{kind}"] for w in "qkv"])
        out[f"visual_encoder.{stem.replace('encoder.layers.', 'layers.')}attn.qkv.{kind}"] = fused
      continue
    for old, new in renames:
      key = key.replace(old, new)
    out["visual_encoder." + key] = value
  return out
