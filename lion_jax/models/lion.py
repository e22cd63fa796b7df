"""LION: EVA ViT + (Q-Former branch and/or vision aggregator) + FlanT5 with a mixture of adapters.

The batch contract (stable; everything else in the project speaks it):

  image              float32 [B, H, W, 3]  already CLIP-normalised
  qformer_ids        int32   [B, Lq]       BERT ids of the question (Q-Former text)
  qformer_mask       int32   [B, Lq]
  input_ids          int32   [B, L]        T5 ids of the instruction (text only: the visual tokens are
  input_mask         int32   [B, L]        prepended by the model, no placeholder ids)
  decoder_input_ids  int32   [B, T]        targets shifted right, starting with the decoder start id 0
  task               int32   [B]           0 = region-level, 1 = image-level (selects MoA gate rows)

`Lion(config).apply({'params': params}, batch)` returns logits [B, T, V] in float32; it is
deterministic unless called with `train=True` and a `'dropout'` rng.

The T5 encoder reads `[Q-Former tokens | aggregator tokens | instruction embeddings]`, the visual part
always unmasked. `config.visual_input` picks the stage layout, as in the official code:
  'qformer'    (stage 1): Q-Former tokens only, one adapter per FFN
  'aggregator' (stage 2): aggregator tokens only, one adapter per FFN
  'all'        (stage 3): both, two adapters per FFN with per-task gates
Modules a layout does not use are not created, so their parameters do not exist.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lion_jax.data import contract
from lion_jax.errors import UserError
from lion_jax.models import layers
from lion_jax.models.aggregator import Aggregator
from lion_jax.models.qformer import QFormerBranch
from lion_jax.models.t5 import T5
from lion_jax.models.vit import VisionTransformer

VISUAL_INPUTS = ("qformer", "aggregator", "all")


ADAPTER_MODES = ("moa", "single", "none")


def adapters_per_ffn(visual_input: str, adapters: str = "moa") -> int:
  """`moa` (LION): two gated adapters in the `all` layout, one otherwise; `single`: one adapter
  shared by both task levels (an ablation); `none`: a plain InstructBLIP-style T5 (the demo's
  tower-pretraining stage)."""
  if adapters not in ADAPTER_MODES:
    raise UserError(f"adapters={adapters!r}; expected one of {ADAPTER_MODES}")
  if adapters == "none":
    return 0
  return 2 if visual_input == "all" and adapters == "moa" else 1


def num_adapters(config: ml_collections.ConfigDict) -> int:
  return adapters_per_ffn(config.visual_input, config.get("adapters", "moa"))


class Lion(nn.Module):
  config: ml_collections.ConfigDict

  def setup(self):
    c = self.config
    if c.visual_input not in VISUAL_INPUTS:
      raise UserError(f"config.visual_input={c.visual_input!r}; expected one of {VISUAL_INPUTS}")
    dtype = jnp.dtype(c.dtype)
    stacked = dict(scan_layers=c.get("scan_layers", False), remat=c.get("remat", "none"))
    self.vit = VisionTransformer(c.vit, dtype, **stacked)
    if c.visual_input in ("qformer", "all"):
      self.qformer = QFormerBranch(c.qformer, c.t5.d_model, dtype, **stacked)
    if c.visual_input in ("aggregator", "all"):
      self.aggregator = Aggregator(c.aggregator, c.vit.width, c.t5.d_model, dtype)
    self.t5 = T5(c.t5, num_adapters(c), dtype, **stacked)
    if c.use_soft_prompt:
      self.soft_prompt = self.param(
        "soft_prompt", nn.with_logical_partitioning(nn.initializers.normal(1.0), ("embed",)), (c.t5.d_model,)
      )

  def visual_tokens(self, batch, *, train: bool = False) -> jax.Array:
    """Image (+ question) -> [B, N_visual, d_model] tokens for the T5 encoder."""
    c = self.config
    memory_layers = tuple(c.aggregator.memory_layers) if c.visual_input in ("aggregator", "all") else ()
    # Frozen or not is the trainer's freezing rule, not the model's.
    last, *memories = self.vit(batch["image"], (c.vit.depth, *memory_layers))
    tokens = []
    if c.visual_input in ("qformer", "all"):
      tokens.append(self.qformer(last, batch["qformer_ids"], batch["qformer_mask"], train=train))
    if c.visual_input in ("aggregator", "all"):
      tokens.append(self.aggregator(last, memories, train=train))
    return jnp.concatenate(tokens, axis=1)

  def text_embeddings(self, input_ids: jax.Array) -> jax.Array:
    """T5 embeddings of the instruction, the soft-prompt vector at every `<extra_id_0>` position."""
    x = self.t5.embed(input_ids)
    if self.config.use_soft_prompt:
      at_sentinel = (input_ids == self.config.soft_prompt_token_id)[..., None]
      x = jnp.where(at_sentinel, self.soft_prompt.astype(x.dtype), x)
    return x

  def encode(self, batch, *, train: bool = False):
    """Runs the image towers and the T5 encoder once; returns (encoded [B, S, d], mask [B, S])."""
    visual = self.visual_tokens(batch, train=train)
    text = self.text_embeddings(batch["input_ids"])
    x = jnp.concatenate([visual.astype(text.dtype), text], axis=1)
    x = layers.constrain(x, ("batch", "length", "embed"))
    b, n_visual = visual.shape[:2]
    mask = jnp.concatenate([jnp.ones((b, n_visual), jnp.int32), batch["input_mask"].astype(jnp.int32)], axis=1)
    return self.t5.encode(x, mask, batch["task"], train=train), mask

  def decode(
    self, decoder_input_ids, encoded, encoder_mask, task, *, train: bool = False, cache_len: int = 0, cache_index=None
  ):
    """Logits [B, T, V]; with `cache_len`, one incremental step (see T5.decode)."""
    return self.t5.decode(
      decoder_input_ids, encoded, encoder_mask, task, train=train, cache_len=cache_len, cache_index=cache_index
    )

  def __call__(self, batch, *, train: bool = False) -> jax.Array:
    encoded, mask = self.encode(batch, train=train)
    return self.decode(batch["decoder_input_ids"], encoded, mask, batch["task"], train=train)


def example_batch(
  config: ml_collections.ConfigDict, batch_size: int = 1, qformer_len: int = 8, text_len: int = 8, target_len: int = 4
) -> dict[str, jax.Array]:
  """The batch contract's model inputs at the config's image size and short lengths (for init/shapes)."""
  spec = contract.spec(config.vit.image_size, qformer_len, text_len, target_len)
  return {k: jnp.asarray(v) for k, v in contract.zeros(spec, batch_size, contract.MODEL_KEYS).items()}


def abstract_params(config: ml_collections.ConfigDict):
  """The parameter tree as ShapeDtypeStructs (logical boxes removed); nothing is allocated."""
  boxed = jax.eval_shape(lambda: Lion(config).init(jax.random.key(0), example_batch(config))["params"])
  return nn.unbox(boxed)
