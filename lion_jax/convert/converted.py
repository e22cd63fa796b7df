"""The converted-checkpoint directory: what the converters write and inference and training load.

  DIR/config.json         the model config (lion_jax.models presets format)
  DIR/params/             the parameter tree, an Orbax checkpoint (restorable onto any mesh)
  DIR/tokenizer/spiece.model, DIR/tokenizer/bert_vocab.txt   when given
  DIR/conversion.json     where the weights came from
DIR may be local or a bucket (`gs://...`, see `lion_jax.paths`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from lion_jax import paths
from lion_jax.errors import MissingFile, UserError

T5_VOCAB_NAME = "spiece.model"
BERT_VOCAB_NAME = "bert_vocab.txt"


def save_converted(
  directory: str | os.PathLike,
  config: ml_collections.ConfigDict,
  params: Any,
  *,
  t5_vocab: str | os.PathLike | None = None,
  bert_vocab: str | os.PathLike | None = None,
  sources: dict[str, str] | None = None,
) -> epath.Path:
  """Writes DIR; refuses to overwrite an existing params checkpoint (nothing saved is ever lost).
  Multi-host: every process calls it with the (sharded) parameters and saves its shards; process 0
  writes the config, tokenizer and conversion files."""
  directory = paths.as_path(directory)
  if (directory / "params").exists():
    raise UserError(f"{directory / 'params'} already exists; choose a new output directory")
  writer = jax.process_index() == 0
  if writer:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
    tok = directory / "tokenizer"
    for src, name in ((t5_vocab, T5_VOCAB_NAME), (bert_vocab, BERT_VOCAB_NAME)):
      if src is not None:
        src = epath.Path(src)
        if not src.is_file():
          raise MissingFile(f"tokenizer file not found: {src}")
        tok.mkdir(exist_ok=True)
        src.copy(tok / name, overwrite=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(directory / "params", jax.tree.map(jnp.asarray, params))
    ckptr.wait_until_finished()
  if writer:
    (directory / "conversion.json").write_text(
      json.dumps(
        {
          "sources": sources or {},
          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "num_params": int(sum(x.size for x in jax.tree.leaves(params))),
        },
        indent=2,
      )
    )
  return directory


def load_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  path = paths.as_path(directory) / "config.json"
  if not path.exists():
    raise MissingFile(f"{path} not found: {directory} is not a converted LION checkpoint")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not valid JSON: {e}") from e


def load_converted(directory: str | os.PathLike, shardings: Any = None) -> tuple[ml_collections.ConfigDict, Any]:
  """Reads DIR -> (config, params). With `shardings` (a tree of NamedShardings matching the params)
  every array is restored straight onto its devices; without, onto this process's first device,
  whatever mesh and number of hosts wrote it (a pod's export loads on one GPU)."""
  directory = paths.as_path(directory)
  config = load_config(directory)
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(directory / "params").item_metadata
    if shardings is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), meta.tree)
    else:
      target = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), meta.tree, shardings)
    params = ckptr.restore(directory / "params", target)
  return config, params


def tokenizer_files(directory: str | os.PathLike) -> dict[str, epath.Path]:
  """{'t5': path, 'bert': path} for the tokenizer files the directory holds."""
  tok = paths.as_path(directory) / "tokenizer"
  files = {"t5": tok / T5_VOCAB_NAME, "bert": tok / BERT_VOCAB_NAME}
  return {k: v for k, v in files.items() if v.exists()}
