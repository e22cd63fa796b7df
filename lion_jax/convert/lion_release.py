"""The LION release: LAVIS `eva_vit_g.pth` + HF FlanT5 + the LION trainables `.pth`, as one param tree.

The LION file holds only what LION trains (Q-Former, aggregator, adapters and gates, soft prompt;
key layout in docs/model.md); the frozen ViT and T5 body come from their original files. LION runs
FlanT5's gated FFN with exact GELU (it overrides HF's `gelu_new`), so the T5 activation is set to
`gelu` unless told otherwise.
"""

from __future__ import annotations

import os

import ml_collections
import numpy as np

from lion_jax.convert import mapping
from lion_jax.convert.hf import load_hf_t5
from lion_jax.convert.sources import TorchSource
from lion_jax.errors import UserError
from lion_jax.models import abstract_params, layer_stack, num_adapters, param_paths, presets

# Keys of the LION file the model does not read: a BERT buffer, and T5's tied embedding copies (which
# `check_embedding_copies` verifies instead).
LION_IGNORED = (r"Qformer\.bert\.embeddings\.position_ids", r"t5_model\.(en|de)coder\.embed_tokens\.weight")
LION_EMBEDDING_COPIES = tuple(f"t5_model.{stack}.embed_tokens.weight" for stack in ("encoder", "decoder"))


def check_embedding_copies(lion, shared: np.ndarray, lion_pth, flant5_dir) -> None:
  """The release keeps T5's embedding copies (bf16, tied to `shared` in the official model); the model
  reads FlanT5's `shared` instead, so each copy must be that table rounded to the copy's dtype. A
  release made on another T5 than the one given fails here rather than giving other logits."""
  differing = []
  for key in (k for k in LION_EMBEDDING_COPIES if k in lion):
    copy = lion[key]
    pair = {key: copy, f"{flant5_dir} shared.weight (as {copy.dtype})": np.asarray(shared).astype(copy.dtype)}
    differing.append(mapping.copy_difference(pair, *pair))
  differing = [d for d in differing if d]
  if differing:
    raise mapping.CheckpointMismatchError(
      f"{lion_pth}: T5 embedding copies differ from the FlanT5 table the model reads (is this release "
      f"made on that FlanT5?):\n  " + "\n  ".join(differing)
    )


def visual_input_of(keys) -> str:
  """Stage layout of a LION trainables file, from which branches it holds."""
  has_qformer = any(k.startswith("Qformer.") for k in keys)
  has_aggregator = any(k.startswith("fusion_adapter.") for k in keys)
  if has_qformer and has_aggregator:
    return "all"
  if has_qformer or has_aggregator:
    return "qformer" if has_qformer else "aggregator"
  raise UserError("the LION file has neither Q-Former ('Qformer.*') nor aggregator ('fusion_adapter.*') keys")


def lion_trainable_entries(config: ml_collections.ConfigDict) -> list[mapping.Entry]:
  entries = mapping.t5_adapters_lion(config, num_adapters(config))
  if config.visual_input in ("qformer", "all"):
    entries += mapping.qformer(config, "lavis")
  if config.visual_input in ("aggregator", "all"):
    entries += mapping.aggregator_lion(config)
  if config.use_soft_prompt:
    entries.append(mapping.Entry("soft_prompt", "soft_prompt_hint"))
  return entries


def load_lion_release(
  *,
  lion_pth: str | os.PathLike,
  eva_vit_pth: str | os.PathLike,
  flant5_dir: str | os.PathLike,
  t5_activation: str | None = "gelu",
  towers: ml_collections.ConfigDict | None = None,
  frozen_dtype=np.float32,
  scan_layers: bool = True,
  progress: bool = False,
) -> tuple[ml_collections.ConfigDict, dict]:
  """Returns (config, params) for the full LION model described by the three files.

  The T5 dims come from the FlanT5 config, the stage layout from the keys of the LION file, the
  ViT / Q-Former / aggregator dims from `towers` (a model config; default: the released LION's).
  `frozen_dtype` is the storage dtype of the ViT and the T5 body (e.g. `ml_dtypes.bfloat16`);
  trainables stay float32. `scan_layers`: the layer layout of the params (models/layer_stack.py).
  """
  towers = towers if towers is not None else presets.flant5xl()
  t5_config, t5_flat = load_hf_t5(flant5_dir, progress=progress)
  if t5_activation is not None:
    t5_config.activation = t5_activation
  lion = TorchSource(lion_pth)
  check_embedding_copies(lion, t5_flat["t5/shared"], lion_pth, flant5_dir)
  config = presets._lion(
    towers.vit,
    towers.qformer,
    towers.aggregator,
    t5_config,
    visual_input=visual_input_of(lion),
    use_soft_prompt="soft_prompt_hint" in lion,
  )
  # Assembled in the unrolled layout (one source key per layer), then laid out as the config asks.
  shapes = mapping.flat_shapes(abstract_params(layer_stack.unrolled_config(config)))

  vit = TorchSource(eva_vit_pth)
  kept_blocks = "|".join(str(i) for i in range(config.vit.depth))
  flat = mapping.assemble(
    mapping.vit_lavis(config),
    vit,
    mapping.select(shapes, ["vit/"]),
    source_name=str(eva_vit_pth),
    ignore=[rf"blocks\.(?!({kept_blocks})\.).*"],
    dtype=frozen_dtype,
    progress=progress,
  )
  flat.update({k: v.astype(frozen_dtype) for k, v in t5_flat.items()})
  # The release holds what the official code trained: everything LION's freezing rule does not fix.
  trainable_shapes = {k: v for k, v in shapes.items() if not param_paths.LION.is_frozen(k)}
  flat.update(
    mapping.assemble(
      lion_trainable_entries(config),
      lion,
      trainable_shapes,
      source_name=str(lion_pth),
      ignore=LION_IGNORED,
      progress=progress,
    )
  )
  missing = sorted(set(shapes) - set(flat))
  if missing:
    raise mapping.CheckpointMismatchError(f"parameters no file provided: {missing[:20]}")
  config.scan_layers = scan_layers
  return config, mapping.unflatten(layer_stack.to_layout(flat, config))
