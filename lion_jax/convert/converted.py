"""The converted-checkpoint directory: what the converters write and inference and training load.

  DIR/config.json         the model config (lion_jax.models presets format); `scan_layers` names the
                          layer layout of the params (models/layer_stack.py)
  DIR/params/             the parameter tree, an Orbax checkpoint (restorable onto any mesh, into
                          either layout)
  DIR/tokenizer/spiece.model, DIR/tokenizer/bert_vocab.txt   when given
  DIR/conversion.json     where the weights came from
DIR may be local or a bucket (`gs://...`, see `lion_jax.paths`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import Mesh

from lion_jax import checkpoints, paths, sharding
from lion_jax.errors import MissingFile, UserError
from lion_jax.models import Lion, example_batch, layer_stack, param_paths, presets

T5_VOCAB_NAME = "spiece.model"
BERT_VOCAB_NAME = "bert_vocab.txt"


def save_converted(
  directory: str | os.PathLike,
  config: ml_collections.ConfigDict,
  params: Any,
  *,
  t5_vocab: str | os.PathLike | None = None,
  bert_vocab: str | os.PathLike | None = None,
  files: dict[str, str | os.PathLike] | None = None,
  sources: dict[str, str] | None = None,
) -> epath.Path:
  """Writes DIR; refuses to overwrite an existing params checkpoint (nothing saved is ever lost).
  `files` ({name in DIR: source file}) are copied in, as the tokenizer files are. Multi-host: every
  process calls it with the (sharded) parameters and saves its shards; process 0 writes the config,
  tokenizer and conversion files."""
  directory = paths.as_path(directory)
  if (directory / "params").exists():
    raise UserError(f"{directory / 'params'} already exists; choose a new output directory")
  writer = jax.process_index() == 0
  if writer:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(config.to_json_best_effort(indent=2))
    copies = {f"tokenizer/{T5_VOCAB_NAME}": t5_vocab, f"tokenizer/{BERT_VOCAB_NAME}": bert_vocab, **(files or {})}
    for name, src in copies.items():
      if src is not None:
        src = epath.Path(src)
        if not src.is_file():
          raise MissingFile(f"file to copy into {directory} not found: {src}")
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        src.copy(directory / name, overwrite=True)
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


def load_converted(
  directory: str | os.PathLike,
  mesh: Mesh | None = None,
  rules=sharding.DEFAULT_RULES,
  *,
  scan_layers: bool | None = None,
) -> tuple[ml_collections.ConfigDict, Any]:
  """Reads DIR -> (config, params). With `mesh`, every array is restored straight onto its sharding
  under `rules`; without, onto this process's first device, whatever mesh and number of hosts wrote
  it (a pod's export loads on one GPU). The params come in the layer layout the directory holds, or
  in the one `scan_layers` asks for (stacked or unstacked on load, on the mesh when there is one);
  the returned config's `scan_layers` says which."""
  directory = paths.as_path(directory)
  config = load_config(directory)
  if config.get("kind") == presets.RAM_KIND:
    raise UserError(f"{directory} holds a RAM tagger, not a LION model: give it as the tagger (--tagger=DIR)")
  with ocp.StandardCheckpointer() as ckptr:
    meta = ckptr.metadata(directory / "params").item_metadata
    stored = layer_stack.is_scanned(param_paths.flatten(meta.tree), config)
    if config.get("scan_layers", stored) != stored:
      raise UserError(
        f"{directory}: config.json says scan_layers={config.scan_layers}, but its params are in the other layout"
      )
    config.unlock()
    config.scan_layers = stored
    wanted = stored if scan_layers is None else scan_layers
    shardings = None if mesh is None else sharding.param_shardings(Lion(config), example_batch(config), mesh, rules)
    params = checkpoints.restore_onto(ckptr, directory / "params", meta.tree, shardings)
  if wanted == stored:
    return config, params
  config.scan_layers = wanted
  if mesh is None:
    flat = layer_stack.to_layout(param_paths.flatten(jax.device_get(params)), config)
    return config, jax.device_put(param_paths.unflatten(flat), jax.local_devices()[0])
  out_shardings = sharding.param_shardings(Lion(config), example_batch(config), mesh, rules)
  relayout = lambda p: param_paths.unflatten(layer_stack.to_layout(param_paths.flatten(p), config, xp=jnp))
  with jax.set_mesh(mesh):
    return config, jax.jit(relayout, out_shardings=out_shardings)(params)


def load_model_params(
  directory: str | os.PathLike, model: nn.Module, example: Any, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES
) -> Any:
  """DIR/params of a model without layer layouts (the RAM tagger), restored as `load_converted` does:
  onto the mesh under `rules` when given, else onto this process's first device."""
  directory = paths.as_path(directory)
  shardings = None if mesh is None else sharding.param_shardings(model, example, mesh, rules)
  with ocp.StandardCheckpointer() as ckptr:
    return checkpoints.restore_onto(
      ckptr, directory / "params", ckptr.metadata(directory / "params").item_metadata.tree, shardings
    )


def tokenizer_files(directory: str | os.PathLike) -> dict[str, epath.Path]:
  """{'t5': path, 'bert': path} for the tokenizer files the directory holds."""
  tok = paths.as_path(directory) / "tokenizer"
  files = {"t5": tok / T5_VOCAB_NAME, "bert": tok / BERT_VOCAB_NAME}
  return {k: v for k, v in files.items() if v.exists()}
