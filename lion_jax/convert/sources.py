"""Readers that expose checkpoint files as `{key: numpy array}` mappings, loading lazily.

Safetensors (single file or sharded with `*.safetensors.index.json`) are read without torch. PyTorch
`.pth` pickles, zip or legacy (pre-1.6) format, are read with `torch.load(weights_only=True)`, so a file
cannot run code; torch is only imported for them.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import ml_dtypes
import numpy as np

from lion_jax.errors import MissingFile, UserError


class SafetensorsSource(Mapping):
  """All tensors of a safetensors checkpoint directory (or file), read on access."""

  def __init__(self, path: str | os.PathLike):
    from safetensors import safe_open  # local: only converters need it

    path = Path(path)
    if path.is_file():
      files = {path.name: path}
      index = None
    else:
      index_path = path / "model.safetensors.index.json"
      if index_path.exists():
        try:
          index = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
          raise UserError(f"{index_path}: not a safetensors index with a 'weight_map': {e}") from e
        files = {name: path / name for name in sorted(set(index.values()))}
      else:
        files = {p.name: p for p in sorted(path.glob("*.safetensors"))}
        index = None
      if not files:
        raise MissingFile(f"no *.safetensors files in {path}")
    self._handles = {}
    self._key_to_file: dict[str, str] = {}
    for name, file in files.items():
      if not file.exists():
        raise MissingFile(f"safetensors shard listed in the index is missing: {file}")
      try:
        handle = safe_open(str(file), framework="numpy")
      except Exception as e:  # safetensors raises its own error types
        raise UserError(f"{file}: cannot read as safetensors: {e}") from e
      self._handles[name] = handle
      for key in handle.keys():
        self._key_to_file[key] = name
    if index is not None:
      missing = sorted(k for k in index if k not in self._key_to_file)
      if missing:
        raise UserError(f"{path}: keys in the index but in no shard: {missing[:10]}")

  def __getitem__(self, key: str) -> np.ndarray:
    return self._handles[self._key_to_file[key]].get_tensor(key)

  def __iter__(self) -> Iterator[str]:
    return iter(self._key_to_file)

  def __len__(self) -> int:
    return len(self._key_to_file)


def _torch_to_numpy(tensor) -> np.ndarray:
  import torch

  tensor = tensor.detach().cpu()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
  return tensor.numpy()


# How torch's weights-only unpickler names the global it refused ("... GLOBAL posix.system ...").
_REFUSED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class TorchSource(Mapping):
  """Tensors of a `.pth` state dict (`checkpoint['model']` when present), never unpickling code.

  Zip-format files are memory-mapped; legacy-format files (older releases) cannot be, so they are read
  into memory whole.
  """

  def __init__(self, path: str | os.PathLike):
    try:
      import torch
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install torch==2.13.0): {e}") from e
    path = Path(path)
    if not path.exists():
      raise MissingFile(f"checkpoint not found: {path}")
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, ... for bad files
      refused = _REFUSED_GLOBAL.search(str(e))
      why = (
        f"it names {refused.group(1)}, and only tensors and plain data are loaded, so that a file cannot run code"
        if refused
        else str(e)
      )
      raise UserError(f"{path}: cannot load as a weights-only PyTorch checkpoint: {why}") from e
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
      obj = obj["model"]
    if not isinstance(obj, dict):
      raise UserError(f"{path}: expected a state dict (or {{'model': state_dict}}), got {type(obj)}")
    self._tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    self.path = path

  def __getitem__(self, key: str) -> np.ndarray:
    return _torch_to_numpy(self._tensors[key])

  def __iter__(self) -> Iterator[str]:
    return iter(self._tensors)

  def __len__(self) -> int:
    return len(self._tensors)
