"""Converters for the LION release (.pth files in the official key layout) and the converted directory."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from lion_jax.convert import CheckpointMismatchError, load_converted, load_lion_release
from lion_jax.convert.__main__ import main as convert_main
from lion_jax.convert.mapping import flat_shapes
from lion_jax.models import Lion, abstract_params, presets
from tests.conftest import require
from tests.test_model import random_batch


def official_lion_state_dict(torch, towers, d_model, n_enc, n_dec, seed=0):
  """A random stage-3 trainables dict in the released key layout (docs/model.md, 'LION .pth')."""
  g = torch.Generator().manual_seed(seed)
  r = lambda *shape: torch.randn(*shape, generator=g) * 0.1
  q, vit_w, a = towers.qformer, towers.vit.width, towers.aggregator
  sd = {"query_tokens": r(1, q.num_queries, q.width), "t5_proj.weight": r(d_model, q.width),
        "t5_proj.bias": r(d_model), "ln_vision.weight": 1 + r(vit_w), "ln_vision.bias": r(vit_w),
        "ln_adapter.weight": 1 + r(vit_w), "ln_adapter.bias": r(vit_w),
        "adapter_proj.0.weight": r(a.proj_dim, vit_w), "adapter_proj.0.bias": r(a.proj_dim),
        "adapter_proj.2.weight": r(d_model, a.proj_dim), "adapter_proj.2.bias": r(d_model),
        "soft_prompt_hint": r(d_model),
        "Qformer.bert.embeddings.word_embeddings.weight": r(q.vocab_size, q.width),
        "Qformer.bert.embeddings.position_embeddings.weight": r(q.max_positions, q.width),
        "Qformer.bert.embeddings.LayerNorm.weight": 1 + r(q.width),
        "Qformer.bert.embeddings.LayerNorm.bias": r(q.width),
        "Qformer.bert.embeddings.position_ids": torch.arange(q.max_positions)[None]}

  def linear(prefix, out_dim, in_dim):
    sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = r(out_dim, in_dim), r(out_dim)

  def layer_norm(prefix, dim):
    sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = 1 + r(dim), r(dim)

  def bert_attention(prefix, width, memory_width):
    linear(f"{prefix}.self.query", width, width)
    linear(f"{prefix}.self.key", width, memory_width)
    linear(f"{prefix}.self.value", width, memory_width)
    linear(f"{prefix}.output.dense", width, width)
    layer_norm(f"{prefix}.output.LayerNorm", width)

  for i in range(q.num_layers):
    p = f"Qformer.bert.encoder.layer.{i}"
    bert_attention(f"{p}.attention", q.width, q.width)
    if i % q.cross_attention_freq == 0:
      bert_attention(f"{p}.crossattention", q.width, vit_w)
    for inter, out in (("intermediate", "output"), ("intermediate_query", "output_query")):
      linear(f"{p}.{inter}.dense", q.mlp_dim, q.width)
      linear(f"{p}.{out}.dense", q.width, q.mlp_dim)
      layer_norm(f"{p}.{out}.LayerNorm", q.width)
  for b in range(2):
    p = f"fusion_adapter.blocks.{b}"
    bert_attention(f"{p}.attention", vit_w, vit_w)
    bert_attention(f"{p}.crossattention", vit_w, vit_w)
    linear(f"{p}.intermediate.dense", a.mlp_dim, vit_w)
    linear(f"{p}.output.dense", vit_w, a.mlp_dim)
    layer_norm(f"{p}.output.LayerNorm", vit_w)
  for stack, n, ffn in (("encoder", n_enc, 1), ("decoder", n_dec, 2)):
    for i in range(n):
      p = f"t5_model.{stack}.block.{i}.layer.{ffn}.adapter"
      sd[f"{p}.router_ratio1"] = torch.tensor([[1.0], [0.0]]).expand(2, d_model) + r(2, d_model)
      sd[f"{p}.router_ratio2"] = torch.tensor([[0.0], [1.0]]).expand(2, d_model) + r(2, d_model)
      for k in range(2):
        sd[f"{p}.adapters.{k}.scale"] = 1 + r(1)
        linear(f"{p}.adapters.{k}.down_proj", 64, d_model)
        linear(f"{p}.adapters.{k}.up_proj", d_model, 64)
    sd[f"t5_model.{stack}.embed_tokens.weight"] = r(120, d_model).to(torch.bfloat16)  # tied copies
  return sd


def official_eva_state_dict(torch, vit, num_blocks, seed=1):
  """LAVIS eva_vit_g.pth layout, with one block more than the model keeps (40 vs 39 in the real file)."""
  g = torch.Generator().manual_seed(seed)
  r = lambda *shape: torch.randn(*shape, generator=g) * 0.1
  w, p = vit.width, vit.patch_size
  sd = {"cls_token": r(1, 1, w), "pos_embed": r(1, (vit.image_size // p) ** 2 + 1, w),
        "patch_embed.proj.weight": r(w, 3, p, p), "patch_embed.proj.bias": r(w)}
  for i in range(num_blocks):
    b = f"blocks.{i}"
    sd.update({f"{b}.norm1.weight": 1 + r(w), f"{b}.norm1.bias": r(w), f"{b}.attn.q_bias": r(w),
               f"{b}.attn.v_bias": r(w), f"{b}.attn.qkv.weight": r(3 * w, w), f"{b}.attn.proj.weight": r(w, w),
               f"{b}.attn.proj.bias": r(w), f"{b}.norm2.weight": 1 + r(w), f"{b}.norm2.bias": r(w),
               f"{b}.mlp.fc1.weight": r(vit.mlp_dim, w), f"{b}.mlp.fc1.bias": r(vit.mlp_dim),
               f"{b}.mlp.fc2.weight": r(w, vit.mlp_dim), f"{b}.mlp.fc2.bias": r(w)})
  return sd


@pytest.fixture(scope="module")
def release_files(tmp_path_factory):
  torch = require("torch")
  transformers = require("transformers")
  from safetensors.torch import save_file

  root = tmp_path_factory.mktemp("release")
  towers = presets.tiny()
  t5_cfg = transformers.T5Config(vocab_size=120, d_model=32, d_kv=8, d_ff=48, num_layers=2,
                                 num_decoder_layers=3, num_heads=4, feed_forward_proj="gated-gelu",
                                 tie_word_embeddings=False)
  torch.manual_seed(0)
  t5 = transformers.T5ForConditionalGeneration(t5_cfg)
  t5.lm_head.weight = torch.nn.Parameter(torch.randn(120, 32))
  (root / "flan-t5").mkdir()
  save_file({k: v.detach().clone().contiguous() for k, v in t5.state_dict().items()},
            str(root / "flan-t5" / "model.safetensors"))
  (root / "flan-t5" / "config.json").write_text(json.dumps(
      {**t5_cfg.to_dict(), "tie_word_embeddings": False, "dense_act_fn": "gelu_new"}))
  lion = official_lion_state_dict(torch, towers, 32, 2, 3)
  torch.save({"model": lion, "optimizer": {"state": {0: {"exp_avg": torch.zeros(3)}}}, "epoch": 9},
             root / "lion.pth")
  eva = official_eva_state_dict(torch, towers.vit, towers.vit.depth + 1)
  torch.save(eva, root / "eva_vit_g.pth")
  files = dict(lion_pth=root / "lion.pth", eva_vit_pth=root / "eva_vit_g.pth", flant5_dir=root / "flan-t5")
  return files, {k: v.float().numpy() for k, v in lion.items()}, {k: v.numpy() for k, v in eva.items()}, \
      {k: v.detach().numpy() for k, v in t5.state_dict().items()}


def test_lion_release_round_trip_lands_every_key(release_files):
  files, lion, eva, t5 = release_files
  config, params = load_lion_release(**files, towers=presets.tiny())
  assert config.visual_input == "all" and config.use_soft_prompt
  assert config.t5.activation == "gelu"  # LION overrides FlanT5's gelu_new
  shapes = flat_shapes(abstract_params(config))
  got = flat_shapes(params)
  assert got == shapes  # names and shapes: every model parameter came from a file, none invented
  np.testing.assert_array_equal(params["soft_prompt"], lion["soft_prompt_hint"])
  np.testing.assert_array_equal(params["qformer"]["query_tokens"], lion["query_tokens"])
  np.testing.assert_array_equal(params["aggregator"]["proj_in"]["kernel"], lion["adapter_proj.0.weight"].T)
  moa = params["t5"]["decoder"]["layers_2"]["moa"]
  np.testing.assert_array_equal(moa["gate_1"], lion["t5_model.decoder.block.2.layer.2.adapter.router_ratio2"])
  np.testing.assert_array_equal(moa["adapter_0"]["down"]["kernel"],
                                lion["t5_model.decoder.block.2.layer.2.adapter.adapters.0.down_proj.weight"].T)
  cross = params["qformer"]["encoder"]["layers_0"]["cross_attention"]["key"]["kernel"]
  np.testing.assert_array_equal(cross, lion["Qformer.bert.encoder.layer.0.crossattention.self.key.weight"].T)
  np.testing.assert_array_equal(params["vit"]["blocks_4"]["attn"]["v_bias"], eva["blocks.4.attn.v_bias"])
  np.testing.assert_array_equal(params["vit"]["patch_embed"]["kernel"],
                                eva["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["t5"]["lm_head"]["kernel"], t5["lm_head.weight"].T)
  batch = random_batch(config)
  logits = jax.jit(lambda p, x: Lion(config).apply({"params": p}, x))(params, batch)
  assert logits.shape == (4, 5, 120) and np.isfinite(np.asarray(logits)).all()


def _rewrite_lion(release_files, tmp_path, edit):
  torch = require("torch")
  files, lion, _, _ = release_files
  sd = {k: torch.from_numpy(v.copy()) for k, v in lion.items()}
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
  argv = ["lion", "--lion_pth", str(files["lion_pth"]), "--eva_vit_pth", str(files["eva_vit_pth"]),
          "--flant5_dir", str(files["flant5_dir"]), "--bert_vocab", str(vocab), "--out", str(tmp_path / "out"),
          "--frozen_dtype", "bfloat16"]
  assert convert_main(argv) == 0
  config, params = load_converted(tmp_path / "out")
  direct_config, direct = load_lion_release(**files, towers=presets.tiny())
  assert config.to_dict() == json.loads(direct_config.to_json())
  assert params["vit"]["pos_embed"].dtype == jax.numpy.bfloat16  # frozen towers stored in bf16
  assert params["soft_prompt"].dtype == np.float32  # trainables stay fp32
  np.testing.assert_array_equal(np.asarray(params["soft_prompt"]), direct["soft_prompt"])
  assert (tmp_path / "out" / "tokenizer" / "bert_vocab.txt").read_text() == vocab.read_text()
  assert convert_main(argv) == 1  # never overwrites a converted checkpoint
  assert "already exists" in capsys.readouterr().err
