"""Key maps from the PyTorch checkpoints people have (HF, LAVIS, LION) to the lion-jax param tree.

A map is a list of `Entry(dst, src, transform)`: `dst` is our '/'-joined param path, `src` the source
key, `transform` turns the source array into ours (torch Linear [out, in] -> Flax kernel [in, out],
conv OIHW -> HWIO, slices of a fused bias). `assemble` applies a map and refuses to guess: missing
keys, unexpected keys and shape mismatches are reported by name, and a source key that copies another
(T5's tied embedding tables) is compared with it, never dropped unseen.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import ml_collections
import numpy as np
from flax import traverse_util

from lion_jax.errors import UserError

Transform = Callable[[np.ndarray], np.ndarray]


def same(x: np.ndarray) -> np.ndarray:
  return x


def linear(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.T)


def conv(x: np.ndarray) -> np.ndarray:
  return np.ascontiguousarray(x.transpose(2, 3, 1, 0))


def third(i: int) -> Transform:
  """Slice i of a fused [q; k; v] vector."""
  return lambda x: x[i * (x.shape[0] // 3) : (i + 1) * (x.shape[0] // 3)]


@dataclasses.dataclass(frozen=True)
class Entry:
  dst: str
  src: str
  transform: Transform = same


class CheckpointMismatchError(UserError):
  """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys by name."""


def _dense(dst: str, src: str, bias: bool = True) -> list[Entry]:
  out = [Entry(f"{dst}/kernel", f"{src}.weight", linear)]
  if bias:
    out.append(Entry(f"{dst}/bias", f"{src}.bias"))
  return out


def _norm(dst: str, src: str, scale_only: bool = False) -> list[Entry]:
  out = [Entry(f"{dst}/scale", f"{src}.weight")]
  if not scale_only:
    out.append(Entry(f"{dst}/bias", f"{src}.bias"))
  return out


# ----------------------------------------------------------------------------------------- ViT ---


def vit_hf(config: ml_collections.ConfigDict, src: str = "vision_model.") -> list[Entry]:
  """HF `InstructBlipVisionModel` / `Blip2VisionModel` (qkv bias fused as [q, 0, v])."""
  e = [
    Entry("vit/cls_token", f"{src}embeddings.class_embedding"),
    Entry("vit/pos_embed", f"{src}embeddings.position_embedding"),
    Entry("vit/patch_embed/kernel", f"{src}embeddings.patch_embedding.weight", conv),
    Entry("vit/patch_embed/bias", f"{src}embeddings.patch_embedding.bias"),
  ]
  for i in range(config.vit.depth):
    s, d = f"{src}encoder.layers.{i}.", f"vit/blocks_{i}/"
    e += [
      Entry(d + "attn/qkv/kernel", s + "self_attn.qkv.weight", linear),
      Entry(d + "attn/q_bias", s + "self_attn.qkv.bias", third(0)),
      Entry(d + "attn/v_bias", s + "self_attn.qkv.bias", third(2)),
    ]
    e += _dense(d + "attn/proj", s + "self_attn.projection")
    e += _norm(d + "norm1", s + "layer_norm1") + _norm(d + "norm2", s + "layer_norm2")
    e += _dense(d + "fc1", s + "mlp.fc1") + _dense(d + "fc2", s + "mlp.fc2")
  return e


def vit_lavis(config: ml_collections.ConfigDict, src: str = "") -> list[Entry]:
  """LAVIS / EVA-CLIP `eva_vit_g.pth` (separate q_bias and v_bias)."""
  e = [
    Entry("vit/cls_token", f"{src}cls_token"),
    Entry("vit/pos_embed", f"{src}pos_embed"),
    Entry("vit/patch_embed/kernel", f"{src}patch_embed.proj.weight", conv),
    Entry("vit/patch_embed/bias", f"{src}patch_embed.proj.bias"),
  ]
  for i in range(config.vit.depth):
    s, d = f"{src}blocks.{i}.", f"vit/blocks_{i}/"
    e += [
      Entry(d + "attn/qkv/kernel", s + "attn.qkv.weight", linear),
      Entry(d + "attn/q_bias", s + "attn.q_bias"),
      Entry(d + "attn/v_bias", s + "attn.v_bias"),
    ]
    e += _dense(d + "attn/proj", s + "attn.proj")
    e += _norm(d + "norm1", s + "norm1") + _norm(d + "norm2", s + "norm2")
    e += _dense(d + "fc1", s + "mlp.fc1") + _dense(d + "fc2", s + "mlp.fc2")
  return e


# ------------------------------------------------------------------------------ BERT sublayers ---


def _bert_attention(dst: str, src: str, inner: str) -> list[Entry]:
  """`inner` is 'attention' (HF InstructBLIP Q-Former) or 'self' (BERT / LAVIS)."""
  e = []
  for name in ("query", "key", "value"):
    e += _dense(f"{dst}/{name}", f"{src}.{inner}.{name}")
  return e + _dense(f"{dst}/out", f"{src}.output.dense") + _norm(f"{dst}/norm", f"{src}.output.LayerNorm")


def _bert_ffn(dst: str, intermediate: str, output: str) -> list[Entry]:
  return (
    _dense(f"{dst}/fc1", f"{intermediate}.dense")
    + _dense(f"{dst}/fc2", f"{output}.dense")
    + _norm(f"{dst}/norm", f"{output}.LayerNorm")
  )


# ------------------------------------------------------------------------------------ Q-Former ---


def qformer(config: ml_collections.ConfigDict, style: str) -> list[Entry]:
  """The Q-Former branch. style 'hf': HF InstructBLIP names; 'lavis': LAVIS / LION names."""
  if style == "hf":
    bert, inner, emb_norm = "qformer.", "attention", "qformer.embeddings.layernorm"
    e = [Entry("qformer/query_tokens", "query_tokens")]
    e += _norm("qformer/vision_norm", "vision_model.post_layernorm")
    e += _dense("qformer/proj", "language_projection")
  elif style == "lavis":
    bert, inner, emb_norm = "Qformer.bert.", "self", "Qformer.bert.embeddings.LayerNorm"
    e = [Entry("qformer/query_tokens", "query_tokens")]
    e += _norm("qformer/vision_norm", "ln_vision")
    e += _dense("qformer/proj", "t5_proj")
  else:
    raise ValueError(f"unknown Q-Former key style {style!r}")
  d = "qformer/encoder/"
  e += [
    Entry(d + "word_embeddings", f"{bert}embeddings.word_embeddings.weight"),
    Entry(d + "position_embeddings", f"{bert}embeddings.position_embeddings.weight"),
  ]
  e += _norm(d + "embed_norm", emb_norm)
  for i in range(config.qformer.num_layers):
    s, dl = f"{bert}encoder.layer.{i}.", f"{d}layers_{i}/"
    e += _bert_attention(dl + "self_attention", s + "attention", inner)
    if i % config.qformer.cross_attention_freq == 0:
      e += _bert_attention(dl + "cross_attention", s + "crossattention", inner)
    e += _bert_ffn(dl + "text_ffn", s + "intermediate", s + "output")
    e += _bert_ffn(dl + "query_ffn", s + "intermediate_query", s + "output_query")
  return e


# ---------------------------------------------------------------------------------- Aggregator ---


def aggregator_lion(config: ml_collections.ConfigDict) -> list[Entry]:
  """LION `fusion_adapter` (HF BertLayers) + `ln_adapter` + `adapter_proj`."""
  e = []
  for b in range(len(config.aggregator.memory_layers)):
    s, d = f"fusion_adapter.blocks.{b}.", f"aggregator/blocks_{b}/"
    e += _bert_attention(d + "self_attention", s + "attention", "self")
    e += _bert_attention(d + "cross_attention", s + "crossattention", "self")
    e += _bert_ffn(d + "ffn", s + "intermediate", s + "output")
  e += _norm("aggregator/out_norm", "ln_adapter")
  return e + _dense("aggregator/proj_in", "adapter_proj.0") + _dense("aggregator/proj_out", "adapter_proj.2")


# ------------------------------------------------------------------------------------------ T5 ---


def t5_body(config: ml_collections.ConfigDict, src: str = "") -> list[Entry]:
  """HF T5 names (`T5ForConditionalGeneration`), without adapters."""
  c = config.t5
  e = [Entry("t5/shared", f"{src}shared.weight")]
  if not c.tie_word_embeddings:
    e += _dense("t5/lm_head", f"{src}lm_head", bias=False)
  ffn = ["wi_0", "wi_1", "wo"] if c.gated else ["wi", "wo"]
  for stack, n_layers in (("encoder", c.num_layers), ("decoder", c.num_decoder_layers)):
    e.append(
      Entry(
        f"t5/{stack}/relative_position_bias/rel_embedding",
        f"{src}{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
      )
    )
    e += _norm(f"t5/{stack}/final_norm", f"{src}{stack}.final_layer_norm", scale_only=True)
    for i in range(n_layers):
      s, d = f"{src}{stack}.block.{i}.layer.", f"t5/{stack}/layers_{i}/"
      attn = [("self_attention", "0.SelfAttention", "0.layer_norm")]
      if stack == "decoder":
        attn.append(("cross_attention", "1.EncDecAttention", "1.layer_norm"))
      for name, module, norm in attn:
        for w in ("q", "k", "v", "o"):
          e += _dense(f"{d}{name}/{w}", f"{s}{module}.{w}", bias=False)
        e += _norm(f"{d}{name}_norm", s + norm, scale_only=True)
      f = 2 if stack == "decoder" else 1
      for w in ffn:
        e += _dense(f"{d}ffn/{w}", f"{s}{f}.DenseReluDense.{w}", bias=False)
      e += _norm(f"{d}ffn_norm", f"{s}{f}.layer_norm", scale_only=True)
  return e


def t5_embedding_copies(src: str = "") -> dict[str, str]:
  """{copy: original} for the per-stack embedding tables HF ties to `shared`: the model reads `shared`
  alone, so a copy that differs (an untied config) would change the logits."""
  return {f"{src}{stack}.embed_tokens.weight": f"{src}shared.weight" for stack in ("encoder", "decoder")}


def t5_adapters_lion(config: ml_collections.ConfigDict, num_adapters: int, src: str = "t5_model.") -> list[Entry]:
  """LION MoA keys: `{stack}.block.{i}.layer.{1|2}.adapter.{adapters.k.*, router_ratio{k+1}}`."""
  c, e = config.t5, []
  for stack, n_layers, f in (("encoder", c.num_layers, 1), ("decoder", c.num_decoder_layers, 2)):
    for i in range(n_layers):
      s, d = f"{src}{stack}.block.{i}.layer.{f}.adapter.", f"t5/{stack}/layers_{i}/moa/"
      for k in range(num_adapters):
        a = f"{d}adapter_{k}/"
        e += _dense(a + "down", f"{s}adapters.{k}.down_proj") + _dense(a + "up", f"{s}adapters.{k}.up_proj")
        e.append(Entry(a + "scale", f"{s}adapters.{k}.scale"))
        if num_adapters > 1:
          e.append(Entry(f"{d}gate_{k}", f"{s}router_ratio{k + 1}"))
  return e


# ------------------------------------------------------------------------------------ RAM tagger ---

# Keys of `ram_swin_large_14m.pth` that tagging does not read: buffers the official loader drops and
# recomputes, and the Tag2Text text encoder and decoder (the tagging head's two layers are stored
# again, tied, as tag_encoder layers 0-1; the `tagging_head.*` copy is the one the official model keeps).
RAM_UNUSED = (
  r"visual_encoder\..*\.relative_position_index",
  r"visual_encoder\..*\.attn_mask",
  r"tag_encoder\..*",
  r"text_decoder\..*",
)


def ram_tagger(config: ml_collections.ConfigDict) -> list[Entry]:
  """The official RAM key layout (`ram/models/ram.py`, `swin_transformer.py`) -> `RamTaggingModel`."""
  e = [
    Entry("swin/patch_embed/kernel", "visual_encoder.patch_embed.proj.weight", conv),
    Entry("swin/patch_embed/bias", "visual_encoder.patch_embed.proj.bias"),
  ]
  e += _norm("swin/patch_norm", "visual_encoder.patch_embed.norm")
  for i, depth in enumerate(config.swin.depths):
    for j in range(depth):
      s, d = f"visual_encoder.layers.{i}.blocks.{j}.", f"swin/stage_{i}_block_{j}/"
      e += _norm(d + "norm1", s + "norm1") + _norm(d + "norm2", s + "norm2")
      e += _dense(d + "attn/qkv", s + "attn.qkv") + _dense(d + "attn/proj", s + "attn.proj")
      e.append(Entry(d + "attn/relative_position_bias_table", s + "attn.relative_position_bias_table"))
      e += _dense(d + "fc1", s + "mlp.fc1") + _dense(d + "fc2", s + "mlp.fc2")
    if i < len(config.swin.depths) - 1:
      s, d = f"visual_encoder.layers.{i}.downsample.", f"swin/stage_{i}_merge/"
      e += _norm(d + "norm", s + "norm") + _dense(d + "reduction", s + "reduction", bias=False)
  e += _norm("swin/norm", "visual_encoder.norm")
  e += _dense("image_proj", "image_proj") + _dense("wordvec_proj", "wordvec_proj") + _dense("fc", "fc")
  e.append(Entry("label_embed", "label_embed"))
  for layer in range(config.head.num_layers):
    s, d = f"tagging_head.encoder.layer.{layer}.", f"tagging_{layer}/"
    e += _bert_attention(d + "cross_attention", s + "crossattention", "self")
    e += _bert_ffn(d + "ffn", s + "intermediate", s + "output")
  return e


# -------------------------------------------------------------------------------------- apply ---


def _listing(items: Sequence[str], limit: int = 20) -> str:
  shown = "\n    ".join(items[:limit])
  more = f"\n    ... and {len(items) - limit} more" if len(items) > limit else ""
  return f"\n    {shown}{more}"


def copy_difference(source: Mapping[str, np.ndarray], copy: str, original: str) -> str | None:
  """None when `source[copy]` equals `source[original]` exactly, else how they differ."""
  a, b = source[copy], source[original]
  if a.shape != b.shape:
    return f"{copy} has shape {a.shape}, {original} {b.shape}"
  if np.array_equal(a, b):
    return None
  largest = np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))
  return f"{copy} differs from {original}: largest difference {largest:.6g}"


def assemble(
  entries: Iterable[Entry],
  source: Mapping[str, np.ndarray],
  expected: Mapping[str, tuple],
  *,
  source_name: str,
  ignore: Sequence[str] = (),
  copies: Mapping[str, str] | None = None,
  dtype=np.float32,
  progress: bool = False,
) -> dict[str, np.ndarray]:
  """Applies `entries` to `source`; returns a flat {dst: array} dict.

  `expected` maps every dst this source must provide to its shape. Source keys matching a regex in
  `ignore` may stay unused (known buffers, blocks the model drops); a key of `copies` ({copy:
  original}) may too, if it equals its original exactly. Any other unused key, a differing copy, a
  missing key or a shape mismatch raises `CheckpointMismatchError` naming `source_name`.
  """
  entries = list(entries)
  out, missing, bad_shape, used = {}, [], [], set()
  iterator = entries
  if progress:
    from tqdm import tqdm

    iterator = tqdm(entries, desc=f"converting {source_name}", unit="tensor")
  for entry in iterator:
    if entry.src not in source:
      missing.append(f"{entry.src} (for {entry.dst})")
      continue
    used.add(entry.src)
    if entry.dst not in expected:
      raise KeyError(f"internal key map error: {entry.dst} is not a model parameter")
    value = np.asarray(entry.transform(source[entry.src]))
    want = tuple(expected[entry.dst])
    if value.shape != want:
      bad_shape.append(f"{entry.src} -> {entry.dst}: checkpoint {value.shape}, model {want}")
      continue
    out[entry.dst] = value.astype(dtype)
  not_mapped = sorted(set(expected) - {e.dst for e in entries})
  present_copies = {k: v for k, v in (copies or {}).items() if k in source and v in source}
  used |= set(present_copies)
  differing = [d for d in (copy_difference(source, k, v) for k, v in present_copies.items()) if d]
  unexpected = sorted(k for k in source if k not in used and not any(re.fullmatch(p, k) for p in ignore))
  problems = []
  if missing:
    problems.append(f"{len(missing)} keys the model needs are missing:{_listing(missing)}")
  if bad_shape:
    problems.append(f"{len(bad_shape)} shapes do not match:{_listing(bad_shape)}")
  if differing:
    problems.append(f"{len(differing)} copies differ from the table the model reads:{_listing(differing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} keys were not used by the model:{_listing(unexpected)}")
  if not_mapped:
    problems.append(f"{len(not_mapped)} model parameters have no source:{_listing(not_mapped)}")
  if problems:
    raise CheckpointMismatchError(f"{source_name} does not fit the model config:\n  " + "\n  ".join(problems))
  return out


def flat_shapes(abstract_tree) -> dict[str, tuple]:
  """{'a/b/c': shape} for a (nested dict) parameter tree of arrays or ShapeDtypeStructs."""
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(abstract_tree, sep="/").items()}


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
  return traverse_util.unflatten_dict(dict(flat), sep="/")


def select(shapes: Mapping[str, tuple], prefixes: Sequence[str], exclude: Sequence[str] = ()) -> dict:
  """The entries of `shapes` under any of `prefixes` and not containing any of `exclude`."""
  return {
    k: v for k, v in shapes.items() if any(k.startswith(p) for p in prefixes) and not any(x in k for x in exclude)
  }
