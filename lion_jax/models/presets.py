"""Model configs: `tiny` (tests and the demo), `flant5xl` (LION-4B) and `flant5xxl` (LION-12B).

Dims are those of the released LION (see docs/model.md): EVA ViT-g/14 cut to 39 blocks, a
bert-base Q-Former with 32 queries, a 2-block aggregator reading ViT blocks 39 <- 29, 19, FlanT5 with
exact-GELU gated FFNs and 64-wide adapters.
"""

from __future__ import annotations

import ml_collections

from lion_jax.errors import UserError

# `<extra_id_0>` in the T5 vocabulary (32000 SentencePiece pieces + 100 sentinels, counted down).
T5_SOFT_PROMPT_TOKEN_ID = 32099


def _vit(**overrides) -> ml_collections.ConfigDict:
  vit = dict(
    image_size=224,
    patch_size=14,
    width=1408,
    depth=39,
    num_heads=16,
    mlp_dim=6144,
    ln_eps=1e-6,
    pos_embed_init="normal",  # or "sincos2d" (models/vit.py)
    init_std=0.02,  # the random init's N(0, std) (models/layers.init_std); converted weights replace it
  )
  vit.update(overrides)
  return ml_collections.ConfigDict(vit)


def _qformer(**overrides) -> ml_collections.ConfigDict:
  q = dict(
    vocab_size=30523,
    width=768,
    num_layers=12,
    num_heads=12,
    mlp_dim=3072,
    max_positions=512,
    num_queries=32,
    cross_attention_freq=2,
    ln_eps=1e-12,
    dropout_rate=0.1,
    vision_ln_eps=1e-5,
    init_std=0.02,
  )  # LAVIS `ln_vision` is torch's LayerNorm default
  q.update(overrides)
  return ml_collections.ConfigDict(q)


def _aggregator(**overrides) -> ml_collections.ConfigDict:
  a = dict(
    num_heads=16,
    mlp_dim=3072,
    ln_eps=1e-12,
    dropout_rate=0.1,
    out_ln_eps=1e-5,
    proj_dim=5632,
    memory_layers=(29, 19),
    init_std=0.02,
  )  # 1-based ViT blocks that blocks 1, 2 cross-attend to
  a.update(overrides)
  return ml_collections.ConfigDict(a)


def _t5(**overrides) -> ml_collections.ConfigDict:
  t = dict(
    vocab_size=32128,
    d_model=2048,
    d_kv=64,
    num_heads=32,
    d_ff=5120,
    num_layers=24,
    num_decoder_layers=24,
    relative_buckets=32,
    relative_max_distance=128,
    ln_eps=1e-6,
    dropout_rate=0.1,
    activation="gelu",
    gated=True,
    tie_word_embeddings=False,
    adapter_bottleneck=64,
    num_task_types=2,
    # std of the `shared` and `lm_head` tables' random init: HF's 1.0 (converted checkpoints overwrite it);
    # a model trained from scratch wants ~d_model**-0.5, or its first logits have std ~sqrt(d_model).
    embedding_init_std=1.0,
  )
  t.update(overrides)
  return ml_collections.ConfigDict(t)


def _lion(vit, qformer, aggregator, t5, **overrides) -> ml_collections.ConfigDict:
  c = dict(
    visual_input="all",
    dtype="float32",
    use_soft_prompt=True,
    adapters="moa",
    soft_prompt_token_id=T5_SOFT_PROMPT_TOKEN_ID,
    scan_layers=True,  # the repeated layers as one scan each (models/layer_stack.py)
    remat="none",  # or "full" / "matmuls": recompute each layer in the backward pass
    vit=vit,
    qformer=qformer,
    aggregator=aggregator,
    t5=t5,
  )
  c.update(overrides)
  return ml_collections.ConfigDict(c)


def flant5xl(visual_input: str = "all") -> ml_collections.ConfigDict:
  return _lion(_vit(), _qformer(), _aggregator(), _t5(), visual_input=visual_input)


def flant5xxl(visual_input: str = "all") -> ml_collections.ConfigDict:
  return _lion(
    _vit(), _qformer(), _aggregator(), _t5(d_model=4096, num_heads=64, d_ff=10240), visual_input=visual_input
  )


def tiny(
  visual_input: str = "all", t5_vocab_size: int = 256, qformer_vocab_size: int = 128
) -> ml_collections.ConfigDict:
  """Seconds on a CPU; same structure as the real presets (ViT depth 5 so blocks 5 <- 3, 2)."""
  return _lion(
    _vit(image_size=28, patch_size=7, width=32, depth=5, num_heads=4, mlp_dim=64),
    _qformer(
      vocab_size=qformer_vocab_size, width=32, num_layers=2, num_heads=4, mlp_dim=64, max_positions=64, num_queries=4
    ),
    _aggregator(num_heads=4, mlp_dim=64, proj_dim=64, memory_layers=(3, 2)),
    _t5(
      vocab_size=t5_vocab_size,
      d_model=32,
      d_kv=8,
      num_heads=4,
      d_ff=64,
      num_layers=2,
      num_decoder_layers=2,
      adapter_bottleneck=8,
    ),
    visual_input=visual_input,
    soft_prompt_token_id=t5_vocab_size - 1,
  )


PRESETS = {"tiny": tiny, "flant5xl": flant5xl, "flant5xxl": flant5xxl}


def get(name: str, visual_input: str = "all") -> ml_collections.ConfigDict:
  if name not in PRESETS:
    raise UserError(f"unknown model preset {name!r}; expected one of {sorted(PRESETS)}")
  return PRESETS[name](visual_input=visual_input)


# --------------------------------------------------------------------------------- RAM tagger ---

# The `kind` of a RAM tagger's config, which tells its converted directory from a LION model's.
RAM_KIND = "ram_tagger"


def ram_swin_large(num_classes: int = 4585) -> ml_collections.ConfigDict:
  """`ram_swin_large_14m.pth` as LION builds it: Swin-L at 384 px (window 12), a 2-layer tagging head
  of 4 heads of 192 over 512-wide image and label embeddings, 4585 tag classes."""
  return ml_collections.ConfigDict(
    dict(
      kind=RAM_KIND,
      dtype="float32",  # the official tagger runs in float32 (no autocast around it)
      num_classes=num_classes,
      embed_dim=512,  # image_proj output = label embedding width
      swin=dict(
        image_size=384,
        patch_size=4,
        embed_dim=192,
        depths=(2, 2, 18, 2),
        num_heads=(6, 12, 24, 48),
        window=12,
        mlp_ratio=4.0,
        ln_eps=1e-5,
      ),
      head=dict(width=768, num_layers=2, num_heads=4, mlp_dim=3072, ln_eps=1e-12),
    )
  )


def ram_tiny(num_classes: int = 20) -> ml_collections.ConfigDict:
  """Seconds on a CPU; the same structure: stages on 32, 16, 8, 4 grids with 4x4 windows, so the first
  three have shifted blocks and the last is one unshifted window, as Swin-L's 12x12 stage is."""
  c = ram_swin_large(num_classes)
  c.embed_dim = 24
  c.swin.update(image_size=64, patch_size=2, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 4, 8, 16), window=4)
  c.head.update(width=32, num_heads=4, mlp_dim=64)
  return c


RAM_PRESETS = {"ram_swin_large": ram_swin_large, "tiny": ram_tiny}
