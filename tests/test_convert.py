"""Converters for the LION release (.pth files in the official key layout) and the converted directory."""

from __future__ import annotations

import json
import re

import jax
import numpy as np
import pytest

from lion_jax.convert import CheckpointMismatchError, load_converted, load_lion_release
from lion_jax.convert.__main__ import main as convert_main
from lion_jax.convert.mapping import flat_shapes
from lion_jax.models import abstract_params, layer_stack, param_paths, presets
from tests.conftest import require
from tests.reference import randomize_, state_dict_numpy


class Release:
  """A state dict in a released key layout, built together with where each tensor must land in our
  tree (after torch Linear [out, in] -> kernel [in, out] and conv OIHW -> HWIO): the test's own
  statement of the key maps, independent of lion_jax.convert.mapping."""

  def __init__(self, torch, seed):
    self.torch, self.g = torch, torch.Generator().manual_seed(seed)
    self.state, self.expected = {}, {}

  def random(self, *shape, offset=0.0):
    return offset + self.torch.randn(*shape, generator=self.g) * 0.1

  def put(self, key, value, dst=None, to_ours=lambda x: x):
    self.state[key] = value
    if dst is not None:
      self.expected[dst] = to_ours(value.float().numpy())

  def linear(self, src, dst, out_dim, in_dim):
    self.put(f"{src}.weight", self.random(out_dim, in_dim), f"{dst}/kernel", np.transpose)
    self.put(f"{src}.bias", self.random(out_dim), f"{dst}/bias")

  def layer_norm(self, src, dst, dim):
    self.put(f"{src}.weight", self.random(dim, offset=1.0), f"{dst}/scale")
    self.put(f"{src}.bias", self.random(dim), f"{dst}/bias")

  def bert_attention(self, src, dst, width, memory_width):
    for name in ("query", "key", "value"):
      self.linear(f"{src}.self.{name}", f"{dst}/{name}", width, width if name == "query" else memory_width)
    self.linear(f"{src}.output.dense", f"{dst}/out", width, width)
    self.layer_norm(f"{src}.output.LayerNorm", f"{dst}/norm", width)

  def bert_ffn(self, intermediate, output, dst, width, mlp_dim):
    self.linear(f"{intermediate}.dense", f"{dst}/fc1", mlp_dim, width)
    self.linear(f"{output}.dense", f"{dst}/fc2", width, mlp_dim)
    self.layer_norm(f"{output}.LayerNorm", f"{dst}/norm", width)


def official_lion_state_dict(torch, towers, shared, n_enc, n_dec, seed=0) -> Release:
  """A random stage-3 trainables dict in the released key layout (docs/model.md, 'LION .pth'), with
  the FlanT5 embedding `shared` [vocab, d_model] kept as the official file keeps it (bf16 copies)."""
  d_model = shared.shape[1]
  sd = Release(torch, seed)
  q, vit_w, a = towers.qformer, towers.vit.width, towers.aggregator
  sd.put("query_tokens", sd.random(1, q.num_queries, q.width), "qformer/query_tokens")
  sd.linear("t5_proj", "qformer/proj", d_model, q.width)
  sd.layer_norm("ln_vision", "qformer/vision_norm", vit_w)
  sd.layer_norm("ln_adapter", "aggregator/out_norm", vit_w)
  sd.linear("adapter_proj.0", "aggregator/proj_in", a.proj_dim, vit_w)
  sd.linear("adapter_proj.2", "aggregator/proj_out", d_model, a.proj_dim)
  sd.put("soft_prompt_hint", sd.random(d_model), "soft_prompt")
  bert, ours = "Qformer.bert.", "qformer/encoder/"
  sd.put(f"{bert}embeddings.word_embeddings.weight", sd.random(q.vocab_size, q.width), f"{ours}word_embeddings")
  sd.put(
    f"{bert}embeddings.position_embeddings.weight", sd.random(q.max_positions, q.width), f"{ours}position_embeddings"
  )
  sd.layer_norm(f"{bert}embeddings.LayerNorm", f"{ours}embed_norm", q.width)
  sd.put(f"{bert}embeddings.position_ids", torch.arange(q.max_positions)[None])  # a buffer, not read
  for i in range(q.num_layers):
    p, d = f"{bert}encoder.layer.{i}", f"{ours}layers_{i}"
    sd.bert_attention(f"{p}.attention", f"{d}/self_attention", q.width, q.width)
    if i % q.cross_attention_freq == 0:
      sd.bert_attention(f"{p}.crossattention", f"{d}/cross_attention", q.width, vit_w)
    sd.bert_ffn(f"{p}.intermediate", f"{p}.output", f"{d}/text_ffn", q.width, q.mlp_dim)
    sd.bert_ffn(f"{p}.intermediate_query", f"{p}.output_query", f"{d}/query_ffn", q.width, q.mlp_dim)
  for b in range(2):
    p, d = f"fusion_adapter.blocks.{b}", f"aggregator/blocks_{b}"
    sd.bert_attention(f"{p}.attention", f"{d}/self_attention", vit_w, vit_w)
    sd.bert_attention(f"{p}.crossattention", f"{d}/cross_attention", vit_w, vit_w)
    sd.bert_ffn(f"{p}.intermediate", f"{p}.output", f"{d}/ffn", vit_w, a.mlp_dim)
  for stack, n, ffn in (("encoder", n_enc, 1), ("decoder", n_dec, 2)):
    for i in range(n):
      p, d = f"t5_model.{stack}.block.{i}.layer.{ffn}.adapter", f"t5/{stack}/layers_{i}/moa"
      for k in range(2):
        one_hot = torch.tensor([[1.0 - k], [float(k)]]).expand(2, d_model)  # task k starts on adapter k
        sd.put(f"{p}.router_ratio{k + 1}", one_hot + sd.random(2, d_model), f"{d}/gate_{k}")
        sd.put(f"{p}.adapters.{k}.scale", sd.random(1, offset=1.0), f"{d}/adapter_{k}/scale")
        sd.linear(f"{p}.adapters.{k}.down_proj", f"{d}/adapter_{k}/down", 64, d_model)
        sd.linear(f"{p}.adapters.{k}.up_proj", f"{d}/adapter_{k}/up", d_model, 64)
    sd.put(f"t5_model.{stack}.embed_tokens.weight", shared.detach().to(torch.bfloat16))  # tied copies
  return sd


def official_eva_state_dict(torch, vit, num_blocks, seed=1) -> Release:
  """LAVIS eva_vit_g.pth layout, with one block more than the model keeps (40 vs 39 in the real file)."""
  sd = Release(torch, seed)
  w, p = vit.width, vit.patch_size
  sd.put("cls_token", sd.random(1, 1, w), "vit/cls_token")
  sd.put("pos_embed", sd.random(1, (vit.image_size // p) ** 2 + 1, w), "vit/pos_embed")
  sd.put("patch_embed.proj.weight", sd.random(w, 3, p, p), "vit/patch_embed/kernel", lambda x: x.transpose(2, 3, 1, 0))
  sd.put("patch_embed.proj.bias", sd.random(w), "vit/patch_embed/bias")
  for i in range(num_blocks):
    b, d = f"blocks.{i}", (f"vit/blocks_{i}" if i < vit.depth else None)  # the extra block lands nowhere
    at = lambda name, d=d: d and f"{d}/{name}"
    for norm in ("norm1", "norm2"):
      sd.put(f"{b}.{norm}.weight", sd.random(w, offset=1.0), at(f"{norm}/scale"))
      sd.put(f"{b}.{norm}.bias", sd.random(w), at(f"{norm}/bias"))
    sd.put(f"{b}.attn.q_bias", sd.random(w), at("attn/q_bias"))
    sd.put(f"{b}.attn.v_bias", sd.random(w), at("attn/v_bias"))
    sd.put(f"{b}.attn.qkv.weight", sd.random(3 * w, w), at("attn/qkv/kernel"), np.transpose)
    for src, dst, out_dim, in_dim in (
      ("attn.proj", "attn/proj", w, w),
      ("mlp.fc1", "fc1", vit.mlp_dim, w),
      ("mlp.fc2", "fc2", w, vit.mlp_dim),
    ):
      sd.put(f"{b}.{src}.weight", sd.random(out_dim, in_dim), at(f"{dst}/kernel"), np.transpose)
      sd.put(f"{b}.{src}.bias", sd.random(out_dim), at(f"{dst}/bias"))
  return sd


# HF T5 names -> ours (Linear weights transposed); the embedding copies are the shared embedding.
HF_T5_NAMES = [
  (r"(shared|(en|de)coder\.embed_tokens)\.weight", r"t5/shared"),
  (r"lm_head\.weight", r"t5/lm_head/kernel"),
  (
    r"(\w+)\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.weight",
    r"t5/\1/relative_position_bias/rel_embedding",
  ),
  (r"(\w+)\.final_layer_norm\.weight", r"t5/\1/final_norm/scale"),
  (r"(\w+)\.block\.(\d+)\.layer\.0\.SelfAttention\.(\w)\.weight", r"t5/\1/layers_\2/self_attention/\3/kernel"),
  (r"(\w+)\.block\.(\d+)\.layer\.0\.layer_norm\.weight", r"t5/\1/layers_\2/self_attention_norm/scale"),
  (
    r"decoder\.block\.(\d+)\.layer\.1\.EncDecAttention\.(\w)\.weight",
    r"t5/decoder/layers_\1/cross_attention/\2/kernel",
  ),
  (r"decoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"t5/decoder/layers_\1/cross_attention_norm/scale"),
  (r"encoder\.block\.(\d+)\.layer\.1\.DenseReluDense\.(\w+)\.weight", r"t5/encoder/layers_\1/ffn/\2/kernel"),
  (r"decoder\.block\.(\d+)\.layer\.2\.DenseReluDense\.(\w+)\.weight", r"t5/decoder/layers_\1/ffn/\2/kernel"),
  (r"encoder\.block\.(\d+)\.layer\.1\.layer_norm\.weight", r"t5/encoder/layers_\1/ffn_norm/scale"),
  (r"decoder\.block\.(\d+)\.layer\.2\.layer_norm\.weight", r"t5/decoder/layers_\1/ffn_norm/scale"),
]


def hf_t5_expected(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  expected = {}
  for key, value in state.items():
    (dst,) = [re.sub(pattern, ours, key) for pattern, ours in HF_T5_NAMES if re.fullmatch(pattern, key)]
    expected[dst] = value.T if dst.endswith("/kernel") else value
  return expected


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
  """(the three files, the LION file's tensors, every parameter the model must load from them)."""
  torch = require("torch")
  transformers = require("transformers")
  from safetensors.torch import save_file

  root = tmp_path_factory.mktemp("release")
  towers = presets.tiny()
  t5_cfg = transformers.T5Config(
    vocab_size=120,
    d_model=32,
    d_kv=8,
    d_ff=48,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=4,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
  )
  torch.manual_seed(0)
  t5 = transformers.T5ForConditionalGeneration(t5_cfg)
  t5.lm_head.weight = torch.nn.Parameter(torch.randn(120, 32))
  randomize_(t5)  # unit norm scales would hide a swap between norms
  (root / "flan-t5").mkdir()
  save_file(
    {k: v.detach().clone().contiguous() for k, v in t5.state_dict().items()},
    str(root / "flan-t5" / "model.safetensors"),
  )
  (root / "flan-t5" / "config.json").write_text(
    json.dumps({**t5_cfg.to_dict(), "tie_word_embeddings": False, "dense_act_fn": "gelu_new"})
  )
  lion = official_lion_state_dict(torch, towers, t5.shared.weight, 2, 3)
  torch.save(
    {"model": lion.state, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "epoch": 9}, root / "lion.pth"
  )
  eva = official_eva_state_dict(torch, towers.vit, towers.vit.depth + 1)
  torch.save(eva.state, root / "eva_vit_g.pth")
  files = dict(lion_pth=root / "lion.pth", eva_vit_pth=root / "eva_vit_g.pth", flant5_dir=root / "flan-t5")
  expected = {**lion.expected, **eva.expected, **hf_t5_expected(state_dict_numpy(t5))}
  return files, lion.state, expected


def test_lion_release_round_trip_lands_every_tensor(release_files):
  files, _, expected = release_files
  config, params = load_lion_release(**files, towers=presets.tiny())
  assert config.visual_input == "all" and config.use_soft_prompt
  assert config.t5.activation == "gelu"  # LION overrides FlanT5's gelu_new
  assert config.scan_layers  # the preset's layout; `expected` is per layer (the release's keys)
  flat = param_paths.flatten(params)
  assert sorted(flat) == sorted(flat_shapes(abstract_params(config)))
  per_layer = layer_stack.to_layout(flat, layer_stack.unrolled_config(config))
  assert sorted(per_layer) == sorted(expected)
  for path, value in per_layer.items():
    np.testing.assert_array_equal(np.asarray(value), expected[path], err_msg=path)


def _rewrite_lion(release_files, tmp_path, edit):
  torch = require("torch")
  files, lion, _ = release_files
  sd = {k: v.clone() for k, v in lion.items()}
  edit(sd)
  torch.save({"model": sd}, tmp_path / "edited.pth")
  return dict(files, lion_pth=tmp_path / "edited.pth")


def test_missing_unexpected_and_misshaped_keys_are_named(release_files, tmp_path):
  torch = require("torch")
  missing = _rewrite_lion(release_files, tmp_path, lambda sd: sd.pop("fusion_adapter.blocks.1.output.dense.bias"))
  with pytest.raises(CheckpointMismatchError, match=r"fusion_adapter\.blocks\.1\.output\.dense\.bias"):
    load_lion_release(**missing, towers=presets.tiny())
  extra = _rewrite_lion(release_files, tmp_path, lambda sd: sd.update(mystery_head=torch.zeros(3)))
  with pytest.raises(CheckpointMismatchError, match="not used by the model:\n    mystery_head"):
    load_lion_release(**extra, towers=presets.tiny())
  shaped = _rewrite_lion(release_files, tmp_path, lambda sd: sd.update(soft_prompt_hint=torch.zeros(7)))
  with pytest.raises(CheckpointMismatchError, match=r"soft_prompt_hint -> soft_prompt: checkpoint \(7,\)"):
    load_lion_release(**shaped, towers=presets.tiny())


def test_embedding_copies_of_another_t5_are_refused(release_files, tmp_path):
  def perturb(sd):
    sd["t5_model.decoder.embed_tokens.weight"][3, 5] += 0.5

  other = _rewrite_lion(release_files, tmp_path, perturb)
  with pytest.raises(
    CheckpointMismatchError,
    match=r"t5_model\.decoder\.embed_tokens\.weight differs from .*flan-t5 shared\.weight \(as bfloat16\): "
    r"largest difference 0\.5",
  ):
    load_lion_release(**other, towers=presets.tiny())


def test_pickles_that_are_not_plain_weights_are_refused(release_files, tmp_path):
  torch = require("torch")
  files = release_files[0]
  torch.save({"model": {"x": torch.zeros(1)}, "callback": np.random.default_rng}, tmp_path / "code.pth")
  with pytest.raises(ValueError, match=r"code\.pth: cannot load as a weights-only"):
    load_lion_release(**dict(files, lion_pth=tmp_path / "code.pth"), towers=presets.tiny())
  with pytest.raises(FileNotFoundError, match="nowhere.pth"):
    load_lion_release(**dict(files, lion_pth=tmp_path / "nowhere.pth"), towers=presets.tiny())


def test_cli_writes_a_directory_that_loads_back(release_files, tmp_path, capsys, monkeypatch):
  files = release_files[0]
  monkeypatch.setattr("lion_jax.convert.lion_release.presets.flant5xl", presets.tiny)  # tiny towers
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\na\n")
  argv = [
    "lion",
    "--lion_pth",
    str(files["lion_pth"]),
    "--eva_vit_pth",
    str(files["eva_vit_pth"]),
    "--flant5_dir",
    str(files["flant5_dir"]),
    "--bert_vocab",
    str(vocab),
    "--out",
    str(tmp_path / "out"),
    "--frozen_dtype",
    "bfloat16",
  ]
  assert convert_main(argv) == 0
  config, params = load_converted(tmp_path / "out")
  direct_config, direct = load_lion_release(**files, towers=presets.tiny())
  assert config.to_dict() == json.loads(direct_config.to_json())
  loaded, direct = param_paths.flatten(params), param_paths.flatten(direct)
  assert sorted(loaded) == sorted(direct)
  for path, value in loaded.items():
    dtype = jax.numpy.bfloat16 if param_paths.LION.is_frozen(path) else np.float32  # frozen towers in bf16
    assert value.dtype == dtype, path
    np.testing.assert_array_equal(np.asarray(value), np.asarray(direct[path]).astype(dtype), err_msg=path)
  assert (tmp_path / "out" / "tokenizer" / "bert_vocab.txt").read_text() == vocab.read_text()
  assert convert_main(argv) == 1  # never overwrites a converted checkpoint
  assert "already exists" in capsys.readouterr().err
  # The unrolled layout on request: the same values, one subtree per layer.
  assert convert_main(argv[:-4] + ["--out", str(tmp_path / "unrolled"), "--scan_layers", "false"]) == 0
  config, params = load_converted(tmp_path / "unrolled")
  assert config.scan_layers is False and direct_config.scan_layers is True
  per_layer = layer_stack.to_layout(direct, config)
  assert sorted(param_paths.flatten(params)) == sorted(per_layer)
  for path, value in param_paths.flatten(params).items():
    np.testing.assert_array_equal(np.asarray(value, np.float32), np.asarray(per_layer[path], np.float32), err_msg=path)
