"""HF checkpoints: InstructBLIP-T5 (config.json + safetensors) and FlanT5, read without torch.

`load_hf_instructblip(path)` returns a stage-1 LION config (Q-Former tokens, one adapter per FFN,
no soft prompt) and params with which `Lion` reproduces InstructBLIP's logits: the adapters are
freshly initialised and output exactly zero until trained.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import traverse_util

from lion_jax.convert import mapping
from lion_jax.convert.sources import SafetensorsSource
from lion_jax.errors import MissingFile, UserError
from lion_jax.models import abstract_params, layer_stack, num_adapters, presets
from lion_jax.models.adapters import MixtureOfAdapters
from lion_jax.models.t5 import T5

# HF writes only non-default values into config.json, so absent keys take the class defaults.
VISION_DEFAULTS = dict(
  hidden_size=1408,
  intermediate_size=6144,
  num_hidden_layers=39,
  num_attention_heads=16,
  image_size=224,
  patch_size=14,
  hidden_act="gelu",
  layer_norm_eps=1e-6,
  qkv_bias=True,
)
QFORMER_DEFAULTS = dict(
  vocab_size=30522,
  hidden_size=768,
  num_hidden_layers=12,
  num_attention_heads=12,
  intermediate_size=3072,
  hidden_act="gelu",
  hidden_dropout_prob=0.1,
  max_position_embeddings=512,
  layer_norm_eps=1e-12,
  cross_attention_frequency=2,
  encoder_hidden_size=1408,
  position_embedding_type="absolute",
)
T5_DEFAULTS = dict(
  vocab_size=32128,
  d_model=512,
  d_kv=64,
  d_ff=2048,
  num_layers=6,
  num_decoder_layers=None,
  num_heads=8,
  relative_attention_num_buckets=32,
  relative_attention_max_distance=128,
  dropout_rate=0.1,
  layer_norm_epsilon=1e-6,
  feed_forward_proj="relu",
)


def read_json(path: Path) -> dict[str, Any]:
  if not path.exists():
    raise MissingFile(f"config not found: {path}")
  try:
    return json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: not valid JSON: {e}") from e


def _require(cond: bool, where: str, message: str) -> None:
  if not cond:
    raise UserError(f"{where}: {message}")


def t5_config_from_hf(text: dict, *, has_lm_head: bool, where: str) -> ml_collections.ConfigDict:
  """Our T5 config from an HF T5Config dict; `has_lm_head` says whether the weights hold a head."""
  t = {**T5_DEFAULTS, **text}
  proj = t["feed_forward_proj"]
  gated = proj.startswith("gated-")
  # HF maps "gated-gelu" to gelu_new for old configs; an explicit dense_act_fn (LION: "gelu") wins.
  act = t.get("dense_act_fn") or ("gelu_new" if proj == "gated-gelu" else proj.split("-")[-1])
  _require(act in ("gelu", "gelu_new", "relu"), where, f"unsupported T5 activation {act!r}")
  rescale = t.get("scale_decoder_outputs", t.get("tie_word_embeddings", True))
  tied = not has_lm_head
  _require(
    tied == bool(rescale),
    where,
    f"LM head {'absent' if tied else 'present'} but scale_decoder_outputs={rescale}: only the "
    "tied head with rescale (T5 1.0) and the untied head without it (T5 1.1, FlanT5) exist",
  )
  return presets._t5(
    vocab_size=t["vocab_size"],
    d_model=t["d_model"],
    d_kv=t["d_kv"],
    num_heads=t["num_heads"],
    d_ff=t["d_ff"],
    num_layers=t["num_layers"],
    num_decoder_layers=t["num_decoder_layers"] or t["num_layers"],
    relative_buckets=t["relative_attention_num_buckets"],
    relative_max_distance=t["relative_attention_max_distance"],
    ln_eps=t["layer_norm_epsilon"],
    dropout_rate=t["dropout_rate"],
    activation=act,
    gated=gated,
    tie_word_embeddings=tied,
  )


def instructblip_config(hf: dict, *, has_lm_head: bool, where: str) -> ml_collections.ConfigDict:
  v = {**VISION_DEFAULTS, **hf.get("vision_config", {})}
  q = {**QFORMER_DEFAULTS, **hf.get("qformer_config", {})}
  _require(v["hidden_act"] == "gelu" and q["hidden_act"] == "gelu", where, "only exact-GELU towers are supported")
  _require(v["qkv_bias"], where, "vision_config.qkv_bias=false is not the EVA ViT")
  _require(q["position_embedding_type"] == "absolute", where, "the Q-Former must use absolute positions")
  _require(
    q["encoder_hidden_size"] == v["hidden_size"],
    where,
    f"qformer_config.encoder_hidden_size={q['encoder_hidden_size']} != vision hidden_size {v['hidden_size']}",
  )
  _require("text_config" in hf, where, "no text_config (is this an InstructBLIP checkpoint?)")
  _require(
    hf["text_config"].get("model_type", "t5") == "t5",
    where,
    f"text model {hf['text_config'].get('model_type')!r} is not T5",
  )
  vit = presets._vit(
    image_size=v["image_size"],
    patch_size=v["patch_size"],
    width=v["hidden_size"],
    depth=v["num_hidden_layers"],
    num_heads=v["num_attention_heads"],
    mlp_dim=v["intermediate_size"],
    ln_eps=v["layer_norm_eps"],
  )
  qformer = presets._qformer(
    vocab_size=q["vocab_size"],
    width=q["hidden_size"],
    num_layers=q["num_hidden_layers"],
    num_heads=q["num_attention_heads"],
    mlp_dim=q["intermediate_size"],
    max_positions=q["max_position_embeddings"],
    num_queries=hf.get("num_query_tokens", 32),
    cross_attention_freq=q["cross_attention_frequency"],
    ln_eps=q["layer_norm_eps"],
    dropout_rate=q["hidden_dropout_prob"],
    vision_ln_eps=v["layer_norm_eps"],
  )
  t5 = t5_config_from_hf(hf["text_config"], has_lm_head=has_lm_head, where=where)
  return presets._lion(vit, qformer, presets._aggregator(), t5, visual_input="qformer", use_soft_prompt=False)


def fresh_adapters(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
  """Newly initialised MoA params for every T5 FFN (zero output until trained), flat '/' paths."""
  c = config.t5
  moa = MixtureOfAdapters(c.d_model, c.adapter_bottleneck, num_adapters(config), c.num_task_types)
  h, task = jnp.zeros((1, 1, c.d_model)), jnp.zeros((1,), jnp.int32)
  init = jax.jit(lambda key: nn.unbox(moa.init(key, h, task)["params"]))
  out, key = {}, jax.random.key(seed)
  for stack, n_layers in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
    for i in range(n_layers):
      key, sub = jax.random.split(key)
      for path, value in traverse_util.flatten_dict(jax.device_get(init(sub)), sep="/").items():
        out[f"t5/{stack}/layers_{i}/moa/{path}"] = np.asarray(value)
  return out


# Keys HF checkpoints carry that the model does not use: buffers and a bias T5 never reads. T5's
# embedding copies are not among them: they are checked against `shared` (mapping.t5_embedding_copies).
HF_IGNORED = (r".*position_ids", r".*decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight")


def load_hf_instructblip(
  path: str | os.PathLike, *, scan_layers: bool = True, progress: bool = False
) -> tuple[ml_collections.ConfigDict, dict]:
  """Reads an HF InstructBLIP-T5 checkpoint directory (config.json + safetensors, sharded or not).

  Returns (config, params): a stage-1 LION layout whose logits equal InstructBLIP's, its layers
  scanned or not (models/layer_stack.py).
  """
  path = Path(path)
  hf = read_json(path / "config.json")
  source = SafetensorsSource(path)
  config = instructblip_config(
    hf, has_lm_head="language_model.lm_head.weight" in source, where=str(path / "config.json")
  )
  # Assembled in the unrolled layout (one source key per layer), then laid out as the config asks.
  shapes = mapping.flat_shapes(abstract_params(layer_stack.unrolled_config(config)))
  entries = mapping.vit_hf(config) + mapping.qformer(config, "hf") + mapping.t5_body(config, "language_model.")
  flat = mapping.assemble(
    entries,
    source,
    mapping.select(shapes, ["vit/", "qformer/", "t5/"], ["/moa/"]),
    source_name=str(path),
    ignore=HF_IGNORED,
    copies=mapping.t5_embedding_copies("language_model."),
    progress=progress,
  )
  flat.update(fresh_adapters(config))
  config.scan_layers = scan_layers
  return config, mapping.unflatten(layer_stack.to_layout(flat, config))


def load_hf_t5(
  path: str | os.PathLike, *, progress: bool = False
) -> tuple[ml_collections.ConfigDict, dict[str, np.ndarray]]:
  """Reads an HF (Flan)T5 directory: returns (our T5 config, flat 't5/...' params without adapters)."""
  path = Path(path)
  text = read_json(path / "config.json")
  source = SafetensorsSource(path)
  t5 = t5_config_from_hf(text, has_lm_head="lm_head.weight" in source, where=str(path / "config.json"))
  ids = jnp.zeros((1, 2), jnp.int32)
  boxed = jax.eval_shape(lambda: T5(t5).init(jax.random.key(0), ids, ids, ids)["params"])
  shapes = {f"t5/{k}": v for k, v in mapping.flat_shapes(nn.unbox(boxed)).items()}
  flat = mapping.assemble(
    mapping.t5_body(ml_collections.ConfigDict({"t5": t5})),
    source,
    shapes,
    source_name=str(path),
    ignore=HF_IGNORED,
    copies=mapping.t5_embedding_copies(),
    progress=progress,
  )
  return t5, flat
